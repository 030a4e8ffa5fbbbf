import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import networks
import train_segmenter
from conftest import REPO, assert_same_weights, write_array_dataset
from dataset import center_crop, load_split, to_unit_range
from metrics import building_scores
from utils import CHECKPOINT_FORMAT, UserError, load_checkpoint


# ---------------------------------------------------------------- building_scores

def columns(*cols, size=4):
    """A 1×1×size×size {0, 1} float mask with buildings in the given columns."""
    x = torch.zeros(1, 1, size, size)
    for c in cols:
        x[..., c] = 1
    return x


def scores(pred, mask):
    out = building_scores(pred, mask)
    return out['IoU'].item(), out['F1'].item()


def test_building_scores_exact_values():
    assert scores(columns(0, 1), columns(0, 1)) == (1.0, 1.0)  # perfect
    assert scores(columns(2, 3), columns(0, 1)) == (0.0, 0.0)  # disjoint
    # prediction covers half of the building, nothing else: tp 4, fn 4
    assert scores(columns(0), columns(0, 1)) == pytest.approx((4 / 8, 8 / 12))
    # half of each overlaps: tp 4, fp 4, fn 4
    assert scores(columns(1, 2), columns(0, 1)) == pytest.approx((4 / 12, 8 / 16))
    assert scores(columns(), columns()) == (1.0, 1.0)  # nothing to find, nothing found
    assert scores(columns(0), columns()) == (0.0, 0.0)  # buildings invented on empty ground
    assert scores(columns(), columns(0)) == (0.0, 0.0)  # buildings missed


def test_building_scores_per_image_and_mask_conventions():
    prob = torch.cat([columns(0, 1), columns(2, 3), columns(1, 2)])
    mask01 = torch.cat([columns(0, 1)] * 3)
    expected = building_scores(prob, mask01)
    assert expected['IoU'].shape == (3,) and expected['IoU'].tolist() == pytest.approx([1, 0, 1 / 3])
    for mask in (mask01 * 2 - 1, (mask01 * 255).byte()):  # the repo's [-1, 1] masks, uint8 {0, 255}
        got = building_scores(prob, mask)
        assert torch.equal(got['IoU'], expected['IoU']) and torch.equal(got['F1'], expected['F1'])


def test_building_scores_threshold_and_misuse():
    mask = columns(0)
    assert scores(columns(0) * 0.5, mask) == (0.0, 0.0)  # exactly 0.5 is not > 0.5
    assert scores(columns(0) * 0.51, mask) == (1.0, 1.0)
    assert scores(columns(0) * 0.3, mask) == (0.0, 0.0)
    assert building_scores(columns(0) * 0.3, mask, threshold=0.2)['IoU'].item() == 1.0
    with pytest.raises(ValueError, match=r'\(G\(image\) \+ 1\) / 2'):
        building_scores(columns(0) * 2 - 1, mask)  # the raw tanh output
    with pytest.raises(ValueError, match='differ in shape'):
        building_scores(columns(0), columns(0, size=8))


# ---------------------------------------------------------------- train_segmenter

def seg_args(root, out, *extra):
    return ['--dataroot', str(root), '--out', str(out), '--netG', 'resnet_6blocks', '--ngf', '8',
            '--crop_size', '64', '--batch_size', '1', '--lr', '1e-3', *extra]


@pytest.fixture(scope='module')
def trained(transformed_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('segmenter') / 'seg.pt'
    assert train_segmenter.main(seg_args(transformed_root, out, '--n_epochs', '30')) == 0
    return out


def test_segmenter_beats_trivial_predictor(trained, transformed_root):
    state = load_checkpoint(trained)
    masks, _, _ = load_split(transformed_root, 'val')
    mask = to_unit_range(center_crop(masks, 64))
    everywhere = building_scores(torch.ones_like(mask), mask)
    nowhere = building_scores(torch.zeros_like(mask), mask)
    for key in ('IoU', 'F1'):
        trivial = max(everywhere[key].mean().item(), nowhere[key].mean().item())
        # synthetic roofs are obvious: 30 tiny epochs reach ~0.5-0.7 IoU (seeds 0-4) against ~0.27 for the guess
        assert state['val_real'][key] > trivial + 0.15, (key, state['val_real'], trivial)


def test_the_loss_is_bce_on_the_probability_the_metric_reads():
    """The segmenter is scored on p = (G(image) + 1) / 2; its loss is BCE on that same p, computed from the Tanh's
    input z (p = sigmoid(2z)) so that it stays finite where tanh rounds to ±1."""
    z = torch.linspace(-3, 3, 50).reshape(2, 1, 5, 5)
    mask = torch.where(torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0)) > 0.5, 1.0, -1.0)
    expected = torch.nn.functional.binary_cross_entropy((torch.tanh(z) + 1) / 2, (mask > 0).float())
    assert train_segmenter.segmentation_loss(z, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.isfinite(train_segmenter.segmentation_loss(torch.full((1, 1, 2, 2), 40.0), -torch.ones(1, 1, 2, 2)))


def test_evaluation_reports_the_predict_everywhere_baseline_beside_the_model():
    """The baseline line compares with predicting building everywhere: its IoU is each crop's building fraction."""
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    masks[0, :, :, :2] = 255  # a quarter building
    masks[1, :, :4] = 255  # half
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    nowhere = torch.nn.Conv2d(3, 1, 1)
    torch.nn.init.zeros_(nowhere.weight)
    torch.nn.init.constant_(nowhere.bias, -1.0)  # p = 0 everywhere
    scores, trivial = train_segmenter.evaluate(nowhere, masks, images, 8, torch.device('cpu'))
    assert scores == {'IoU': 0.0, 'F1': 0.0}
    assert trivial['IoU'] == pytest.approx((0.25 + 0.5) / 2) and trivial['F1'] == pytest.approx((0.4 + 2 / 3) / 2)


def test_segmenter_checkpoint_rebuilds_like_a_generator(trained, transformed_root):
    state = load_checkpoint(trained)  # weights_only; refuses files without our format tag
    assert state['format'] == CHECKPOINT_FORMAT and state['role'] == 'segmenter' and state['epoch'] == 30
    config = state['config']
    assert {k: config[k] for k in ('netG', 'input_nc', 'output_nc', 'ngf', 'norm', 'no_dropout', 'crop_size')} == {
        'netG': 'resnet_6blocks', 'input_nc': 3, 'output_nc': 1, 'ngf': 8, 'norm': 'instance', 'no_dropout': True,
        'crop_size': 64}
    # exactly how test.py builds any generator from a checkpoint
    model = networks.define_G(config['netG'], config['input_nc'], config['output_nc'], config['ngf'], config['norm'],
                              not config['no_dropout'], config['init_type'], config['init_gain'], config['upsample'])
    model.load_state_dict(state['G'])
    model.eval()
    masks, images, _ = load_split(transformed_root, 'val')
    mask, image = to_unit_range(center_crop(masks, 64)), to_unit_range(center_crop(images, 64))
    with torch.no_grad():
        prob = (model(image) + 1) / 2
    got = building_scores(prob, mask)
    for key in ('IoU', 'F1'):
        assert got[key].mean().item() == pytest.approx(state['val_real'][key], abs=1e-5)


def test_missing_dataroot_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match='--dataroot not found'):
        train_segmenter.main(seg_args(tmp_path / 'nowhere', tmp_path / 'seg.pt', '--n_epochs', '1'))
    assert not os.path.exists(tmp_path / 'seg.pt')


def test_bad_options_are_user_errors(transformed_root, tmp_path):
    with pytest.raises(UserError, match='--crop_size 64: --netG unet_256 needs a multiple of 256'):
        train_segmenter.main(seg_args(transformed_root, tmp_path / 's.pt', '--netG', 'unet_256'))
    with pytest.raises(UserError, match='--crop_size 128 is larger than the 72² arrays'):
        train_segmenter.main(seg_args(transformed_root, tmp_path / 's.pt', '--crop_size', '128'))
    with pytest.raises(UserError, match='--batch_size 64 is larger than the 5 training samples'):
        train_segmenter.main(seg_args(transformed_root, tmp_path / 's.pt', '--batch_size', '64'))
    with pytest.raises(UserError, match='--out is a folder'):
        train_segmenter.main(seg_args(transformed_root, str(tmp_path / 'new_folder') + os.sep))
    with pytest.raises(UserError, match='--out is a folder'):
        train_segmenter.main(seg_args(transformed_root, tmp_path))
    with pytest.raises(UserError, match=r"^--out '': give the checkpoint file name"):  # was found after training
        train_segmenter.main(seg_args(transformed_root, ''))
    with pytest.raises(UserError, match=r'--seed must be within ±2\*\*40, got 100000000000000'):  # a traceback
        train_segmenter.main(seg_args(transformed_root, tmp_path / 's.pt', '--seed', str(10 ** 14)))
    (tmp_path / 'a_file').write_text('x')
    with pytest.raises(UserError, match=r'a_file: is a file, not a folder; choose another --out'):
        train_segmenter.main(seg_args(transformed_root, tmp_path / 'a_file' / 's.pt'))
    for option in ('--ngf', '--crop_size'):
        with pytest.raises(UserError, match=f'{option} must be >= 1, got 0'):
            train_segmenter.main(seg_args(transformed_root, tmp_path / 's.pt', option, '0'))


def short_run(root, out, *extra):
    """Two epochs of two batches (the 5 samples at --batch_size 2)."""
    return train_segmenter.main(seg_args(root, out, '--n_epochs', '2', '--batch_size', '2', *extra))


def test_each_epoch_draws_its_own_turns_and_flips_and_the_rate_ends_at_0(transformed_root, tmp_path, monkeypatch):
    plans, rates, real_plan = [], [], train_segmenter.EpochPlan
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    real_step = cosine.step

    def recording_plan(n, size, crop, seed, epoch, **augmentations):
        plans.append((epoch, augmentations))
        return real_plan(n, size, crop, seed, epoch, **augmentations)

    def recording_step(scheduler, *args):
        real_step(scheduler, *args)
        rates.append(scheduler.get_last_lr()[0])
    monkeypatch.setattr(train_segmenter, 'EpochPlan', recording_plan)
    monkeypatch.setattr(cosine, 'step', recording_step)
    short_run(transformed_root, tmp_path / 's.pt')
    assert plans == [(0, {'flip': True, 'rotate': True}), (1, {'flip': True, 'rotate': True})]
    assert rates == pytest.approx([1e-3, 5e-4, 0.0])  # at the start, then after each epoch: cosine over --n_epochs


def test_the_same_seed_trains_the_same_weights(transformed_root, tmp_path):
    weights = []
    for out in ('a.pt', 'b.pt'):
        short_run(transformed_root, tmp_path / out)
        weights.append(load_checkpoint(tmp_path / out)['G'])
    assert_same_weights(*weights)


def test_a_save_cut_short_by_a_kill_is_cleared_by_the_next_run_and_only_its_own(transformed_root, tmp_path):
    # a checkpoint-sized temp file per kill piled up beside --out; another file's (a run training there) stays
    for name in ('.a.pt.hk0grri_.tmp', '.latest.pt.k6p_zh9l.tmp'):
        (tmp_path / name).write_bytes(b'PK')
    short_run(transformed_root, tmp_path / 'a.pt')
    assert sorted(name for name in os.listdir(tmp_path) if name.endswith('.tmp')) == ['.latest.pt.k6p_zh9l.tmp']


def test_the_printed_loss_is_the_epochs_mean_and_a_nan_stops_the_run(transformed_root, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(train_segmenter, 'segmentation_loss', lambda z, mask: z.sum() * 0 + 0.25)
    short_run(transformed_root, tmp_path / 's.pt')
    assert capsys.readouterr().out.count('BCE 0.2500') == 2  # each epoch: the mean of its two batches
    monkeypatch.setattr(train_segmenter, 'segmentation_loss', lambda z, mask: z.sum() * float('nan'))
    with pytest.raises(UserError, match=r'segmenter training diverged at epoch 1 \(loss nan\); lower --lr'):
        short_run(transformed_root, tmp_path / 'nan.pt')
    assert not os.path.exists(tmp_path / 'nan.pt')


def test_label_map_masks_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    images = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    for split in ('train', 'val'):
        write_array_dataset(str(tmp_path / 'colour'), split, masks, images)
    with pytest.raises(UserError, match='needs binary building masks'):
        train_segmenter.main(seg_args(tmp_path / 'colour', tmp_path / 's.pt', '--crop_size', '16'))


@pytest.mark.parametrize('val_mask, message', [((2, 16, 16, 3), r'val/masks: 3 channels, but the train masks have 1'),
                                                ((2, 8, 8), r'val/masks: 8×8 arrays, smaller than --crop_size 16')])
def test_a_val_split_that_does_not_match_train_is_refused(tmp_path, val_mask, message):
    """Each failed only in the first validation, after the training epochs."""
    write_array_dataset(str(tmp_path / 'd'), 'train', np.zeros((2, 16, 16), np.uint8),
                        np.zeros((2, 16, 16, 3), np.uint8))
    write_array_dataset(str(tmp_path / 'd'), 'val', np.zeros(val_mask, np.uint8),
                        np.zeros(val_mask[:3] + (3,), np.uint8))
    with pytest.raises(UserError, match=message):
        train_segmenter.main(seg_args(tmp_path / 'd', tmp_path / 's.pt', '--crop_size', '16', '--batch_size', '2'))
    assert not os.path.exists(tmp_path / 's.pt')


def test_cli_reports_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'train_segmenter.py'), '--dataroot',
                             str(tmp_path / 'nowhere')], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'error: {tmp_path / "nowhere"}: --dataroot not found']


def test_an_out_that_is_not_a_segmenter_checkpoint_is_refused_before_training(trained, transformed_root, tmp_path):
    """--out runs/r1/latest.pt (a mistyped path) replaced a training run's checkpoint, and a text file became a zip."""
    generator = tmp_path / 'latest.pt'
    torch.save({'format': CHECKPOINT_FORMAT, 'config': {}, 'G': {}}, generator)  # role: generator by default
    (tmp_path / 'notes.md').write_text('results')
    for path in (generator, tmp_path / 'notes.md'):
        before = path.read_bytes()
        with pytest.raises(UserError, match=rf'{path.name}: exists and is not a segmenter checkpoint; '
                                            'train_segmenter.py replaces only its own: choose another --out$'):
            short_run(transformed_root, path)
        assert path.read_bytes() == before
    mine = tmp_path / 'seg.pt'
    mine.write_bytes(trained.read_bytes())
    assert short_run(transformed_root, mine) == 0  # its own checkpoint: replaced
    assert load_checkpoint(mine)['epoch'] == 2


def test_ctrl_c_says_nothing_was_saved(transformed_root, tmp_path):
    """It said "what was finished is kept": no epoch is saved before the last one ends."""
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'train_segmenter.py'),
                             *seg_args(transformed_root, tmp_path / 's.pt', '--n_epochs', '1000')],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout.readline().startswith('epoch 1/1000')
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130
    assert stderr.splitlines()[-1] == ('interrupted (Ctrl-C): nothing was saved: the segmenter is saved once it has '
                                       'trained every epoch')
    assert not os.path.exists(tmp_path / 's.pt')
