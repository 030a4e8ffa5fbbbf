import argparse
import json
import os
import re

import numpy as np
import pytest
import torch

from conftest import write_array_dataset
import dataset
from dataset import EpochPlan, PairedDataset, augmented_batch, batch_on_device, crop_and_flip, load_split
from utils import UserError


def mask_derived_from_image(rng, n, size):
    """Images with random content whose mask is a pure function of the image (red > 127)."""
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.where(images[..., 0] > 127, 255, 0).astype(np.uint8)
    return masks, images


def test_load_split_shapes_and_channels(transformed_root):
    masks, images, names = load_split(transformed_root, 'train')
    assert masks.shape == (len(names), 1, 72, 72) and masks.dtype == torch.uint8
    assert images.shape == (len(names), 3, 72, 72)


def test_train_items_are_one_channel_masks_in_unit_range(transformed_root):
    ds = PairedDataset(transformed_root, 'train', crop=64, train=True)
    mask, image = ds[0]
    assert mask.shape == (1, 64, 64) and image.shape == (3, 64, 64)
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {-1.0, 1.0}
    assert image.min() >= -1 and image.max() <= 1


@pytest.mark.parametrize('rotate', [False, True])
def test_augmentation_keeps_mask_and_image_aligned(tmp_path, rotate):
    masks, images = mask_derived_from_image(np.random.default_rng(0), 6, 20)
    write_array_dataset(str(tmp_path), 'train', masks, images)
    ds = PairedDataset(str(tmp_path), 'train', crop=12, train=True, rotate=rotate, seed=3)
    seen_rotated = False
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            mask, image = ds[i]
            expected = torch.where(image[0] > (127.5 / 127.5 - 1), 1.0, -1.0)
            assert torch.equal(mask[0], expected)
            # the crop really is a (flipped/rotated) window of the source image
            src = ds.images[ds.plan.order[i]].float() / 127.5 - 1
            found = [torch.equal(image, torch.rot90(w, k, (1, 2)))
                     for w in windows(src, 12) for k in range(4)]
            assert any(found)
            # without --rotate only horizontal flips are allowed (windows() yields w, hflip(w), ...)
            plain_or_hflip = any(torch.equal(image, w) for j, w in enumerate(windows(src, 12)) if j % 4 < 2)
            assert plain_or_hflip or rotate
            seen_rotated |= not plain_or_hflip
    assert seen_rotated == rotate


def windows(src, crop):
    """Every crop×crop window of src and its flips."""
    size = src.shape[-1]
    for top in range(size - crop + 1):
        for left in range(size - crop + 1):
            w = src[:, top:top + crop, left:left + crop]
            yield from (w, w.flip(2), w.flip(1), w.flip(1).flip(2))


def test_epoch_plan_is_a_function_of_seed_and_epoch():
    a, b = EpochPlan(50, 72, 64, seed=1, epoch=3), EpochPlan(50, 72, 64, seed=1, epoch=3)
    assert torch.equal(a.order, b.order) and torch.equal(a.top, b.top) and torch.equal(a.hflip, b.hflip)
    c = EpochPlan(50, 72, 64, seed=1, epoch=4)
    assert not torch.equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(50))


def test_no_flip_with_rotate_turns_without_mirroring():
    # a vertical flip is a horizontal one turned by 180°: --no_flip --rotate must draw neither
    plan = EpochPlan(400, 72, 64, seed=0, epoch=0, flip=False, rotate=True)
    assert not plan.hflip.any() and not plan.vflip.any()
    assert set(plan.quarter_turns.tolist()) == {0, 1, 2, 3}
    plan = EpochPlan(400, 72, 64, seed=0, epoch=0, flip=True, rotate=True)
    assert plan.hflip.any() and plan.vflip.any()


def test_batch_shards_partition_the_global_batch():
    plan = EpochPlan(16, 72, 64, seed=0, epoch=0)
    shards = [plan.batch(1, 8, rank, 2) for rank in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(8, 16))


def test_augmented_batch_matches_single_items(transformed_root):
    ds = PairedDataset(transformed_root, 'train', crop=64, train=True, rotate=True, seed=5)
    masks, images = augmented_batch(ds.masks, ds.images, ds.plan, torch.arange(4), 64)
    for i in range(4):
        m, im = ds[i]
        assert torch.equal(masks[i], m) and torch.equal(images[i], im)


class PlanOnAnotherDevice(EpochPlan):
    """A plan whose device is not the split's, as on a GPU with the split left in RAM. (Moving a plan to cpu:0
    does not do it: a CPU tensor reports plain 'cpu', the split's device.)"""

    @property
    def device(self):
        return torch.device('cpu', 0)


def test_split_in_ram_gives_the_same_batches_as_a_split_on_the_device(transformed_root, monkeypatch):
    copies = []
    real_copy_rows = dataset.copy_rows
    monkeypatch.setattr(dataset, 'copy_rows', lambda *args: copies.append(1) or real_copy_rows(*args))
    ds = PairedDataset(transformed_root, 'train', crop=64, train=True, rotate=True, seed=3)
    on_device = EpochPlan(len(ds), ds.size, 64, seed=3, epoch=2, rotate=True)
    elsewhere = PlanOnAnotherDevice(len(ds), ds.size, 64, seed=3, epoch=2, rotate=True)
    batch_size, world_size = 4, 2
    for index in range(len(ds) // batch_size):
        for rank in range(world_size):
            expected = batch_on_device(ds.masks, ds.images, on_device, index, batch_size, 64, rank, world_size)
            got = batch_on_device(ds.masks, ds.images, elsewhere, index, batch_size, 64, rank, world_size)
            assert got[0].shape == (batch_size // world_size, 1, 64, 64)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert copies  # the path a split in RAM takes: whole samples gathered and copied, then augmented


def test_random_crops_can_start_at_every_offset_including_the_last():
    plan = EpochPlan(2000, 72, 64, seed=0, epoch=0)
    assert set(plan.top.tolist()) == set(range(9)) and set(plan.left.tolist()) == set(range(9))


def test_crop_and_flip_matches_a_per_sample_reference():
    x = torch.randint(0, 256, (64, 2, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plan = EpochPlan(64, 20, 12, seed=1, epoch=0, rotate=True)
    assert set(plan.quarter_turns.tolist()) == {0, 1, 2, 3} and plan.vflip.any() and plan.hflip.any()
    out = crop_and_flip(x, plan.top, plan.left, 12, plan.hflip, plan.vflip, plan.quarter_turns)
    for i in range(64):
        top, left = int(plan.top[i]), int(plan.left[i])
        window = x[i, :, top:top + 12, left:left + 12]
        window = window.flip(1) if plan.vflip[i] else window
        window = window.flip(2) if plan.hflip[i] else window
        assert torch.equal(out[i], torch.rot90(window, int(plan.quarter_turns[i]), (1, 2))), i


@pytest.mark.parametrize('rotate', [False, True])
def test_batches_are_made_in_the_asked_layout_with_the_same_values(transformed_root, rotate):
    """A channels_last batch comes straight from the gather (NHWC): the same pixels as the NCHW batch, with no
    conversion left for the trainer to copy."""
    masks, images, _ = load_split(transformed_root, 'train')
    plan = EpochPlan(len(masks), masks.shape[-1], 64, seed=2, epoch=0, rotate=rotate)
    for index in range(len(masks) // 4):
        nchw = batch_on_device(masks, images, plan, index, 4, 64)
        nhwc = batch_on_device(masks, images, plan, index, 4, 64, memory_format=torch.channels_last)
        assert nchw[1].is_contiguous() and not nchw[1].is_contiguous(memory_format=torch.channels_last)
        assert nhwc[1].is_contiguous(memory_format=torch.channels_last) and not nhwc[1].is_contiguous()
        for a, b in zip(nchw, nhwc):
            assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


def test_a_plan_without_rotation_gives_what_zero_quarter_turns_give():
    x = torch.randint(0, 256, (16, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    plan = EpochPlan(16, 20, 12, seed=4, epoch=0)
    assert not plan.rotate and plan.hflip.any() and not plan.quarter_turns.any()
    params = (plan.top, plan.left, 12, plan.hflip, plan.vflip)
    assert torch.equal(crop_and_flip(x, *params), crop_and_flip(x, *params, plan.quarter_turns))


def test_validation_is_deterministic_centre_crop_or_full_size(transformed_root):
    ds = PairedDataset(transformed_root, 'val', crop=64, train=False)
    m1, i1 = ds[0]
    ds.set_epoch(7)
    m2, i2 = ds[0]
    assert torch.equal(i1, i2) and torch.equal(m1, m2)
    assert torch.equal(i1, ds.images[0, :, 4:68, 4:68].float() / 127.5 - 1)
    full = PairedDataset(transformed_root, 'val', crop=64, train=False, full_size=True)
    assert full[0][1].shape == (3, 72, 72)


def test_empty_split_is_a_clear_error(tmp_path):
    write_array_dataset(str(tmp_path), 'train', [], [])
    with pytest.raises(UserError, match='holds no samples'):
        PairedDataset(str(tmp_path), 'train')


def test_missing_split_and_missing_manifest_entry(tmp_path):
    with pytest.raises(UserError, match='split folder not found; run transform_dataset.py to make val/$'):
        PairedDataset(str(tmp_path), 'val')
    masks, images = mask_derived_from_image(np.random.default_rng(0), 2, 20)
    write_array_dataset(str(tmp_path), 'train', masks, images)
    os.remove(tmp_path / 'train' / 'images' / 's1.npy')
    with pytest.raises(UserError, match=r's1\.npy: listed in the manifest but missing; re-run transform_dataset\.py'):
        PairedDataset(str(tmp_path), 'train', crop=16)
    os.remove(tmp_path / 'train' / 'manifest.json')
    with pytest.raises(UserError, match=r'train/manifest\.json: not found: --dataroot takes the --out folder of '
                                        r'transform_dataset\.py, not the images themselves'):
        load_split(str(tmp_path), 'train')  # e.g. the facades download, whose train/ holds JPEGs
    (tmp_path / 'transform.json').write_text('{}')  # written first: a transform stopped by a bad source
    with pytest.raises(UserError, match=r'train/manifest\.json: not found: transform_dataset\.py has not finished '
                                        r'train/ here; run it again with the same options'):
        load_split(str(tmp_path), 'train')


def test_a_missing_split_says_what_the_folder_given_is(tmp_path):
    """Each said "run transform_dataset.py to make <split>/", which had been run, or would not make it."""
    masks, images = mask_derived_from_image(np.random.default_rng(0), 2, 20)
    write_array_dataset(str(tmp_path / 'arrays'), 'val', masks, images)
    with pytest.raises(UserError, match=re.escape(f'val/val: split folder not found; {tmp_path / "arrays" / "val"} '
                                                  f'is itself a split: give its parent, {tmp_path / "arrays"}')):
        load_split(str(tmp_path / 'arrays' / 'val'), 'val')
    with pytest.raises(UserError, match=re.escape('arrays/test: split folder not found; transform_dataset.py makes '
                                                  f'train/ and val/ only; {tmp_path / "arrays"} holds val/')):
        load_split(str(tmp_path / 'arrays'), 'test')  # facades' test/ became val/
    os.makedirs(tmp_path / 'inria' / 'gt')
    with pytest.raises(UserError, match=r'inria/val: split folder not found; raw Inria-layout images: transform them '):
        load_split(str(tmp_path / 'inria'), 'val')


def test_arrays_of_two_sizes_name_the_odd_file(tmp_path):
    masks, images = mask_derived_from_image(np.random.default_rng(0), 2, 20)
    write_array_dataset(str(tmp_path), 'train', masks, images)
    np.save(tmp_path / 'train' / 'images' / 's1.npy', np.zeros((24, 24, 3), np.uint8))  # from another --size
    with pytest.raises(UserError, match=r'train/images/s1\.npy: shape \(24, 24, 3\), but s0\.npy is \(20, 20, 3\)'):
        load_split(str(tmp_path), 'train')


@pytest.mark.parametrize('image_shape', [(24, 24, 3), (20, 20, 4), (20, 20)])
def test_masks_and_images_that_do_not_pair_up_are_one_line(tmp_path, image_shape):
    """Every image of its size, but not the masks' size (or not RGB): hand-made arrays, refused on loading. Grey
    images were an IndexError traceback."""
    masks, _ = mask_derived_from_image(np.random.default_rng(0), 2, 20)
    write_array_dataset(str(tmp_path), 'train', masks, [np.zeros(image_shape, np.uint8)] * 2)
    with pytest.raises(UserError, match=re.escape(f'train: masks (20, 20, 1) and images {image_shape} do not pair up')):
        load_split(str(tmp_path), 'train')


@pytest.mark.parametrize('channels', [2, 4])
def test_masks_of_neither_one_nor_three_channels_are_one_line(tmp_path, channels):
    """2-channel masks trained a whole epoch, then the first image grid was a traceback."""
    write_array_dataset(str(tmp_path), 'train', [np.zeros((20, 20, channels), np.uint8)] * 2,
                        [np.zeros((20, 20, 3), np.uint8)] * 2)
    with pytest.raises(UserError, match=re.escape(f'{tmp_path / "train"}/masks: {channels} channels; masks are '
                                                  'building masks (1 channel) or label maps (3)')):
        load_split(str(tmp_path), 'train')


def test_training_arrays_that_are_not_square_are_one_line(tmp_path):
    """Crops are drawn over the width: 20×24 arrays took --crop_size 22 and failed in the first batch."""
    write_array_dataset(str(tmp_path), 'train', [np.zeros((20, 24), np.uint8)] * 2,
                        [np.zeros((20, 24, 3), np.uint8)] * 2)
    masks = load_split(str(tmp_path), 'train')[0]
    message = re.escape(f'{tmp_path / "train"}: 20×24 arrays, but training crops from square ones; re-run '
                        'transform_dataset.py into a new --out')
    with pytest.raises(UserError, match=message):
        dataset.check_crop_and_batch_fit(masks, argparse.Namespace(crop_size=16, batch_size=1, dataroot=str(tmp_path)))
    with pytest.raises(UserError, match=message):
        PairedDataset(str(tmp_path), 'train', crop=16)
    assert PairedDataset(str(tmp_path), 'train', crop=16, train=False)[0][0].shape == (1, 16, 16)  # centre crops


def test_crop_larger_than_arrays(tmp_path):
    masks, images = mask_derived_from_image(np.random.default_rng(0), 2, 20)
    write_array_dataset(str(tmp_path), 'train', masks, images)
    with pytest.raises(UserError, match='--size >= 32'):
        PairedDataset(str(tmp_path), 'train', crop=32)


@pytest.mark.parametrize('manifest', [{'tiles': [{'name': 5}]}, {'tiles': None}, [1, 2, 3], 'hello',
                                      {'tiles': [{'source': 'a.tif'}]}])
def test_a_manifest_edited_by_hand_is_one_line(tmp_path, manifest):
    """Each of these was a TypeError or AttributeError traceback."""
    masks, images = mask_derived_from_image(np.random.default_rng(0), 2, 20)
    write_array_dataset(str(tmp_path), 'train', masks, images)
    (tmp_path / 'train' / 'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r'train/manifest\.json: malformed manifest \(not a list of tiles with '
                                        r'names\); re-run transform_dataset\.py with the same options$'):
        load_split(str(tmp_path), 'train')


@pytest.mark.parametrize('damage, message', [
    (lambda path: np.save(path, np.zeros((20, 20, 3), np.float32)), 'expected uint8 array, got float32'),
    (lambda path: open(path, 'wb').close(), 'unreadable array'),  # EOFError
    (lambda path: path.write_bytes(path.read_bytes()[:60]), 'unreadable array'),  # inside the header
    (lambda path: path.write_bytes(path.read_bytes()[:-100]), 'unreadable array'),  # short of data
])
def test_a_damaged_array_is_one_line_naming_it(tmp_path, damage, message):
    masks, images = mask_derived_from_image(np.random.default_rng(0), 2, 20)
    write_array_dataset(str(tmp_path), 'train', masks, images)
    damage(tmp_path / 'train' / 'images' / 's1.npy')
    with pytest.raises(UserError, match=re.escape(f'images{os.sep}s1.npy: {message}')):
        load_split(str(tmp_path), 'train')


@pytest.mark.parametrize('scales, expected', [
    ([[0.1, 0.1], [0.1, 0.1015]], 0.100375),  # within 2 %: their mean
    ([[0.1, 0.1], [0.1, 0.105]], None),  # sources of different sizes: no one factor
    ([[0.1, 0.1], [0.1, 0]], None), ([[0.1, 0.1], ['0.1', 0.1]], None), ([[0.1, 0.1], []], None),  # edited by hand
])
def test_the_training_scale_is_one_factor_shared_by_every_tile(tmp_path, scales, expected):
    (tmp_path / 'train').mkdir()
    tiles = [{'name': f's{i}', 'scale': scale} for i, scale in enumerate(scales)]
    (tmp_path / 'train' / 'manifest.json').write_text(json.dumps({'tiles': tiles}))
    assert dataset.training_scale(str(tmp_path)) == expected


def test_crops_and_batches_fit_up_to_the_arrays_and_samples():
    train_masks = torch.zeros(3, 1, 20, 20, dtype=torch.uint8)
    dataset.check_crop_and_batch_fit(train_masks, argparse.Namespace(crop_size=20, batch_size=3, dataroot='d'))
    with pytest.raises(UserError, match='--crop_size 21 is larger than the 20² arrays in d'):
        dataset.check_crop_and_batch_fit(train_masks, argparse.Namespace(crop_size=21, batch_size=3, dataroot='d'))
    with pytest.raises(UserError, match='--batch_size 4 is larger than the 3 training samples'):
        dataset.check_crop_and_batch_fit(train_masks, argparse.Namespace(crop_size=20, batch_size=4, dataroot='d'))
    masks = torch.zeros(3, 1, 24, 20, dtype=torch.uint8)  # 3 samples, 24 high, 20 wide: val takes them
    dataset.check_val_fits(masks, masks, argparse.Namespace(crop_size=20, dataroot='d'))
    with pytest.raises(UserError, match=r'24×20 arrays, smaller than --crop_size 21'):  # the narrower side counts
        dataset.check_val_fits(masks, masks, argparse.Namespace(crop_size=21, dataroot='d'))
