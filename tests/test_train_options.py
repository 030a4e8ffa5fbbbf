"""train.py's options and inputs (train_options.py): the one-line errors that leave the run folder as it was,
the limits that are accepted, and what a resume or an edited config.json may and may not change.
"""
import json
import os
import re
import shutil
import signal

import numpy as np
import pytest
import torch

import pix2pix_model
import train
import train_options
import transform_dataset
from conftest import DATA, cli_error, run_files, tiny, write_array_dataset
from dataset import load_split
from train_options import build_parser, parse_options, resolve_options
from utils import UserError


def test_missing_dataroot(tmp_path):
    with pytest.raises(UserError, match='--dataroot not found'):
        train.main(tiny(tmp_path / 'nope', tmp_path, 'x'))


def test_dataroot_without_val(tmp_path):
    masks = np.zeros((2, 72, 72), np.uint8)
    write_array_dataset(str(tmp_path / 'd'), 'train', masks, np.zeros((2, 72, 72, 3), np.uint8))
    with pytest.raises(UserError, match='no val/ folder'):
        train.main(tiny(tmp_path / 'd', tmp_path, 'x'))


@pytest.mark.parametrize('val_mask, val_image, message', [
    ((2, 72, 72, 3), (2, 72, 72, 3), r'val/masks: 3 channels, but the train masks have 1'),
    ((2, 48, 48), (2, 48, 48, 3), r'val/masks: 48×48 arrays, smaller than --crop_size 64'),
])
def test_val_split_that_does_not_match_train(tmp_path, capsys, val_mask, val_image, message):
    """Hand-made val arrays that train's G cannot take: refused before the run folder is made (it was a
    traceback in the first validation, after an epoch of training)."""
    write_array_dataset(str(tmp_path / 'd'), 'train', np.zeros((2, 72, 72), np.uint8),
                        np.zeros((2, 72, 72, 3), np.uint8))
    write_array_dataset(str(tmp_path / 'd'), 'val', np.zeros(val_mask, np.uint8), np.zeros(val_image, np.uint8))
    with pytest.raises(UserError, match=message):
        train.main(tiny(tmp_path / 'd', tmp_path / 'runs', 'x', '--n_epochs', '1', '--n_epochs_decay', '0'))
    assert not (tmp_path / 'runs').exists()


def test_empty_split(tmp_path):
    write_array_dataset(str(tmp_path / 'd'), 'train', [], [])
    write_array_dataset(str(tmp_path / 'd'), 'val', [], [])
    with pytest.raises(UserError, match='holds no samples'):
        train.main(tiny(tmp_path / 'd', tmp_path, 'x'))


def test_batch_larger_than_dataset(transformed_root, tmp_path):
    with pytest.raises(UserError, match='--batch_size 64 is larger than the 5 training samples'):
        train.main(tiny(transformed_root, tmp_path, 'x', '--batch_size', '64'))


def test_abbreviated_options_are_refused(capsys):
    # --resume tells the options given from the saved ones by full name: an abbreviation would be dropped
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(['--dataroot', 'd', '--resume', '--val_f', '2'])
    assert exit_info.value.code == 2 and 'unrecognized arguments: --val_f 2' in capsys.readouterr().err


@pytest.mark.parametrize('extra, message', [
    (('--crop_size', '16'), r'--crop_size 16 is too small for --netD basic \(--norm instance\): it needs at least 24'),
    (('--netD', 'n_layers', '--n_layers_D', '5'), '--crop_size 64 is too small for --netD n_layers --n_layers_D 5'),
    (('--netD', 'n_layers', '--n_layers_D', '0'), '--n_layers_D must be >= 1, got 0'),
    (('--lr_policy', 'step', '--lr_decay_iters', '0'), '--lr_decay_iters must be >= 1, got 0'),
    (('--n_display', '0'), '--n_display must be >= 1, got 0'),
    (('--stop_epoch', '0'), '--stop_epoch must be >= 1, got 0'),
    (('--stop_epoch', '-1'), '--stop_epoch must be >= 1, got -1'),
    (('--content_loss', 'l1+vgg', '--lambda_VGG', '10', '--vgg_weights', 'no_such.pth'),
     '--vgg_weights: VGG19 weights file not found: /\\S*/no_such.pth'),  # absolute: a resume may start elsewhere
    (('--beta1', '1.5'), r'--beta1 must be in \[0, 1\), got 1.5'),
    (('--beta1', '1'), r'--beta1 must be in \[0, 1\), got 1.0'),  # Adam's first moment would never forget
    (('--lambda_L1', '-1'), '--lambda_L1 must be a number >= 0, got -1.0'),
    (('--lambda_L1', 'inf'), '--lambda_L1 must be a number >= 0, got inf'),  # trained NaN weights, exit 0
    (('--psnr_drop_warn', '-1'), '--psnr_drop_warn must be >= 0, got -1.0'),  # crashed at the first validation
    (('--init_gain', '0'), '--init_gain must be a positive number, got 0.0'),
    (('--lr', 'inf'), '--lr must be a positive number, got inf'),
    (('--ngf', '0'), '--ngf must be >= 1, got 0'),  # a traceback, after config.json was written
    (('--ndf', '-4'), '--ndf must be >= 1, got -4'),
    (('--name', ''), "--name '': must name a folder inside --runs_dir"),  # wrote latest.pt into --runs_dir itself
    (('--name', 'TMP/elsewhere'), "--name 'TMP/elsewhere': must name a folder inside --runs_dir"),  # absolute
    (('--name', '../elsewhere'), "--name '../elsewhere': must name a folder inside --runs_dir"),
    (('--seed', '99999999999999'), r'--seed must be within ±2\*\*40, got 99999999999999'),
    (('--output_nc', '1'), '--output_nc 1 but the images in .* have 3 channels'),  # crashed in the first D step
    (('--data_device', 'cuda'), '--data_device cuda needs a CUDA training device'),  # the suite runs on the CPU
    (('--compile_mode', 'reduce-overhead'), '--compile_mode reduce-overhead needs --compile'),
    (('--content_loss', 'l1+vgg'), r'--content_loss l1\+vgg needs --lambda_VGG > 0'),  # a VGG term weighted 0
    (('--compile', '--compile_mode', 'reduce-overhead'),
     r'--compile_mode reduce-overhead \(CUDA graphs\) needs a CUDA training device and one process \(this run trains '
     r'on the CPU\)'),
])
def test_bad_option_combinations_are_one_line_errors(transformed_root, tmp_path, capsys, extra, message):
    extra = [arg.replace('TMP', str(tmp_path)) for arg in extra]  # a run the check let through lands in tmp_path
    line = cli_error(tiny(transformed_root, tmp_path, 'bad', '--n_epochs', '1', '--n_epochs_decay', '0', *extra),
                     capsys)
    assert re.search(message.replace('TMP', re.escape(str(tmp_path))), line), line
    assert not os.path.exists(tmp_path / 'bad')


def test_options_at_their_limits_are_accepted_and_paths_are_made_absolute(transformed_root, tmp_path, monkeypatch):
    """test.py reads --dataroot back from config.json, run from anywhere: it is saved absolute."""
    monkeypatch.chdir(os.path.dirname(transformed_root))
    opt = parse_options(tiny(os.path.basename(transformed_root), tmp_path, 'edge', '--beta1', '0', '--lambda_L1', '0',
                             '--psnr_drop_warn', '0', '--seed', str(2 ** 40 - 1), '--name', 'a/../edge',
                             '--init_from', 'run/best.pt', '--vgg_weights', 'vgg.pth'))
    assert opt.dataroot == transformed_root
    here = os.path.dirname(transformed_root)
    assert (opt.init_from, opt.vgg_weights) == (os.path.join(here, 'run', 'best.pt'), os.path.join(here, 'vgg.pth'))


def test_a_run_saved_before_an_option_existed_resumes_with_its_default(transformed_root, tmp_path, capsys):
    train.main(tiny(transformed_root, tmp_path, 'old', '--n_epochs', '1', '--n_epochs_decay', '1', '--stop_epoch', '1'))
    config_path = tmp_path / 'old' / 'config.json'
    config = json.load(open(config_path))
    del config['best_metric'], config['data_identity']  # as a run saved before they were recorded
    with open(config_path, 'w') as f:
        json.dump(config, f)
    line = cli_error(tiny(transformed_root, tmp_path, 'old', '--resume', '--best_metric', 'L1'), capsys)
    assert 'trained with --best_metric PSNR, not L1' in line
    assert train.main(tiny(transformed_root, tmp_path, 'old', '--resume', '--best_metric', 'PSNR')) == 0
    assert json.load(open(config_path))['best_metric'] == 'PSNR'
    assert json.load(open(config_path))['data_identity'] == train_options.data_identity(transformed_root)
    assert torch.load(tmp_path / 'old' / 'latest.pt', weights_only=True)['epoch'] == 2


def test_a_checkpoint_saved_before_the_data_scale_was_recorded_resumes_and_gains_it(transformed_root, tmp_path):
    train.main(tiny(transformed_root, tmp_path, 'old', '--n_epochs', '1', '--n_epochs_decay', '1', '--stop_epoch', '1'))
    path = tmp_path / 'old' / 'latest.pt'
    state = torch.load(path, weights_only=True)
    assert state['data_scale'] == pytest.approx(72 / 240)  # 240² synthetic sources at --size 72
    del state['data_scale']
    torch.save(state, path)
    assert train.main(tiny(transformed_root, tmp_path, 'old', '--resume')) == 0
    assert torch.load(path, weights_only=True)['data_scale'] == pytest.approx(0.3)


def test_resume_keeps_the_data_it_was_trained_on(transformed_root, many_tiles_root, tmp_path, capsys):
    train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '3', '--n_epochs_decay', '0', '--stop_epoch', '1'))
    before = run_files(tmp_path / 'run')
    line = cli_error(tiny(many_tiles_root, tmp_path, 'run', '--resume'), capsys)
    assert line == (f'error: --resume: {many_tiles_root} holds other data than {tmp_path / "run"} was trained on '
                    '(other tiles or transform settings); its validation history and best.pt would mix two datasets: '
                    'start a new --name')
    assert run_files(tmp_path / 'run') == before
    # The same arrays in another folder are the same data; without --dataroot the run's saved folder is used.
    moved = tmp_path / 'moved'
    shutil.copytree(transformed_root, moved)
    assert train.main(tiny(moved, tmp_path, 'run', '--resume', '--stop_epoch', '2')) == 0
    assert train.main(['--runs_dir', str(tmp_path), '--name', 'run', '--resume', '--log_freq', '1']) == 0
    assert torch.load(tmp_path / 'run' / 'latest.pt', weights_only=True)['epoch'] == 3
    assert json.load(open(tmp_path / 'run' / 'config.json'))['dataroot'] == str(moved)
    shutil.move(moved, tmp_path / 'moved_again')
    line = cli_error(['--runs_dir', str(tmp_path), '--name', 'run', '--resume'], capsys)
    assert line == (f'error: {moved}: --dataroot not found (with --resume: the folder the run trained on; give '
                    '--dataroot if it has moved)')


def test_resume_refuses_the_same_tiles_transformed_otherwise(tmp_path, capsys):
    # facades as photo|labels (BtoA: the labels are the input) and the other way round: same tile names, other data
    roots = {}
    for direction in ('BtoA', 'AtoB'):
        roots[direction] = tmp_path / direction
        transform_dataset.main(['--dataroot', os.path.join(DATA, 'facades'), '--out', str(roots[direction]),
                                '--format', 'aligned', '--direction', direction, '--size', '72', '--crop_size', '64',
                                '--workers', '1'])
    train.main(tiny(roots['BtoA'], tmp_path, 'fac', '--n_epochs', '2', '--n_epochs_decay', '0', '--stop_epoch', '1'))
    line = cli_error(tiny(roots['AtoB'], tmp_path, 'fac', '--resume'), capsys)
    assert f'--resume: {roots["AtoB"]} holds other data than' in line


def test_dataroot_is_required_for_a_new_run_and_a_split_folder_gets_a_hint(transformed_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(['--runs_dir', str(tmp_path), '--name', 'new'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith('the following arguments are required: --dataroot '
                                                            '(see --help)')
    for split in ('train', 'val'):
        line = cli_error(tiny(os.path.join(transformed_root, split), tmp_path, 'x'), capsys)
        assert line == (f'error: {transformed_root}/{split}: no train/ folder; {transformed_root}/{split} is itself a '
                        f'split: give its parent, {transformed_root}')
    raw = tmp_path / 'AerialImageDataset'  # Inria's own layout, not transformed yet
    (raw / 'gt').mkdir(parents=True)
    line = cli_error(tiny(str(raw), tmp_path, 'raw'), capsys)
    assert line.startswith(f'error: {raw}: no train/ folder; raw Inria-layout images: transform them')
    only_train = tmp_path / 'half'
    (only_train / 'train' / 'masks').mkdir(parents=True)
    line = cli_error(tiny(str(only_train), tmp_path, 'half'), capsys)
    assert line == f'error: {only_train}: no val/ folder; run transform_dataset.py to make val/'


def test_mid_epoch_resume_keeps_the_batch_size(transformed_root, tmp_path, capsys, monkeypatch):
    step = pix2pix_model.Trainer.train_step

    def preempted_after_two_steps(trainer, mask, real):
        losses = step(trainer, mask, real)
        if trainer.iteration == 1:  # iteration counts finished steps: this is step 2, and the loop stops after it
            os.kill(os.getpid(), signal.SIGTERM)
        return losses

    monkeypatch.setattr(pix2pix_model.Trainer, 'train_step', preempted_after_two_steps)
    # one process stops after the step in flight, not at the next log step (a scheduler's grace period is short)
    assert train.main(tiny(transformed_root, tmp_path, 'pre', '--n_epochs', '1', '--n_epochs_decay', '0',
                           '--log_freq', '100')) == 0
    assert torch.load(tmp_path / 'pre' / 'latest.pt', weights_only=True)['next_batch'] == 2
    line = cli_error(tiny(transformed_root, tmp_path, 'pre', '--resume', '--batch_size', '2'), capsys)
    assert '--batch_size 2' in line and 'stopped mid-epoch after 2 batches of 1' in line
    line = cli_error(tiny(transformed_root, tmp_path, 'pre', '--resume', '--seed', '5'), capsys)
    assert line.startswith('error: --seed 5: ') and 'finish that epoch with --seed 0' in line


@pytest.mark.parametrize('args, message', [
    (('--netG', 'unet_256'), r'--crop_size 64: --netG unet_256 needs a multiple of 256 \(use --netG unet_128'),
    (('--netG', 'resnet_6blocks', '--crop_size', '6'), '--crop_size 6: --netG resnet_6blocks needs a multiple of 4'),
    # D's checks pass here, but the ResNet's 1×1 bottleneck would fail in the first step.
    (('--netG', 'resnet_6blocks', '--netD', 'pixel', '--crop_size', '4'),
     '--crop_size 4: --netG resnet_6blocks needs a multiple of 4, at least 8'),
])
def test_generator_needs_a_fitting_crop(transformed_root, tmp_path, args, message):
    with pytest.raises(UserError, match=message):
        train.main(tiny(transformed_root, tmp_path, 'x', *args))
    assert not os.path.exists(tmp_path / 'x')


def test_unknown_netG_is_rejected_by_the_parser(transformed_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny(transformed_root, tmp_path, 'x', '--netG', 'unet_512'))
    assert exit_info.value.code == 2 and "invalid choice: 'unet_512'" in capsys.readouterr().err


def test_resume_before_anything_was_saved_starts_the_run(transformed_root, tmp_path, capsys):
    """A requeued job's command carries --resume from its first start on: killed before its first checkpoint, it
    was refused for good ("no checkpoint to --resume from")."""
    with pytest.raises(UserError, match='nothing to --resume, and no --dataroot to start the run with'):
        train.main(['--runs_dir', str(tmp_path), '--name', 'never_ran', '--resume'])
    schedule = ('--n_epochs', '1', '--n_epochs_decay', '1')
    train.main(tiny(transformed_root, tmp_path, 'plain', *schedule))
    assert train.main(tiny(transformed_root, tmp_path, 'requeued', *schedule, '--resume')) == 0
    assert 'holds no checkpoint yet (never started, or stopped before its first save)' in capsys.readouterr().out
    plain = torch.load(tmp_path / 'plain' / 'latest.pt', weights_only=True)['G']
    assert all(torch.equal(plain[k], v) for k, v in torch.load(tmp_path / 'requeued' / 'latest.pt',
                                                                 weights_only=True)['G'].items())
    for name in os.listdir(tmp_path / 'requeued'):  # as a kill before the first save leaves it: config.json, logs
        if name.endswith('.pt'):
            os.remove(tmp_path / 'requeued' / name)
    assert train.main(['--runs_dir', str(tmp_path), '--name', 'requeued', '--resume']) == 0  # from config.json
    again = torch.load(tmp_path / 'requeued' / 'latest.pt', weights_only=True)
    assert again['epoch'] == 2 and all(torch.equal(plain[k], v) for k, v in again['G'].items())
    os.remove(tmp_path / 'plain' / 'latest.pt')  # by hand: a start from epoch 1 would overwrite best.pt
    line = cli_error(tiny(transformed_root, tmp_path, 'plain', *schedule, '--resume'), capsys)
    assert line == (f'error: {tmp_path}/plain/latest.pt: no checkpoint to --resume from, but the run holds best.pt: '
                    f'copy the checkpoint to continue from to latest.pt')
    line = cli_error(tiny(transformed_root, tmp_path, 'plain', *schedule), capsys)
    assert line.startswith(f'error: {tmp_path}/plain already holds a trained run')


def test_a_checkpoint_from_another_run_or_edited_is_one_line(transformed_root, tmp_path, capsys):
    """A latest.pt copied from another run gave a traceback of 35 size mismatches; one cut by hand a KeyError."""
    for name, ngf in (('mine', '8'), ('wide', '16')):
        train.main(tiny(transformed_root, tmp_path, name, '--ngf', ngf, '--n_epochs', '2', '--n_epochs_decay', '0',
                        '--stop_epoch', '1', '--save_epoch_freq', '1'))
    latest = tmp_path / 'mine' / 'latest.pt'
    shutil.copy(tmp_path / 'wide' / 'latest.pt', latest)
    line = cli_error(tiny(transformed_root, tmp_path, 'mine', '--resume'), capsys)
    assert line == (f'error: {latest}: saved with --ngf 16, but config.json beside it says --ngf 8: one of them comes '
                    'from another run or was edited')
    state = torch.load(tmp_path / 'mine' / 'epoch_1.pt', weights_only=True)
    del state['next_batch']
    torch.save(state, latest)
    line = cli_error(tiny(transformed_root, tmp_path, 'mine', '--resume'), capsys)
    assert line.startswith(f"error: {latest}: cannot resume from it (no 'next_batch'); resume from a copy of")
    shutil.copy(tmp_path / 'mine' / 'epoch_1.pt', latest)  # what the error advises
    assert train.main(tiny(transformed_root, tmp_path, 'mine', '--resume')) == 0


@pytest.mark.parametrize('edit, message', [
    (lambda c: c.update(n_epochs='3'), '"n_epochs": "3" is not a value --n_epochs takes'),
    (lambda c: c.update(crop_size=64.0), '"crop_size": 64.0 is not a value --crop_size takes'),
    (lambda c: c.update(netG='foo'), '"netG": "foo" is not a value --netG takes'),
    (lambda c: c.update(rotate='yes'), '"rotate": "yes" is not a value --rotate takes'),
    (lambda c: c.update(lr=None), '"lr": null is not a value --lr takes'),
    (lambda c: c.update(batch_size=True), '"batch_size": true is not a value --batch_size takes'),
    (lambda c: c.update(ngf=-1), '--ngf must be >= 1, got -1'),  # the ranges: check_options, as for the command line
    (lambda c: c.update(dataroot=None), 'config.json names no --dataroot; give --dataroot'),
    (lambda c: [1, 2], 'config.json: not a run config (a JSON object of options)'),
])
def test_a_config_edited_by_hand_is_checked_like_the_command_line(transformed_root, tmp_path, capsys, edit, message):
    """Each of these crashed with a traceback, some after the run folder was opened."""
    train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '2', '--n_epochs_decay', '0', '--stop_epoch', '1'))
    config_path = tmp_path / 'run' / 'config.json'
    config = json.loads(config_path.read_text())
    config = edit(config) or config
    config_path.write_text(json.dumps(config))
    before = run_files(tmp_path / 'run')
    line = cli_error(['--runs_dir', str(tmp_path), '--name', 'run', '--resume'], capsys)
    assert message in line, line
    assert run_files(tmp_path / 'run') == before


def test_an_option_deleted_from_the_config_resumes_with_its_default(transformed_root, tmp_path):
    train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '2', '--n_epochs_decay', '0', '--stop_epoch', '1'))
    config_path = tmp_path / 'run' / 'config.json'
    config = json.loads(config_path.read_text())
    del config['lr_policy']  # was a KeyError
    config_path.write_text(json.dumps(config))
    assert train.main(['--runs_dir', str(tmp_path), '--name', 'run', '--resume']) == 0


@pytest.mark.parametrize('extra, problem', [
    (('--ngf', '16'), 'trained with --ngf 8, not --ngf 16; --init_from needs networks whose weights fit (G: '),
    # a ResNet's dropout layers shift its layer numbers: the file is fine, the option differs
    (('--no_dropout',), 'trained with --no_dropout False, not --no_dropout True; --init_from needs networks whose'),
    (('--init_from', 'nowhere.pt'), '--init_from checkpoint not found'),
])
def test_init_from_a_checkpoint_of_other_networks_is_one_line(transformed_root, tmp_path, capsys, extra, problem):
    train.main(tiny(transformed_root, tmp_path, 'base', '--n_epochs', '1', '--n_epochs_decay', '0'))
    args = tiny(transformed_root, tmp_path, 'tuned', '--init_from', str(tmp_path / 'base' / 'latest.pt'), *extra)
    assert problem in cli_error(args, capsys)
    assert not (tmp_path / 'tuned').exists()


def check_fit(root, tmp_path, device, world_size, *extra):
    """train_options.check_options_fit for these options on root's splits, as one of world_size processes."""
    opt = build_parser().parse_args(tiny(root, tmp_path, 'x', *extra))
    masks, images, _ = load_split(root, 'train')
    train_options.check_options_fit(opt, masks, images, load_split(root, 'val')[0], torch.device(device), world_size)


def test_cuda_graphs_under_torchrun_are_refused(transformed_root, tmp_path):
    """DDP's gradient hooks with CUDA graphs are untested here: two processes on CUDA get a one-line error."""
    with pytest.raises(UserError, match=re.escape('needs a CUDA training device and one process, not 2 under '
                                                  'torchrun')):
        check_fit(transformed_root, tmp_path, 'cuda', 2, '--compile', '--compile_mode', 'reduce-overhead',
                  '--batch_size', '2')


def test_a_global_batch_that_the_processes_cannot_share_is_refused(transformed_root, tmp_path):
    with pytest.raises(UserError, match='--batch_size 3 must be divisible by the 2 processes'):
        check_fit(transformed_root, tmp_path, 'cpu', 2, '--batch_size', '3')


def test_the_data_identity_follows_the_arrays_not_their_folder(tmp_path):
    """transform.json names the input folder: the same tiles made from it at another path (moved, or mounted
    elsewhere) are the same data; other transform settings are not."""
    transform_dataset.main(['--dataroot', os.path.join(DATA, 'inria_samples'), '--out', str(tmp_path / 'data'),
                            '--size', '32', '--crop_size', '16', '--workers', '1'])
    shutil.copytree(tmp_path / 'data', tmp_path / 'moved')
    config = json.loads((tmp_path / 'moved' / 'transform.json').read_text())
    (tmp_path / 'moved' / 'transform.json').write_text(json.dumps(dict(config, dataroot='/mnt/elsewhere')))
    assert train_options.data_identity(str(tmp_path / 'moved')) == train_options.data_identity(str(tmp_path / 'data'))
    (tmp_path / 'moved' / 'transform.json').write_text(json.dumps(dict(config, direction='AtoB')))
    assert train_options.data_identity(str(tmp_path / 'moved')) != train_options.data_identity(str(tmp_path / 'data'))


@pytest.mark.parametrize('norm, side', [('instance', 2), ('none', 1)])
def test_a_normalised_map_needs_two_values_per_channel(norm, side):
    """The 1×1 PixelGAN keeps the crop's side to its last layer: instance norm needs at least 2×2 there."""
    opt = build_parser().parse_args(['--dataroot', 'd', '--netD', 'pixel', '--norm', norm])
    assert train_options.discriminator_min_size(opt) == side


def saved_run(tmp_path):
    """A run folder as resolve_options reads it (config.json and a latest.pt), without training."""
    parser = build_parser()
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.json').write_text(json.dumps(vars(parser.parse_args(['--dataroot', str(tmp_path)]))))
    (run / 'latest.pt').write_bytes(b'')
    return parser, ['--runs_dir', str(tmp_path), '--name', 'run', '--resume']


@pytest.mark.parametrize('option, value', [('--gan_mode', 'lsgan'), ('--crop_size', '128'),
                                           ('--content_loss', 'l1+vgg'), ('--ngf', '32'), ('--norm', 'batch')])
def test_resume_refuses_every_option_that_defines_the_networks_or_data(tmp_path, option, value):
    parser, resume = saved_run(tmp_path)
    with pytest.raises(UserError, match=f'trained with {option} '):
        resolve_options(parser, [*resume, option, value])


def test_resume_reads_options_given_as_name_equals_value(tmp_path):
    parser, resume = saved_run(tmp_path)
    with pytest.raises(UserError, match='trained with --lr 0.0002, not 0.001'):
        resolve_options(parser, [*resume, '--lr=1e-3'])
    assert resolve_options(parser, [*resume, '--n_epochs=7']).n_epochs == 7


def test_resume_with_other_architecture_and_existing_run(transformed_root, tmp_path):
    train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '1', '--n_epochs_decay', '1', '--stop_epoch', '1'))
    before = open(tmp_path / 'run' / 'latest.pt', 'rb').read()
    with pytest.raises(UserError, match='trained with --netG resnet_6blocks'):
        train.main(tiny(transformed_root, tmp_path, 'run', '--resume', '--netG', 'resnet_9blocks'))
    with pytest.raises(UserError, match='already holds a trained run'):
        train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '1'))
    assert open(tmp_path / 'run' / 'latest.pt', 'rb').read() == before
