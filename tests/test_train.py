import json
import os

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from conftest import tiny, write_array_dataset
from utils import UserError


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    return acc


def generator_weights(run_dir, checkpoint='latest.pt'):
    return torch.load(os.path.join(run_dir, checkpoint), map_location='cpu', weights_only=True)['G']


def test_one_epoch_reduces_l1_and_logs_everything(many_tiles_root, tmp_path):
    assert train.main(tiny(many_tiles_root, tmp_path, 'learn', '--n_epochs', '1', '--n_epochs_decay', '0',
                           '--lr', '1e-3', '--n_display', '2')) == 0
    acc = events(tmp_path / 'learn')
    l1 = [e.value for e in acc.Scalars('loss/G_L1')]
    assert len(l1) == 45  # one point per iteration at --log_freq 1
    assert np.mean(l1[-10:]) < 0.7 * np.mean(l1[:10]), l1  # a real learning signal, not just "runs"
    tags = acc.Tags()
    for name in ('loss/G_GAN', 'loss/G_L1', 'loss/G_VGG', 'loss/D_real', 'loss/D_fake', 'lr', 'val/PSNR',
                 'val/SSIM', 'time/epoch_seconds', 'time/images_per_second', 'time/data_share'):
        assert name in tags['scalars'], name
    assert 'val/mask|generated|real' in tags['images']
    image = acc.Images('val/mask|generated|real')[0]
    assert (image.width, image.height) == (3 * 64, 2 * 64)  # mask | generated | real, one row per sample
    assert os.path.isdir(tmp_path / 'learn' / 'hparams')
    config = json.load(open(tmp_path / 'learn' / 'config.json'))
    assert config['netG'] == 'resnet_6blocks' and config['lambda_L1'] == 100.0 and config['input_nc'] == 1


def test_checkpoint_is_weights_only_loadable_with_full_state(transformed_root, tmp_path):
    train.main(tiny(transformed_root, tmp_path, 'ckpt', '--n_epochs', '1', '--n_epochs_decay', '0'))
    state = torch.load(tmp_path / 'ckpt' / 'latest.pt', map_location='cpu', weights_only=True)
    for key in ('G', 'D', 'opt_G', 'opt_D', 'sched_G', 'sched_D', 'epoch', 'iteration', 'rng', 'best_psnr', 'config'):
        assert key in state, key
    assert state['epoch'] == 1 and state['iteration'] == 5
    assert set(state['rng']) == {'python', 'numpy', 'torch', 'cuda'}
    assert os.path.exists(tmp_path / 'ckpt' / 'best.pt')


def test_resume_is_bit_identical(transformed_root, tmp_path):
    common = ['--n_epochs', '2', '--n_epochs_decay', '2', '--save_epoch_freq', '1']
    train.main(tiny(transformed_root, tmp_path, 'straight', *common))
    train.main(tiny(transformed_root, tmp_path, 'split', *common, '--stop_epoch', '2'))
    assert torch.load(tmp_path / 'split' / 'latest.pt', weights_only=True)['epoch'] == 2
    train.main(tiny(transformed_root, tmp_path, 'split', '--resume'))
    straight, resumed = generator_weights(tmp_path / 'straight'), generator_weights(tmp_path / 'split')
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # and the run really moved: epoch 2 and epoch 4 weights differ
    epoch2 = generator_weights(tmp_path / 'straight', 'epoch_2.pt')
    assert any(not torch.equal(epoch2[k], straight[k]) for k in straight)


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
    with pytest.raises((UserError, ValueError)):
        # relu5_1 (layer 29) is missing from this file: refused, not silently random
        train.main(tiny(transformed_root, tmp_path, 'vgg_bad', '--content_loss', 'l1+vgg', '--lambda_VGG', '10',
                        '--vgg_weights', str(weights), '--n_epochs', '1', '--n_epochs_decay', '0'))
    torch.save(torchvision.models.vgg19().features.state_dict(), weights)
    train.main(tiny(transformed_root, tmp_path, 'vgg', '--content_loss', 'l1+vgg', '--lambda_VGG', '10',
                    '--vgg_weights', str(weights), '--n_epochs', '1', '--n_epochs_decay', '0'))
    vgg = [e.value for e in events(tmp_path / 'vgg').Scalars('loss/G_VGG')]
    assert vgg and all(v > 0 for v in vgg)


def test_vgg_without_weights_is_a_clear_error(transformed_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'empty_hub'))
    with pytest.raises(FileNotFoundError, match='--vgg_weights'):
        train.main(tiny(transformed_root, tmp_path, 'novgg', '--content_loss', 'vgg', '--lambda_VGG', '10',
                        '--n_epochs', '1', '--n_epochs_decay', '0'))


def test_nan_canary_stops_with_advice(transformed_root, tmp_path):
    with pytest.raises(UserError, match='NaN/inf.*Lower --lr'):
        train.main(tiny(transformed_root, tmp_path, 'nan', '--lr', '1e30', '--n_epochs', '3', '--n_epochs_decay', '0'))


# ---------------------------------------------------------------- bad input

def test_missing_dataroot(tmp_path):
    with pytest.raises(UserError, match='--dataroot not found'):
        train.main(tiny(tmp_path / 'nope', tmp_path, 'x'))


def test_dataroot_without_val(tmp_path):
    masks = np.zeros((2, 72, 72), np.uint8)
    write_array_dataset(str(tmp_path / 'd'), 'train', masks, np.zeros((2, 72, 72, 3), np.uint8))
    with pytest.raises(UserError, match='no val/ folder'):
        train.main(tiny(tmp_path / 'd', tmp_path, 'x'))


def test_empty_split(tmp_path):
    write_array_dataset(str(tmp_path / 'd'), 'train', [], [])
    write_array_dataset(str(tmp_path / 'd'), 'val', [], [])
    with pytest.raises(UserError, match='holds no samples'):
        train.main(tiny(tmp_path / 'd', tmp_path, 'x'))


def test_batch_larger_than_dataset(transformed_root, tmp_path):
    with pytest.raises(UserError, match='--batch_size 64 is larger than the 5 training samples'):
        train.main(tiny(transformed_root, tmp_path, 'x', '--batch_size', '64'))


def test_unet_needs_matching_crop(transformed_root, tmp_path):
    with pytest.raises(UserError, match='unet_256 needs --crop_size a multiple of 256'):
        train.main(tiny(transformed_root, tmp_path, 'x', '--netG', 'unet_256'))


def test_unknown_netG_is_rejected_by_the_parser(transformed_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny(transformed_root, tmp_path, 'x', '--netG', 'unet_512'))
    assert exit_info.value.code == 2 and "invalid choice: 'unet_512'" in capsys.readouterr().err


def test_resume_without_checkpoint(transformed_root, tmp_path):
    with pytest.raises(UserError, match='nothing to --resume'):
        train.main(tiny(transformed_root, tmp_path, 'never_ran', '--resume'))


def test_resume_with_other_architecture_and_existing_run(transformed_root, tmp_path):
    train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '1', '--n_epochs_decay', '1', '--stop_epoch', '1'))
    before = open(tmp_path / 'run' / 'latest.pt', 'rb').read()
    with pytest.raises(UserError, match='trained with --netG resnet_6blocks'):
        train.main(tiny(transformed_root, tmp_path, 'run', '--resume', '--netG', 'resnet_9blocks'))
    with pytest.raises(UserError, match='already holds a trained run'):
        train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '1'))
    assert open(tmp_path / 'run' / 'latest.pt', 'rb').read() == before
