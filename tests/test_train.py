"""train.py's training loop on tiny CPU runs: losses, validation and best.pt, the learning rate schedules,
checkpoints and bit-identical resumes, stops at an epoch's end, the divergence canaries, the VGG content loss,
TensorBoard's curves and hparams. More resuming, stopping and extending, and the Trainer built directly (the models'
layouts, the gradients each optimiser steps on): tests/test_train_resume_and_trainer.py. What train.py refuses, and
what a resume may change: tests/test_train_options.py.
"""
import glob
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import pix2pix_model
import train
from conftest import assert_same_weights, cli_error, tiny
from utils import UserError


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    return acc


def generator_weights(run_dir, checkpoint='latest.pt'):
    return torch.load(os.path.join(run_dir, checkpoint), map_location='cpu', weights_only=True)['G']


def wait_for_the_next_second():
    """Before an in-process resume that the test reads events across. Event file names hold the second a writer
    opened and a per-process counter, and TensorBoard reads the files in name order: two writers of one process in
    one second sort by counter as text (….10 before ….9), the resume's events first. A real resume is a new process,
    seconds later."""
    time.sleep(1.01 - time.time() % 1)


def test_one_epoch_reduces_l1_and_logs_everything(many_tiles_root, tmp_path):
    assert train.main(tiny(many_tiles_root, tmp_path, 'learn', '--n_epochs', '1', '--n_epochs_decay', '0',
                           '--lr', '1e-3', '--n_display', '2')) == 0
    acc = events(tmp_path / 'learn')
    l1 = [e.value for e in acc.Scalars('loss/G_L1')]
    assert len(l1) == 45  # one point per iteration at --log_freq 1
    assert np.mean(l1[-10:]) < 0.7 * np.mean(l1[:10]), l1  # a real learning signal, not just "runs"
    tags = acc.Tags()
    for name in ('loss/G_GAN', 'loss/G_L1', 'loss/D_real', 'loss/D_fake', 'lr', 'val/PSNR',
                 'val/SSIM', 'time/epoch_seconds', 'time/images_per_second', 'time/data_share'):
        assert name in tags['scalars'], name
    assert 'loss/G_VGG' not in tags['scalars']  # --content_loss l1: it was a flat line of zeros
    assert 'val/mask|generated|real' in tags['images']
    image = acc.Images('val/mask|generated|real')[0]
    assert (image.width, image.height) == (3 * 64, 2 * 64)  # mask | generated | real, one row per sample
    assert os.path.isdir(tmp_path / 'learn' / 'hparams')
    config = json.load(open(tmp_path / 'learn' / 'config.json'))
    assert config['netG'] == 'resnet_6blocks' and config['lambda_L1'] == 100.0 and config['input_nc'] == 1


def test_checkpoint_is_weights_only_loadable_with_full_state(transformed_root, tmp_path):
    train.main(tiny(transformed_root, tmp_path, 'ckpt', '--n_epochs', '1', '--n_epochs_decay', '0'))
    state = torch.load(tmp_path / 'ckpt' / 'latest.pt', map_location='cpu', weights_only=True)
    for key in ('G', 'D', 'opt_G', 'opt_D', 'sched_G', 'sched_D', 'epoch', 'iteration', 'rng', 'history', 'config'):
        assert key in state, key
    assert state['epoch'] == 1 and state['iteration'] == 5
    assert [set(rank) for rank in state['rng']] == [{'python', 'numpy', 'torch', 'cuda'}]  # one per process
    assert os.path.exists(tmp_path / 'ckpt' / 'best.pt')


def test_resume_is_bit_identical(transformed_root, tmp_path):
    common = ['--n_epochs', '2', '--n_epochs_decay', '2', '--save_epoch_freq', '1']
    train.main(tiny(transformed_root, tmp_path, 'straight', *common))
    train.main(tiny(transformed_root, tmp_path, 'split', *common, '--stop_epoch', '2'))
    assert torch.load(tmp_path / 'split' / 'latest.pt', weights_only=True)['epoch'] == 2
    train.main(tiny(transformed_root, tmp_path, 'split', '--resume'))
    straight = generator_weights(tmp_path / 'straight')
    assert_same_weights(straight, generator_weights(tmp_path / 'split'))
    # and the run really moved: epoch 2 and epoch 4 weights differ
    epoch2 = generator_weights(tmp_path / 'straight', 'epoch_2.pt')
    assert any(not torch.equal(epoch2[k], straight[k]) for k in straight)


def test_best_validation_follows_the_metric_and_keeps_the_earliest_of_equals():
    history = [{'epoch': 1, 'PSNR': 20.0, 'SSIM': 0.5, 'L1': 0.20},
               {'epoch': 2, 'PSNR': 22.0, 'SSIM': 0.4, 'L1': 0.18},
               {'epoch': 3, 'PSNR': 21.0, 'SSIM': 0.5, 'L1': 0.15}]
    assert [train.best_validation(history, metric)['epoch'] for metric in ('PSNR', 'SSIM', 'L1')] == [2, 1, 3]
    assert train.best_validation([], 'L1') is None


def test_best_pt_is_the_epoch_with_the_best_chosen_metric(transformed_root, tmp_path, capsys, monkeypatch):
    # scripted validations: PSNR would pick epoch 3; L1 picks epoch 2, and epoch 4's equal L1 does not replace it
    scripted = iter([{'PSNR': 15.0, 'SSIM': 0.2, 'L1': 0.12}, {'PSNR': 16.0, 'SSIM': 0.3, 'L1': 0.08},
                     {'PSNR': 17.0, 'SSIM': 0.4, 'L1': 0.09}, {'PSNR': 14.0, 'SSIM': 0.1, 'L1': 0.08}])
    monkeypatch.setattr(train, 'validate', lambda *args: next(scripted))
    train.main(tiny(transformed_root, tmp_path, 'l1', '--best_metric', 'L1', '--lr_policy', 'plateau',
                    '--n_epochs', '4', '--n_epochs_decay', '0', '--save_epoch_freq', '1'))
    best = torch.load(tmp_path / 'l1' / 'best.pt', weights_only=True)
    assert best['epoch'] == 2 and [entry['L1'] for entry in best['history']] == [0.12, 0.08]
    epoch2 = generator_weights(tmp_path / 'l1', 'epoch_2.pt')
    assert all(torch.equal(best['G'][key], epoch2[key]) for key in epoch2)
    assert best['sched_G']['mode'] == 'min'  # plateau watches the same metric: lower L1 is better
    assert '(best val L1 0.08 at epoch 2)' in capsys.readouterr().out
    logged = {tag: events(tmp_path / 'l1' / 'hparams').Scalars(tag)[0].value
              for tag in ('hparam/PSNR', 'hparam/best_PSNR', 'hparam/best_L1', 'hparam/best_epoch')}
    assert logged == pytest.approx({'hparam/PSNR': 14.0, 'hparam/best_PSNR': 16.0, 'hparam/best_L1': 0.08,
                                    'hparam/best_epoch': 2})  # final and best.pt's epoch, for comparing runs


def test_plateau_halves_both_learning_rates_once_validation_stops_improving(transformed_root, tmp_path, monkeypatch):
    """ReduceLROnPlateau (patience 5): the 7th validation without a 1 % gain halves G's rate and D's, and the
    epoch after it trains at the new rate."""
    monkeypatch.setattr(train, 'validate', lambda *args: {'PSNR': 15.0, 'SSIM': 0.3, 'L1': 0.1})
    train.main(tiny(transformed_root, tmp_path, 'flat', '--lr_policy', 'plateau', '--n_epochs', '8',
                    '--n_epochs_decay', '0', '--lr', '1e-3'))
    state = torch.load(tmp_path / 'flat' / 'latest.pt', weights_only=True)
    assert [group['lr'] for name in ('opt_G', 'opt_D') for group in state[name]['param_groups']] == [5e-4, 5e-4]
    logged = [event.value for event in events(tmp_path / 'flat').Scalars('lr')]  # float32 in the event file
    assert logged == pytest.approx([1e-3] * 7 + [5e-4])


def test_display_freq_counts_validations(transformed_root, tmp_path):
    """--display_freq 2 at --val_freq 2: the grid of every 2nd validation (epoch 4), and the final model's."""
    train.main(tiny(transformed_root, tmp_path, 'grids', '--n_epochs', '6', '--n_epochs_decay', '0', '--val_freq', '2',
                    '--display_freq', '2'))
    per_epoch = torch.load(tmp_path / 'grids' / 'latest.pt', weights_only=True)['iteration'] // 6
    grids = events(tmp_path / 'grids').Images('val/mask|generated|real')
    assert [grid.step // per_epoch for grid in grids] == [4, 6]


def test_a_stop_between_validations_reports_one_but_changes_no_schedule(transformed_root, tmp_path, capsys,
                                                                      monkeypatch):
    # epoch 1's validation would be the best: it must not become best.pt, enter the history or step plateau
    scripted = {1: 20.0, 2: 15.0, 3: 16.0, 4: 15.5}
    monkeypatch.setattr(train, 'validate', lambda trainer, *args: {'PSNR': scripted[trainer.epoch + 1], 'SSIM': 0.3,
                                                                   'L1': 0.1})
    options = ('--val_freq', '2', '--lr_policy', 'plateau', '--n_epochs', '4', '--n_epochs_decay', '0')
    train.main(tiny(transformed_root, tmp_path, 'straight', *options))
    train.main(tiny(transformed_root, tmp_path, 'stopped', *options, '--stop_epoch', '1'))
    out = capsys.readouterr().out
    assert ('val PSNR 20.00 dB SSIM 0.300 L1 0.1000 (reported only: the history, best.pt and plateau keep to '
            '--val_freq 2)') in out
    assert 'no scheduled validation yet so far' in out
    wait_for_the_next_second()
    train.main(tiny(transformed_root, tmp_path, 'stopped', *options, '--resume'))
    for checkpoint in ('latest.pt', 'best.pt'):
        straight, stopped = (torch.load(tmp_path / run / checkpoint, weights_only=True)
                             for run in ('straight', 'stopped'))
        assert stopped['epoch'] == straight['epoch'] and stopped['history'] == straight['history']
        assert stopped['sched_G'] == straight['sched_G']
        assert all(torch.equal(stopped['G'][k], straight['G'][k]) for k in straight['G'])
    assert [e['epoch'] for e in straight['history']] == [2, 4] and straight['epoch'] == 4  # best.pt: 15.5 dB


def test_a_stop_during_the_last_epochs_end_still_finishes_the_run(transformed_root, tmp_path, capsys, monkeypatch):
    def validate_then_sigterm(trainer, *args):
        if trainer.epoch + 1 == 2:  # the last epoch: a scheduler's SIGTERM arrives during its validation
            os.kill(os.getpid(), signal.SIGTERM)
        return {'PSNR': 15.0, 'SSIM': 0.3, 'L1': 0.1}
    monkeypatch.setattr(train, 'validate', validate_then_sigterm)
    assert train.main(tiny(transformed_root, tmp_path, 'last', '--n_epochs', '2', '--n_epochs_decay', '0',
                           '--val_freq', '2', '--display_freq', '3')) == 0
    assert os.path.isdir(tmp_path / 'last' / 'hparams')  # it was never written: a resume had nothing to train
    assert 'done: ' in capsys.readouterr().out
    grids = events(tmp_path / 'last').Images('val/mask|generated|real')
    assert [grid.step for grid in grids] == [10]  # the final model's grid, though --display_freq 3 skips it


def test_a_stop_during_an_epochs_end_says_how_to_go_on(transformed_root, tmp_path, capsys, monkeypatch):
    def validate_then_sigterm(trainer, *args):
        os.kill(os.getpid(), signal.SIGTERM)  # after the epoch's last step: saved at the epoch boundary
        return {'PSNR': 15.0, 'SSIM': 0.3, 'L1': 0.1}
    monkeypatch.setattr(train, 'validate', validate_then_sigterm)
    assert train.main(tiny(transformed_root, tmp_path, 'end', '--n_epochs', '3', '--n_epochs_decay', '0')) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (f'saved {tmp_path / "end"}/latest.pt (end of epoch 1); '
                                                        'continue with --resume')
    assert torch.load(tmp_path / 'end' / 'latest.pt', weights_only=True)['epoch'] == 1


def test_logged_losses_are_means_over_log_freq_iterations_across_epochs(transformed_root, tmp_path):
    common = ('--n_epochs', '3', '--n_epochs_decay', '0')  # 5 iterations per epoch: intervals of 4 span epochs
    train.main(tiny(transformed_root, tmp_path, 'every', *common))
    train.main(tiny(transformed_root, tmp_path, 'fours', *common, '--log_freq', '4'))
    every = [e.value for e in events(tmp_path / 'every').Scalars('loss/G_L1')]
    fours = events(tmp_path / 'fours').Scalars('loss/G_L1')
    # and at the end the 3 steps since the last log step (they were dropped: the curves ended at 12 of 15)
    assert [e.step for e in fours] == [4, 8, 12, 15]
    assert [e.value for e in fours] == pytest.approx([np.mean(every[i - 4:i]) for i in (4, 8, 12)] +
                                                     [np.mean(every[12:])], rel=1e-5)


def test_psnr_falling_off_a_cliff_warns_whatever_picks_best_pt(transformed_root, tmp_path, capsys, monkeypatch):
    # the seed's collapse canary: 2 dB below the best PSNR is noise, 4 dB (> --psnr_drop_warn 3) is a warning
    scripted = iter([{'PSNR': 20.0, 'SSIM': 0.3, 'L1': 0.10}, {'PSNR': 21.0, 'SSIM': 0.3, 'L1': 0.09},
                     {'PSNR': 19.0, 'SSIM': 0.3, 'L1': 0.08}, {'PSNR': 17.0, 'SSIM': 0.3, 'L1': 0.07}])
    monkeypatch.setattr(train, 'validate', lambda *args: next(scripted))
    train.main(tiny(transformed_root, tmp_path, 'cliff', '--best_metric', 'L1', '--n_epochs', '4',
                    '--n_epochs_decay', '0'))
    warnings = [line for line in capsys.readouterr().err.splitlines() if 'warning' in line]
    assert warnings == ['warning: val PSNR 17.00 dB is 4.0 dB below its best (21.00 at epoch 2); the run may be '
                        'collapsing (the seed saw this with --lr 2e-3): consider a lower --lr']


@pytest.mark.parametrize('gan_mode', ['lsgan', 'hinge'])
def test_gan_modes_train(transformed_root, tmp_path, gan_mode):
    train.main(tiny(transformed_root, tmp_path, gan_mode, '--gan_mode', gan_mode, '--n_epochs', '1',
                    '--n_epochs_decay', '0', '--batch_size', '2', '--lr_policy', 'plateau'))
    losses = [e.value for e in events(tmp_path / gan_mode).Scalars('loss/D_real')]
    assert losses and all(np.isfinite(losses))


def test_vgg_content_loss_with_local_weights(transformed_root, tmp_path):
    import torchvision
    weights = tmp_path / 'vgg_features.pth'
    torch.save(torchvision.models.vgg19().features[:21].state_dict(), weights)  # stops before relu5_1
    with pytest.raises(UserError, match='--vgg_weights: .* is not a torchvision vgg19 state_dict'):
        # relu5_1 (layer 29) is missing from this file: refused, not silently random
        train.main(tiny(transformed_root, tmp_path, 'vgg_bad', '--content_loss', 'l1+vgg', '--lambda_VGG', '10',
                        '--vgg_weights', str(weights), '--n_epochs', '1', '--n_epochs_decay', '0'))
    torch.save(torchvision.models.vgg19().features.state_dict(), weights)
    train.main(tiny(transformed_root, tmp_path, 'vgg', '--content_loss', 'l1+vgg', '--lambda_VGG', '10',
                    '--vgg_weights', str(weights), '--n_epochs', '1', '--n_epochs_decay', '0'))
    vgg = [e.value for e in events(tmp_path / 'vgg').Scalars('loss/G_VGG')]
    assert vgg and all(v > 0 for v in vgg)
    for name, lambda_L1 in (('vgg_only', '100'), ('vgg_only_b', '1')):
        train.main(tiny(transformed_root, tmp_path, name, '--content_loss', 'vgg', '--lambda_VGG', '10', '--lambda_L1',
                        lambda_L1, '--vgg_weights', str(weights), '--n_epochs', '1', '--n_epochs_decay', '0'))
    l1 = [e.value for e in events(tmp_path / 'vgg_only').Scalars('loss/G_L1')]
    assert l1 and all(v > 0 for v in l1)  # logged as a flat 0, which read as a perfect reconstruction
    assert_same_weights(generator_weights(tmp_path / 'vgg_only'), generator_weights(tmp_path / 'vgg_only_b'))


def test_vgg_without_weights_is_a_clear_error(transformed_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'empty_hub'))
    line = cli_error(tiny(transformed_root, tmp_path, 'novgg', '--content_loss', 'vgg', '--lambda_VGG', '10',
                          '--n_epochs', '1', '--n_epochs_decay', '0'), capsys)
    assert 'pass --vgg_weights PATH' in line
    assert not os.path.exists(tmp_path / 'novgg')


def test_unused_loss_weight_is_a_warning(transformed_root, tmp_path, capsys):
    assert train.main(tiny(transformed_root, tmp_path, 'warn', '--lambda_VGG', '10', '--lambda_L1', '50',
                           '--n_epochs', '1', '--n_epochs_decay', '0')) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')]
    assert warnings == ['warning: --lambda_VGG 10.0 is unused: --content_loss l1 has no vgg term']
    assert train.main(tiny(transformed_root, tmp_path, 'warn2', '--vgg_weights', 'vgg.pth', '--n_epochs', '1',
                           '--n_epochs_decay', '0')) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')]
    assert warnings == [f'warning: --vgg_weights {os.path.abspath("vgg.pth")} is unused: --content_loss l1 has no '
                        'vgg term']


def test_tensorboard_curves_share_the_iteration_axis_across_a_stale_start_and_resume(transformed_root, tmp_path):
    run = tmp_path / 'tb'
    # an attempt that crashed before its first checkpoint left events (an older file: it sorts first)
    with SummaryWriter(str(run)) as stale:
        stale.add_scalar('val/PSNR', 99.0, 5)
        stale.add_scalar('loss/G_L1', 99.0, 3)
    stale_file, = glob.glob(str(run / 'events.out.*'))
    os.rename(stale_file, run / 'events.out.tfevents.0000000001.crashed')
    train.main(tiny(transformed_root, tmp_path, 'tb', '--n_epochs', '1', '--n_epochs_decay', '2', '--stop_epoch', '1'))
    wait_for_the_next_second()
    train.main(tiny(transformed_root, tmp_path, 'tb', '--resume'))
    acc = events(run)
    loss = acc.Scalars('loss/G_L1')
    assert [e.step for e in loss] == list(range(1, 16))  # 3 epochs of 5: the checkpoint's step 5 kept on resume
    assert 99.0 not in [e.value for e in loss + acc.Scalars('val/PSNR')]
    for tag in ('lr', 'val/PSNR', 'time/epoch_seconds'):
        assert [e.step for e in acc.Scalars(tag)] == [5, 10, 15], tag  # per-epoch tags at the global iteration
    # linear: 1 epoch at 2e-4, then 2 of decay; each point is the rate its epoch trained at
    assert [e.value for e in acc.Scalars('lr')] == pytest.approx([2e-4, 2e-4 * 2 / 3, 2e-4 / 3])


def test_nan_canary_stops_with_advice(transformed_root, tmp_path):
    with pytest.raises(UserError, match=r'NaN/inf\. Start a new --name with a lower --lr'):
        train.main(tiny(transformed_root, tmp_path, 'nan', '--lr', '1e30', '--n_epochs', '3', '--n_epochs_decay', '0'))


@pytest.mark.parametrize('poisoned_epoch, saved', [(2, 'latest.pt holds the last finite state'),
                                                    (1, 'no checkpoint was saved yet')])
def test_nan_weights_behind_finite_losses_are_caught_before_a_save(transformed_root, tmp_path, monkeypatch,
                                                                    poisoned_epoch, saved):
    """An inf gradient in an epoch's last step leaves NaN weights while every loss logged was finite: the run ended
    "done" with val PSNR nan and NaN checkpoints. Nothing is saved from such weights."""
    step = pix2pix_model.Trainer.train_step

    def poisoned(self, mask, real):
        losses = step(self, mask, real)
        if self.epoch + 1 == poisoned_epoch and self.next_batch == 4:  # the epoch's last of 5 steps
            with torch.no_grad():
                next(self.G.parameters()).fill_(float('nan'))
        return losses

    monkeypatch.setattr(pix2pix_model.Trainer, 'train_step', poisoned)
    with pytest.raises(UserError, match=rf'at epoch {poisoned_epoch}, iteration {5 * poisoned_epoch}: the weights of '
                                        rf'G became NaN/inf\. .*; {saved}$'):
        train.main(tiny(transformed_root, tmp_path, 'nan', '--n_epochs', '3', '--n_epochs_decay', '0'))
    latest = tmp_path / 'nan' / 'latest.pt'
    if poisoned_epoch == 1:
        assert not latest.exists()
    else:
        state = torch.load(latest, weights_only=True)
        assert state['epoch'] == 1 and all(torch.isfinite(v).all() for v in state['G'].values())
