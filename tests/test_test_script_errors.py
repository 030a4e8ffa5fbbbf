"""test.py's bad input: one clear error and nothing written (missing or broken runs and checkpoints, bad masks and
options, unusable --inception_weights or --segmenter, a results folder it must not touch or cannot write, inputs
too large for memory). Also what a re-run into a results folder replaces and keeps, and a failed write or Ctrl-C
that leaves no partial outputs. The rest of test.py: tests/test_test_script.py, whose helpers this file shares;
the tiny run is conftest's run_dir, trained once per session; CPU only.
"""
import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import results
from conftest import DATA, REPO, another_process_writing, write_array_dataset
from generation import run_generator
from test_test_script import BLOCK, generate, save_mask, ts
from utils import UserError


# ---------------------------------------------------------------- bad input: one clear error, nothing written

def broken_run(tmp_path, payload):
    run = tmp_path / 'broken'
    run.mkdir()
    (run / 'latest.pt').write_bytes(payload) if isinstance(payload, bytes) else torch.save(payload, run / 'latest.pt')
    return str(run)


def edited_checkpoint(edit):
    """A run whose latest.pt is run_dir's after edit(state)."""
    def make(run_dir, tmp_path):
        state = torch.load(os.path.join(run_dir, 'latest.pt'), weights_only=True)
        edit(state)
        return broken_run(tmp_path, state)
    return make


# a config naming resnet_9blocks beside the weights of a resnet_6blocks
wrong_architecture = edited_checkpoint(lambda state: state['config'].update(netG='resnet_9blocks'))
# a checkpoint of a run trained before train.py recorded the training scale
run_without_data_scale = edited_checkpoint(lambda state: state.pop('data_scale'))


def bad_mask(name, array, *extra):
    """Arguments for a --masks file holding `array` (written when the case runs)."""
    def make(run, tmp):
        path = tmp / name
        tifffile.imwrite(path, array) if name.endswith('.tif') else Image.fromarray(array).save(path)
        return ['--run', run, '--masks', str(path), *extra]
    return make


def junk_inception_weights(run, tmp):
    (tmp / 'junk.pth').write_bytes(b'not weights')
    return ['--run', run, '--inception_weights', str(tmp / 'junk.pth')]


def inception_weights_that_would_run_code(run, tmp):
    torch.save({'fc.weight': torch.zeros(2), 'hook': print}, tmp / 'code.pth')  # print: a GLOBAL the unpickler imports
    return ['--run', run, '--inception_weights', str(tmp / 'code.pth')]


def masks_sharing_a_name(run, tmp):
    (tmp / 'masks').mkdir()
    save_mask(tmp / 'masks' / 'a.png', BLOCK)
    tifffile.imwrite(tmp / 'masks' / 'a.tif', BLOCK)
    return ['--run', run, '--masks', str(tmp / 'masks')]


def split_of_label_maps(run, tmp):
    """A transformed split of 3-channel label maps (facades), for a model of 1-channel building masks."""
    write_array_dataset(tmp / 'facades', 'val', np.zeros((2, 72, 72, 3), np.uint8), np.zeros((2, 72, 72, 3), np.uint8))
    return ['--run', run, '--dataroot', str(tmp / 'facades')]


def split_of_masks(values):
    """A transformed val split whose one-channel masks hold `values`, not 0/255: made by hand."""
    def make(run, tmp):
        masks = np.zeros((2, 72, 72), np.uint8)
        masks[:, 20:40, 20:50] = values[1]
        masks[:, 0] = values[0]
        write_array_dataset(tmp / 'hand', 'val', masks, np.zeros((2, 72, 72, 3), np.uint8))
        return ['--run', run, '--dataroot', str(tmp / 'hand'), '--mode', 'sliding']
    return make


def a_folder_named_like_an_image(run, tmp):
    os.makedirs(tmp / 'masks' / 'sub.png')
    return ['--run', run, '--masks', str(tmp / 'masks')]


def first_epoch_run(run_dir, tmp):
    """A run folder as train.py leaves it before its first checkpoint: config.json and TensorBoard events."""
    started = tmp / 'started'
    started.mkdir()
    shutil.copy(os.path.join(run_dir, 'config.json'), started)
    return str(started)


def options(*extra, run=None):
    return lambda run_dir, tmp: ['--run', run(run_dir, tmp) if run else run_dir, *extra]


BAD_INPUTS = {  # case: (argv maker, expected message)
    'missing run': (lambda run, tmp: ['--run', str(tmp / 'nope')], 'run folder not found'),
    'checkpoint as run': (options(run=lambda run, tmp: os.path.join(run, 'latest.pt')),
                          'latest.pt: --run takes the run folder, not a checkpoint in it'),
    'missing epoch': (options('--epoch', '7'), 'epoch_7.pt: checkpoint not found; '),
    'run in its first epoch': (options(run=first_epoch_run), f'{os.sep}started holds no checkpoint yet (train.py '
                               'writes the first at the end of epoch 1, or when stopped)'),
    'corrupt checkpoint': (options(run=lambda run, tmp: broken_run(tmp, random.Random(0).randbytes(2000))),
                           'not a loadable checkpoint'),
    'other architecture': (options(run=wrong_architecture), 'does not match --netG resnet_9blocks'),
    'weights not a dict': (options(run=edited_checkpoint(lambda state: state.update(G=[1]))),
                           'latest.pt: checkpoint holds no generator config and weights'),
    'config without netG': (options(run=edited_checkpoint(lambda state: state['config'].pop('netG'))),
                            "latest.pt: checkpoint config lacks 'netG'"),
    'config with a text ngf': (options(run=edited_checkpoint(lambda state: state['config'].update(ngf='eight'))),
                               'latest.pt: checkpoint config does not describe a generator'),
    'RGB mask': (bad_mask('rgb.png', np.stack([BLOCK, 0 * BLOCK, BLOCK], 2)), 'rgb.png: mask must have 1 channel'),
    '16-bit PNG mask': (bad_mask('deep.png', BLOCK.astype(np.uint16) * 257), 'deep.png: mask must be 8-bit'),
    '16-bit TIFF mask': (bad_mask('deep.tif', BLOCK.astype(np.uint16)), 'deep.tif: mask must be 8-bit'),
    'float TIFF mask': (bad_mask('float.tif', BLOCK.astype(np.float32)), 'float.tif: mask must be 8-bit'),
    'grey mask': (bad_mask('grey.png', BLOCK // 2 + 1), 'grey.png: mask has 100.0% pixels that are neither'),
    'missing mask': (lambda run, tmp: ['--run', run, '--masks', str(tmp / 'gone.png')], 'gone.png: mask file'),
    'dataset root as masks': (lambda run, tmp: ['--run', run, '--masks', os.path.join(DATA, 'inria_samples')],
                              'inria_samples: no mask images (.tif, .png, .jpg) in this folder; its masks are in gt/: give '),
    'masks sharing a name': (masks_sharing_a_name, 'a.tif: same name as '),
    'a mask given twice': (lambda run, tmp: bad_mask('m.png', BLOCK)(run, tmp) + [str(tmp / 'm.png')],
                           'm.png: given twice in --masks'),  # it said "same name as" itself
    'label maps for a mask model': (split_of_label_maps, 'facades/val: masks have 3 channels, the model takes 1'),
    # 0/1 masks generated as empty ones in full mode; the other modes stopped with a traceback
    'split of 0/1 masks': (split_of_masks((0, 1)), 'val/masks/s0.npy: a building mask must hold 0 and 255 only, got '
                                                   'values [0, 1]; re-run transform_dataset.py'),
    'split of grey-edged masks': (split_of_masks((128, 255)), 'val/masks/s0.npy: a building mask must hold 0 and 255 '
                                                              'only, got values [0, 128, 255]'),
    'missing dataroot': (options('--dataroot', 'nowhere'), 'nowhere: dataset not found (--dataroot)'),
    'folder named like an image': (a_folder_named_like_an_image, 'masks: no mask images (.tif, .png, .jpg) in this '
                                                                 'folder'),
    'num_test 0': (options('--num_test', '0'), '--num_test must be >= 1, got 0'),
    'no memory': (options('--max_memory_gb', '0'), '--max_memory_gb must be positive, got 0.0'),
    'masks and dataroot': (options('--masks', 'm.png', '--dataroot', 'd'), 'give either --masks (raw masks) or '
                                                                          '--dataroot (a transformed split), not both'),
    'missing segmenter': (options('--segmenter', 'seg.pt'), 'seg.pt: checkpoint not found'),
    'generator as segmenter': (lambda run, tmp: ['--run', run, '--segmenter', os.path.join(run, 'latest.pt')],
                               'a generator checkpoint, not a segmenter'),
    'memory: batch too big': (options('--mode', 'sliding', '--batch_size', '64', '--max_memory_gb', '0.004'),
                              'memory but --max_memory_gb allows 0.004 GB; lower --batch_size (about'),
    'memory: not one window': (options('--mode', 'sliding', '--max_memory_gb', '1e-6'),
                               'even one window does not fit'),
    'mask smaller than the crop': (bad_mask('small.png', BLOCK[:40, :50], '--mode', 'crop'),
                                   'small.png: --mode crop takes the centre 64×64 pixels, but the mask is only 50×40'),
    'tiles larger than mask': (options('--mode', 'tiles', '--tiles', '100'),
                               '.npy: --tiles 100, but the mask is only 72×72 pixels'),
    'name too long for outputs': (bad_mask('b' * 230 + '.png', BLOCK), 'file name too long for its outputs'),
    'bad overlap': (options('--mode', 'sliding', '--overlap', '1'), '--overlap 1.0'),
    'overlap without sliding': (options('--mode', 'tiles', '--overlap', '0.25'), '--overlap only applies to --mode '
                                                                                  'sliding'),
    # these two were ignored in silence
    'tiles with sliding': (options('--mode', 'sliding', '--tiles', '3'), '--tiles does not apply to --mode sliding'),
    'split with masks': (bad_mask('m.png', BLOCK, '--split', 'train'), '--split picks a split of --dataroot; raw '
                                                                       '--masks have none'),
    'load size 0': (options('--load_size', '0'), '--load_size must be >= 1, got 0'),
    'absurd scale': (options('--mode', 'sliding', '--scale', '1e9'), "--scale 1000000000.0 makes the 72×72 mask "
                                                                      "72000000000×72000000000, more than this"),
    'superscript epoch': (options('--epoch', '²'), "--epoch '²': use latest, best or an epoch number"),
    'scale train on the split': (options('--mode', 'sliding', '--scale', 'train'),
                                 "--scale train applies to raw --masks: a transformed split's masks are at the"),
    'scale without sliding': (options('--scale', '0.5'), '--scale only applies to --mode sliding'),
    'scale train without sliding': (bad_mask('m.png', BLOCK, '--scale', 'train'), '--scale only applies to --mode'),
    'scale train, checkpoint without it': (
        lambda run, tmp: bad_mask('m.png', BLOCK, '--mode', 'sliding', '--scale', 'train')(
            run_without_data_scale(run, tmp), tmp),
        'latest.pt: --scale train: the checkpoint records no training scale'),
    'negative mask tolerance': (options('--mask_tolerance', '-1'), '--mask_tolerance -1.0: must be a fraction'),
    'load size not a multiple': (options('--load_size', '6'), '--load_size 6: --netG resnet_6blocks needs a multiple'),
    'load size too small': (options('--load_size', '4'), '--load_size 4: --netG resnet_6blocks needs a multiple of 4, '
                                                         'at least 8'),
    'missing inception weights': (options('--inception_weights', 'none.pth'),
                                  'none.pth: --inception_weights file not found'),
    'unusable inception weights': (junk_inception_weights, 'junk.pth: '),  # no torch-fidelity, or a bad file
    # refused by a weights_only load before torch-fidelity (if installed) would load it unsafely
    'inception weights that would run code': (inception_weights_that_would_run_code,
                                              'code.pth: cannot load InceptionV3 weights for FID/KID (it holds Python '
                                              'objects besides tensors; refused'),
}


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_is_one_clear_error_and_writes_nothing(run_dir, tmp_path, case):
    make_args, message = BAD_INPUTS[case]
    out = tmp_path / 'out'
    with pytest.raises(UserError, match=re.escape(message)):
        ts.main(make_args(run_dir, tmp_path) + ['--results_dir', str(out)])
    assert not out.exists()


def test_unwritable_results_dir(run_dir, tmp_path):
    (tmp_path / 'a_file').write_text('x')  # root ignores chmod; a folder under a regular file fails for everyone
    with pytest.raises(UserError, match=r'sub: cannot write there \(.*\); choose another --results_dir'):
        ts.main(['--run', run_dir, '--results_dir', str(tmp_path / 'a_file' / 'sub')])
    with pytest.raises(UserError, match=r'a_file: is a file, not a folder; choose another --results_dir$'):
        ts.main(['--run', run_dir, '--results_dir', str(tmp_path / 'a_file')])
    assert (tmp_path / 'a_file').read_text() == 'x'


def folder_files(folder):
    return {name: (folder / name).read_bytes() for name in os.listdir(folder) if (folder / name).is_file()}


def test_a_rerun_that_stops_early_leaves_the_earlier_results_whole(run_dir, tmp_path, monkeypatch, capsys):
    """A re-run removed the earlier results first: Ctrl-C then left half of a new set and none of the old one."""
    generate(run_dir, tmp_path / 'out', '--num_test', '2')
    before = folder_files(tmp_path / 'out')
    calls = []

    def interrupted_after_one(*args):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_generate(*args)
    real_generate = ts.generate
    monkeypatch.setattr(ts, 'generate', interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        ts.main(['--run', run_dir, '--results_dir', str(tmp_path / 'out'), '--mode', 'tiles', '--num_test', '2'])
    assert folder_files(tmp_path / 'out') == before
    assert len([name for name in os.listdir(tmp_path / 'out' / results.STAGING) if name.startswith('Generated-')]) == 1
    assert 'the results of an earlier run there are unchanged' in capsys.readouterr().err
    monkeypatch.undo()
    assert generate(run_dir, tmp_path / 'out', '--mode', 'tiles', '--num_test', '1')['samples'] == 1
    assert not (tmp_path / 'out' / results.STAGING).exists()
    assert len([name for name in os.listdir(tmp_path / 'out') if name.startswith('Generated-')]) == 1


def test_a_folder_with_files_of_test_pys_names_it_did_not_write_is_refused(run_dir, tmp_path):
    """--results_dir pointed at a website's folder replaced its index.html and deleted Grid-holiday.png."""
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'index.html').write_text('<h1>mine</h1>')
    (site / 'Grid-holiday.png').write_bytes(b'mine')
    with pytest.raises(UserError, match=re.escape(f"{site}: holds 2 files of test.py's output names (e.g. "
                                                  'Grid-holiday.png) but not its mark; test.py would replace them')):
        generate(run_dir, site)
    assert sorted(os.listdir(site)) == ['Grid-holiday.png', 'index.html']  # no .lock, no mark
    # a results folder of its own, also one written before the mark existed, is replaced as before
    generate(run_dir, tmp_path / 'out', '--num_test', '1')
    os.remove(tmp_path / 'out' / results.RESULTS_MARK)
    assert generate(run_dir, tmp_path / 'out', '--num_test', '2')['samples'] == 2
    # this run's own inputs are never replaced, so they do not count against a folder
    mask = next(name for name in os.listdir(tmp_path / 'out') if name.startswith('MaskResized-'))
    (tmp_path / 'masks').mkdir()
    shutil.copy(tmp_path / 'out' / mask, tmp_path / 'masks' / mask)
    assert generate(run_dir, tmp_path / 'masks', '--masks', str(tmp_path / 'masks' / mask))['samples'] == 1


def test_a_rerun_into_the_same_folder_replaces_the_previous_images(run_dir, tmp_path, capsys):
    generate(run_dir, tmp_path / 'out', '--num_test', '3')
    (tmp_path / 'out' / 'notes.txt').write_text('mine')
    capsys.readouterr()
    assert generate(run_dir, tmp_path / 'out', '--num_test', '1')['samples'] == 1
    assert (f'note: {tmp_path / "out"}: replaced 3 results of an earlier run there (--results_dir keeps them '
            'apart)') in capsys.readouterr().out
    outputs = [name for name in os.listdir(tmp_path / 'out') if name.startswith(results.OUTPUT_PREFIXES)]
    assert len(outputs) == 4  # the one sample's generated, mask, real and grid images
    assert (tmp_path / 'out' / 'notes.txt').read_text() == 'mine'


def test_earlier_outputs_fed_back_as_masks_into_their_folder_are_kept(run_dir, tmp_path):
    generate(run_dir, tmp_path / 'out', '--num_test', '1')
    mask = next(name for name in os.listdir(tmp_path / 'out') if name.startswith('MaskResized-'))
    ts.main(['--run', run_dir, '--masks', str(tmp_path / 'out' / mask), '--results_dir', str(tmp_path / 'out')])
    assert (tmp_path / 'out' / mask).exists()
    assert (tmp_path / 'out' / ('Generated-' + mask)).exists()


@pytest.mark.parametrize('mode', ['full', 'sliding'])
def test_an_input_another_input_would_overwrite_is_refused_before_anything_is_written(run_dir, tmp_path, mode):
    generate(run_dir, tmp_path / 'out', '--num_test', '1')
    out = tmp_path / 'out'
    earlier = next(name for name in os.listdir(out) if name.startswith('MaskResized-'))
    plain = out / earlier[len('MaskResized-'):]  # a.png, whose own MaskResized- output is the earlier mask
    plain.write_bytes((out / earlier).read_bytes())
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(UserError, match=re.escape(f'{out / earlier}: the output {earlier} of {plain} would '
                                                  f'overwrite this input')):
        ts.main(['--run', run_dir, '--mode', mode, '--masks', str(plain), str(out / earlier),
                 '--results_dir', str(out)])
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_read_only_masks_are_taken_without_a_warning():
    G = torch.nn.Identity()
    masks = np.zeros((1, 8, 8, 3), np.uint8)
    masks.flags.writeable = False  # as from np.load(mmap_mode='r') or a broadcast view
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert run_generator(G, masks, torch.device('cpu')).shape == (1, 3, 8, 8)


def test_a_failed_write_is_one_clear_error_and_leaves_no_partial_outputs(run_dir, tmp_path, monkeypatch):
    def disk_full(path, array):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(results, 'save_png', disk_full)
    with pytest.raises(UserError, match=r'out/\.unfinished: cannot write the outputs of .*\.npy \(No space left on '
                                        r'device; \d+ MB free there\)'):
        ts.main(['--run', run_dir, '--results_dir', str(tmp_path / 'out'), '--num_test', '1'])
    assert not (tmp_path / 'out' / results.STAGING).exists()  # what was written before would hold the space
    monkeypatch.undo()
    monkeypatch.setattr(ts, 'write_metrics_csv', lambda path, rows, mean: disk_full(path, None))
    with pytest.raises(OSError, match='No space left'):  # after every image was written
        ts.main(['--run', run_dir, '--results_dir', str(tmp_path / 'out'), '--num_test', '1'])
    assert not (tmp_path / 'out' / results.STAGING).exists()


def test_cli_error_is_one_line_with_exit_status_2(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'test.py'), '--run', str(tmp_path / 'nope')],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f'error: {tmp_path / "nope"}: run folder not found (--run)']


def test_a_test_py_into_a_results_folder_another_process_writes_stops_before_touching_it(run_dir, tmp_path):
    out = tmp_path / 'res'
    generate(run_dir, out)
    with another_process_writing(out) as pid:
        before = {name: os.path.getmtime(out / name) for name in os.listdir(out)}
        with pytest.raises(UserError, match=rf'res: another process \(pid {pid}\) is writing there; wait for it to '
                                            rf'end, or choose another --results_dir$'):
            ts.main(['--run', run_dir, '--results_dir', str(out), '--mode', 'sliding'])
        assert {name: os.path.getmtime(out / name) for name in os.listdir(out)} == before


def test_memory_check_is_made_for_the_largest_input(monkeypatch):
    monkeypatch.setattr(ts, 'peak_window_bytes', lambda *args: 2 ** 20)
    opt = argparse.Namespace(mode='sliding', tiles=2, overlap=0.5, scale=1.0, batch_size=8, max_memory_gb=0.02,
                             load_size=None)
    cfg = {'input_nc': 1, 'output_nc': 3}
    small, large = ('small', 'small.png', None, None, (72, 72)), ('large', 'large.png', None, None, (3000, 3000))
    ts.check_memory(opt, None, cfg, 64, [small], torch.device('cpu'))  # the small one fits
    with pytest.raises(UserError, match='large.png: 3000×3000 mask'):
        ts.check_memory(opt, None, cfg, 64, [small, large], torch.device('cpu'))


def test_memory_check_counts_a_batch_the_band_of_rows_and_the_host_as_on_the_device(monkeypatch):
    """By its numbers, for a GPU: at most as many windows as the mask has, the float band of output rows at the
    padded width (64 rows × 100,064 × 3 × 4 bytes = 73.3 MiB), no host memory; the largest mask by area."""
    monkeypatch.setattr(ts, 'peak_window_bytes', lambda *args: 2 ** 20)  # 1 MiB per window
    opt = argparse.Namespace(mode='sliding', tiles=2, overlap=0.5, scale=1.0, batch_size=64, max_memory_gb=0.02,
                             load_size=None)
    cfg, gpu = {'input_nc': 1, 'output_nc': 3}, torch.device('cuda')
    small = ('small', 'small.png', None, None, (72, 72))  # 16 windows: 16 MiB fit in 0.02 GB, 64 would not
    ts.check_memory(opt, None, cfg, 64, [small], gpu)
    tall, wide = ('tall', 'tall.png', None, None, (3000, 64)), ('wide', 'wide.png', None, None, (64, 100_000))
    opt.max_memory_gb = 0.1
    with pytest.raises(UserError, match=r'^wide\.png: 100000×64 mask, 64 windows of 64² at once: needs ~0\.13 GB of '
                                        r'cuda memory but --max_memory_gb allows 0\.1 GB; lower --batch_size '
                                        r'\(about 29 fits\)$'):
        ts.check_memory(opt, None, cfg, 64, [tall, wide], gpu)


def test_memory_check_counts_the_segmenter_on_the_image_it_judges(monkeypatch):
    """--segmenter reads each generated image as windows of its own: one larger than G passed G's check and
    would have run out of memory in the middle of the run."""
    G, segmenter, cpu = torch.nn.Identity(), torch.nn.Conv2d(3, 1, 1), torch.device('cpu')
    monkeypatch.setattr(ts, 'peak_window_bytes', lambda model, *args: 2 ** 20 if model is G else 2 ** 24)
    opt = argparse.Namespace(mode='sliding', tiles=2, overlap=0.5, scale=0.5, batch_size=8, max_memory_gb=0.1,
                             load_size=None)
    cfg = {'input_nc': 1, 'output_nc': 3}
    mask = ('m', 'm.png', None, None, (1000, 800))
    ts.check_memory(opt, G, cfg, 64, [mask], cpu)  # G's 1 MB windows fit
    with pytest.raises(UserError, match=r'^m\.png: the segmenter on its 400×500 generated image, 8 windows of 32² at '
                                        r'once: needs ~0\.1\d GB of cpu memory but --max_memory_gb allows 0\.1 GB; '
                                        r'lower '
                                        r'--batch_size \(about 6 fits\)$'):
        ts.check_memory(opt, G, cfg, 64, [mask], cpu, (segmenter, 32, cpu))
    opt.batch_size = 4  # 64 MB of windows
    ts.check_memory(opt, G, cfg, 64, [mask], cpu, (segmenter, 32, cpu))
    opt.batch_size, opt.max_memory_gb = 2, 0.01  # G's windows fit, not one of the segmenter's (its size is its own)
    with pytest.raises(UserError, match=r'even one window does not fit: lower --scale, or free memory$'):
        ts.check_memory(opt, G, cfg, 64, [mask], cpu, (segmenter, 32, cpu))
    # full mode: the segmenter reads the 64² output (64 MiB of windows and ~40 KB), not a 1000×800 image (~3.4 MB more)
    opt.mode, opt.batch_size, opt.max_memory_gb = 'full', 4, 0.065
    ts.check_memory(opt, G, cfg, 64, [mask], cpu, (segmenter, 32, cpu))


def test_a_scale_that_is_not_a_number_is_a_usage_error(run_dir, capsys):
    with pytest.raises(SystemExit) as stop:
        ts.main(['--run', run_dir, '--mode', 'sliding', '--scale', 'half'])
    assert stop.value.code == 2
    assert "argument --scale: 'half' is neither 'train' nor a number" in capsys.readouterr().err


def test_a_window_too_large_to_measure_is_one_line(run_dir, tmp_path, monkeypatch):
    """--load_size 100000: the memory check's own forward pass failed to allocate 40 GB, with a traceback."""
    def out_of_memory(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(ts, 'peak_window_bytes', out_of_memory)
    with pytest.raises(UserError, match=r"^one 64² window \(the run's --crop_size; a smaller --load_size may fit\) "
                                        r'does not fit in cpu memory \(\[enforce'):
        generate(run_dir, tmp_path / 'out')
    with pytest.raises(UserError, match=r'^one 128² window \(--load_size\) does not fit'):
        generate(run_dir, tmp_path / 'out', '--load_size', '128')
    assert not (tmp_path / 'out').exists()
