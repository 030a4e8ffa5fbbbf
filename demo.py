"""The whole pipeline on data it makes itself: synthetic Inria tiles -> arrays -> a trained model -> reports.

    python demo.py                 # ~5-10 min on 2 CPU cores; a bigger model when a GPU is present
    python demo.py --out my_demo   # elsewhere (default demo_out/); re-running resumes / reuses what is done

Every step is one of the repo's own commands, printed before it runs, so the demo doubles as a recipe.
"""
import os
import signal
import subprocess
import sys
import time

import torch

from synthetic_inria import SETTINGS_FILE
from train_options import total_epochs
from utils import ArgumentParser, load_checkpoint, read_json, run_cli, stop_signals_noted

HERE = os.path.dirname(os.path.abspath(__file__))

# CPU: a U-Net for 128² crops, 32 filters, trained a few minutes. GPU: the paper's unet_256 at 286/256.
CPU_SETUP = {'size': 143, 'crop': 128, 'train': ['--netG', 'unet_128', '--ngf', '32', '--ndf', '32',
                                                 '--batch_size', '4', '--n_epochs', '60', '--n_epochs_decay', '40']}
GPU_SETUP = {'size': 286, 'crop': 256, 'train': ['--netG', 'unet_256', '--batch_size', '16', '--n_epochs', '100',
                                                 '--n_epochs_decay', '100']}


def run(script, *args):
    command = [sys.executable, os.path.join(HERE, script), *map(str, args)]
    print('\n$ ' + ' '.join(['python', script, *map(str, args)]), flush=True)
    # Ctrl-C (or a scheduler's SIGTERM to the process group) reaches the script too, which stops cleanly (train.py
    # saves first): wait for it instead of dying with a traceback, after which subprocess would kill it a
    # quarter-second later, mid-save. A SIGTERM sent to the demo alone (a container's stop) is passed on once; a
    # Ctrl-C sent to it alone stops it once the script ends (passed on, a second one would cut a save short).
    with stop_signals_noted() as asked:
        child = subprocess.Popen(command)
        passed_on = False
        while child.poll() is None:
            if signal.SIGTERM in asked and not passed_on:
                child.send_signal(signal.SIGTERM)  # the scripts take a repeated SIGTERM as the same one
                passed_on = True
            time.sleep(0.1)
    returncode = child.returncode
    if asked or returncode in (130, 143, -signal.SIGINT, -signal.SIGTERM):  # scripts: 130 Ctrl-C, 143 SIGTERM
        print(f'demo interrupted during {script}: run the same demo command again to go on', file=sys.stderr)
        terminated = signal.SIGTERM in asked or returncode in (143, -signal.SIGTERM)
        sys.exit(143 if terminated else 130)
    if returncode < 0:  # a signal other than Ctrl-C's or SIGTERM: the script could print nothing
        why = ' (as the kernel does when memory runs out)' if returncode == -signal.SIGKILL else ''
        sys.exit(f'demo stopped: {script} was killed by {signal.Signals(-returncode).name}{why}')
    if returncode != 0:
        sys.exit(f'demo stopped: {script} failed (see its message above)')


def make_synthetic_tiles(tiles):
    """Writes the tiles missing, so a demo stopped during this step is completed. A folder an earlier version of the
    demo made has no settings record (SETTINGS_FILE), and --make_synthetic refuses folders of files it did not
    record: such a folder is used as it is."""
    if os.path.isdir(os.path.join(tiles, 'gt')) and not os.path.exists(os.path.join(tiles, SETTINGS_FILE)):
        return
    run('transform_dataset.py', '--make_synthetic', tiles, '--n_tiles', 20, '--tile_size', 1000)


def check_training_finished(run_dir):
    """train.py exits 0 after a SIGTERM sent to it alone (a clean, resumable stop): the demo must not go on to
    score a half-trained model as if it were the final one."""
    config = read_json(os.path.join(run_dir, 'config.json'), 'run config')
    trained = load_checkpoint(os.path.join(run_dir, 'latest.pt'))['epoch']
    total = total_epochs(config)
    if trained < total:
        sys.exit(f'demo stopped: train.py stopped after epoch {trained} of {total} (a SIGTERM?): run the same demo '
                 f'command again to go on')


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument('--out', default='demo_out', help='folder for everything the demo writes')
    p.add_device_option()
    opt = p.parse_args(argv)
    gpu = opt.device == 'cuda' or (opt.device == 'auto' and torch.cuda.is_available())
    setup = GPU_SETUP if gpu else CPU_SETUP
    started = time.perf_counter()
    tiles, arrays, runs = (os.path.join(opt.out, name) for name in ('synthetic_inria', 'arrays', 'runs'))
    run_dir = os.path.join(runs, 'demo')

    # 1. 20 synthetic 1000² tiles in the Inria layout: RGB GeoTIFFs in images/, LZW masks in gt/ (deterministic)
    make_synthetic_tiles(tiles)
    # 2. once: 2×2 tiles per source, resized to uint8 arrays (re-running skips finished sources)
    run('transform_dataset.py', '--dataroot', tiles, '--out', arrays, '--size', setup['size'],
        '--crop_size', setup['crop'], '--split', 2)
    # 3. train (resumes, or only validates, when a previous demo got this far)
    resume = ['--resume'] if os.path.exists(os.path.join(run_dir, 'latest.pt')) else []
    run('train.py', '--dataroot', arrays, '--name', 'demo', '--runs_dir', runs, '--crop_size', setup['crop'],
        '--rotate', '--save_epoch_freq', 20, '--device', opt.device, *setup['train'], *resume)
    check_training_finished(run_dir)
    # 4. the validation split in three modes; then forged-mask use: a full 1000² GeoTIFF mask at the training scale
    results = {}
    for mode in ('full', 'tiles', 'sliding'):
        results[mode] = os.path.join(opt.out, 'results', mode)
        run('test.py', '--run', run_dir, '--mode', mode, '--tiles', 2, '--results_dir', results[mode],
            '--device', opt.device)
    results['sliding, 1000² GeoTIFF masks'] = os.path.join(opt.out, 'results', 'geotiff')
    # --scale train: size/500, the factor the model's 500 px tiles were shrunk by, read from the checkpoint
    run('test.py', '--run', run_dir, '--mode', 'sliding', '--scale', 'train', '--masks',
        os.path.join(tiles, 'gt', 'austin1.tif'), os.path.join(tiles, 'gt', 'vienna1.tif'),
        '--results_dir', results['sliding, 1000² GeoTIFF masks'], '--device', opt.device)

    print(f'\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min\n')
    print('| mode | PSNR (dB) | SSIM | seam score (≈1 = seamless) | report |')
    print('| --- | ---: | ---: | ---: | --- |')
    for mode, folder in results.items():
        mean = read_json(os.path.join(folder, 'metrics.json'), 'metrics')['mean']
        cells = [f'{mean[k]:.3f}' if k in mean else '—' for k in ('PSNR', 'SSIM', 'seam_score')]
        print(f'| {mode} | {" | ".join(cells)} | {os.path.join(folder, "index.html")} |')
    print('\nScores are for the final model (latest.pt). best.pt, by val PSNR, is often an early, blurred one:')
    print('pixel metrics reward blur (README, Quick start); compare with test.py --epoch best.')
    print(f'\nOpen a report in a browser, e.g. file://{os.path.abspath(results["sliding"])}/index.html')
    print(f'Training curves and image grids: tensorboard --logdir {runs}   (then http://localhost:6006)')


if __name__ == '__main__':
    sys.exit(run_cli(main))
