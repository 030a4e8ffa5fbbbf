"""transform_dataset.py on tiny Inria-layout and aligned (facades) inputs: tiles as resized pieces of their
sources, --split, --min_building, the notes, warnings and hints for unusual inputs, and re-runs (completed exactly,
finished sources skipped, other options or another --dataroot refused, any number of workers giving the same
arrays). Bad input and options, the memory bound, tile geometry, the val pattern and repairs of damaged or edited
files: tests/test_transform_errors.py.
"""
import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

import transform_dataset
from conftest import DATA
from image_io import resize_image, resize_mask
from utils import UserError, write_json_atomic


def make_inria_dir(root, names=('austin1', 'austin6', 'chicago7'), size=64, seed=0):
    """A tiny Inria-layout folder: RGB TIFF images and LZW single-channel 0/255 masks."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'images'))
    os.makedirs(os.path.join(root, 'gt'))
    for name in names:
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4: size // 2, size // 4: 3 * size // 4] = 255
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        tifffile.imwrite(os.path.join(root, 'images', name + '.tif'), image, photometric='rgb')
        tifffile.imwrite(os.path.join(root, 'gt', name + '.tif'), mask, compression='lzw')
    return str(root)


def run(dataroot, out, *extra):
    transform_dataset.main(['--dataroot', str(dataroot), '--out', str(out), '--workers', '1', '--crop_size', '16',
                            *extra])


def npy_files(out):
    return sorted(glob.glob(os.path.join(str(out), '**', '*.npy'), recursive=True))


def temp_files(out):
    """Temp files of atomic writes: hidden (.name.xyz.tmp), so a plain glob would never see them."""
    return glob.glob(os.path.join(str(out), '**', '*.tmp'), recursive=True, include_hidden=True)


def test_synthetic_tiffs_with_lzw_masks_and_split_2(synthetic_root, tmp_path):
    assert tifffile.TiffFile(glob.glob(os.path.join(synthetic_root, 'gt', '*.tif'))[0]).pages[0].compression == 5  # LZW
    run(synthetic_root, tmp_path, '--size', '40', '--split', '2')
    config = json.load(open(tmp_path / 'transform.json'))
    assert config['split'] == 2 and config['size'] == 40
    n_sources = {split: 0 for split in ('train', 'val')}
    for split in ('train', 'val'):
        manifest = json.load(open(tmp_path / split / 'manifest.json'))
        sources = {t['source'] for t in manifest['tiles']}
        n_sources[split] = len(sources)
        assert len(manifest['tiles']) == 4 * len(sources)
        for tile in manifest['tiles']:
            mask = np.load(tmp_path / split / 'masks' / (tile['name'] + '.npy'))
            image = np.load(tmp_path / split / 'images' / (tile['name'] + '.npy'))
            assert mask.shape == (40, 40) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            assert image.shape == (40, 40, 3) and image.dtype == np.uint8
            assert tile['building_fraction'] == pytest.approx(np.count_nonzero(mask) / mask.size)
            assert tile['name'].endswith(f"_r{tile['tile'][0]}c{tile['tile'][1]}")
    # synthetic names: <city>1 is validation (Inria's 1-5 rule), <city>6.. training
    assert n_sources == {'train': 5, 'val': 5}
    assert all('1_r' in os.path.basename(p) for p in glob.glob(str(tmp_path / 'val' / 'masks' / '*.npy')))


def test_tiles_are_resized_pieces_of_the_source(tmp_path):
    root = make_inria_dir(tmp_path / 'in', names=('austin6',), size=100)
    run(root, tmp_path / 'out', '--size', '25', '--split', '2')
    image = tifffile.imread(os.path.join(root, 'images', 'austin6.tif'))
    mask = tifffile.imread(os.path.join(root, 'gt', 'austin6.tif'))
    got_image = np.load(tmp_path / 'out' / 'train' / 'images' / 'austin6_r1c0.npy')
    got_mask = np.load(tmp_path / 'out' / 'train' / 'masks' / 'austin6_r1c0.npy')
    np.testing.assert_array_equal(got_image, resize_image(image[50:, :50], 25))
    np.testing.assert_array_equal(got_mask, resize_mask(mask[50:, :50], 25))


def test_mask_resize_has_no_grey_edges_and_image_resize_is_antialiased():
    mask = np.zeros((500, 500), np.uint8)
    mask[100:333, 50:260] = 255
    small = resize_mask(mask, 50)
    assert set(np.unique(small)) == {0, 255}
    assert abs(np.count_nonzero(small) / small.size - np.count_nonzero(mask) / mask.size) < 0.01
    # a 1-px checkerboard must average to grey, not alias into stripes
    checker = (np.indices((500, 500)).sum(0) % 2 * 255).astype(np.uint8)
    small_image = resize_image(np.stack([checker] * 3, -1), 50)
    assert np.abs(small_image.astype(int) - 127).max() <= 3


def test_real_inria_samples_with_three_channel_png_masks(tmp_path):
    run(os.path.join(DATA, 'inria_samples'), tmp_path, '--size', '64')
    val = json.load(open(tmp_path / 'val' / 'manifest.json'))['tiles']
    train = json.load(open(tmp_path / 'train' / 'manifest.json'))['tiles']
    # patch names like austin3_45: city index 3 is in Inria's validation split, kitsap8 is not
    assert {t['name'] for t in train} == {'kitsap8_26', 'kitsap8_30'}
    assert len(val) == 8
    mask = np.load(tmp_path / 'val' / 'masks' / 'austin3_45.npy')
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert 0.05 < val[0]['building_fraction'] < 0.6


def manifest_tiles(out):
    return [t for s in ('train', 'val') for t in json.load(open(os.path.join(out, s, 'manifest.json')))['tiles']]


def test_min_building_drops_sparse_tiles_from_the_manifests_and_can_change(tmp_path, capsys):
    run(os.path.join(DATA, 'inria_samples'), tmp_path, '--size', '32', '--split', '2', '--min_building', '0.25')
    tiles = manifest_tiles(tmp_path)
    assert tiles and all(t['building_fraction'] >= 0.25 for t in tiles)
    assert len(tiles) < 40
    assert json.load(open(tmp_path / 'train' / 'manifest.json'))['min_building'] == 0.25  # what picked them
    arrays = {p: open(p, 'rb').read() for p in npy_files(tmp_path)}
    assert len(arrays) == 2 * 40  # every tile is kept on disk, so another threshold needs no decoding
    # Another threshold in the same --out: the sources are not decoded again, only the manifests change.
    capsys.readouterr()
    run(os.path.join(DATA, 'inria_samples'), tmp_path, '--size', '32', '--split', '2', '--min_building', '0')
    printed = capsys.readouterr()
    assert 'resuming: 10 of 10 sources already done' in printed.out
    assert 'transforming' not in printed.err  # no empty progress bar
    assert len(manifest_tiles(tmp_path)) == 40
    assert {p: open(p, 'rb').read() for p in npy_files(tmp_path)} == arrays


def test_records_that_left_out_tiles_are_redone(tmp_path, capsys):
    """Records of version 1 listed only the tiles --min_building kept: such a source is transformed again."""
    run(os.path.join(DATA, 'inria_samples'), tmp_path, '--size', '32')
    record = tmp_path / 'train' / 'sources' / 'kitsap8_26.json'
    old = json.load(open(record))
    json.dump({'source': old['source'], 'tiles': []}, open(record, 'w'))
    capsys.readouterr()
    run(os.path.join(DATA, 'inria_samples'), tmp_path, '--size', '32')
    assert 'resuming: 9 of 10 sources already done' in capsys.readouterr().out
    assert json.load(open(record)) == old
    json.dump(dict(old, version=1), open(record, 'w'))  # every tile listed, but by the old rule
    run(os.path.join(DATA, 'inria_samples'), tmp_path, '--size', '32')
    assert 'resuming: 9 of 10 sources already done' in capsys.readouterr().out


def test_aligned_val_folder_is_preferred_over_test(tmp_path, capsys):
    """The CMP facades download holds train/, val/ and test/: test/ must not silently replace val/."""
    root = tmp_path / 'in'
    for folder, names in (('train', ('1', '2')), ('val', ('3',)), ('test', ('1', '2'))):
        os.makedirs(root / folder)
        for name in names:
            shutil.copy(os.path.join(DATA, 'facades', 'train', name + '.jpg'), root / folder)
    run(root, tmp_path / 'out', '--format', 'aligned', '--size', '16')
    val = json.load(open(tmp_path / 'out' / 'val' / 'manifest.json'))['tiles']
    assert [t['name'] for t in val] == ['3']
    assert 'val/ -> val; test/ left out' in capsys.readouterr().out


def test_a_val_folder_added_after_test_served_as_val_replaces_tests_arrays(tmp_path, capsys):
    """val/1.jpg and test/1.jpg share a name: matched by name only, the val split kept test/'s images."""
    root = tmp_path / 'in'
    for folder, name in (('train', '1'), ('train', '2'), ('test', '3')):
        os.makedirs(root / folder, exist_ok=True)
        shutil.copy(os.path.join(DATA, 'facades', 'train', name + '.jpg'), root / folder / '1.jpg')
    run(root, tmp_path / 'out', '--format', 'aligned', '--size', '16')
    shutil.copytree(root / 'train', root / 'val')  # a val/ image unlike test/'s 1.jpg
    capsys.readouterr()
    run(root, tmp_path / 'out', '--format', 'aligned', '--size', '16')
    assert 'resuming: 1 of 2 sources already done' in capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / 'out' / 'val' / 'images' / '1.npy'),
                          np.load(tmp_path / 'out' / 'train' / 'images' / '1.npy'))


def test_min_building_that_keeps_no_train_tile_is_an_error_and_a_lower_one_goes_on(tmp_path):
    root = make_inria_dir(tmp_path / 'in')  # every mask is 12.5 % building
    with pytest.raises(UserError, match=r'train: --min_building 0\.5 drops all tiles .* 0\.125\); re-run with a lower'):
        run(root, tmp_path / 'out', '--size', '32', '--min_building', '0.5')
    assert not glob.glob(str(tmp_path / 'out' / '*' / 'manifest.json'))
    run(root, tmp_path / 'out', '--size', '32', '--min_building', '0.1')  # the same --out is not locked
    assert len(manifest_tiles(tmp_path / 'out')) == 3


def test_min_building_that_empties_the_val_split_is_a_warning(tmp_path, capsys):
    root = make_inria_dir(tmp_path / 'in')
    tiff = tmp_path / 'in' / 'gt' / 'austin6.tif'  # a train mask with more buildings than the others
    tifffile.imwrite(tiff, np.full((64, 64), 255, np.uint8), compression='lzw')
    run(root, tmp_path / 'out', '--size', '32', '--min_building', '0.5')
    assert f'warning: {tmp_path / "out"}/val: --min_building 0.5 leaves out all 1 tiles' in capsys.readouterr().err
    assert [t['name'] for t in manifest_tiles(tmp_path / 'out')] == ['austin6']


def test_sources_enlarged_to_size_get_a_note(tmp_path, capsys):
    root = make_inria_dir(tmp_path / 'in')
    make_inria_dir(tmp_path / 'big', names=('chicago7',), size=96)
    for sub in ('images', 'gt'):
        os.replace(tmp_path / 'big' / sub / 'chicago7.tif', tmp_path / 'in' / sub / 'chicago7.tif')
    run(root, tmp_path / 'out', '--size', '32')
    assert 'note:' not in capsys.readouterr().out
    run(root, tmp_path / 'out1', '--size', '64')  # 64² sources make tiles of exactly --size: nothing enlarged
    assert 'note:' not in capsys.readouterr().out
    run(root, tmp_path / 'out2', '--size', '40', '--split', '2')  # tiles: 32 px from 64², 48 px from 96²
    assert (f'note: 2 of 3 sources have tiles under --size 40 px, enlarged to it (e.g. '
            f'{os.path.join(root, "images", "austin1.tif")}: 32 px tiles at --split 2)') in capsys.readouterr().out
    with pytest.raises(UserError, match='already holds a dataset made with other options'):
        run(root, tmp_path / 'out', '--size', '40', '--split', '2')
    assert 'note:' not in capsys.readouterr().out  # about a transform that does not happen


def test_an_out_folder_with_glob_characters_in_its_name_keeps_its_settings(tmp_path):
    """Its records went unseen by an unescaped glob: a run with another --size took the arrays as its own."""
    root = make_inria_dir(tmp_path / 'in')
    run(root, tmp_path / 'out[2x2]*?', '--size', '32')
    with pytest.raises(UserError, match=r'out\[2x2\]\*\?: already holds a dataset made with other options'):
        run(root, tmp_path / 'out[2x2]*?', '--size', '40')


def test_sources_that_are_not_square_get_a_note(tmp_path, capsys):
    root = make_inria_dir(tmp_path / 'in')
    image = np.zeros((64, 96, 3), np.uint8)
    tifffile.imwrite(tmp_path / 'in' / 'images' / 'chicago7.tif', image, photometric='rgb')
    tifffile.imwrite(tmp_path / 'in' / 'gt' / 'chicago7.tif', image[..., 0], compression='lzw')
    run(root, tmp_path / 'out', '--size', '32')
    assert (f'note: 1 of 3 sources are not square (e.g. {os.path.join(root, "images", "chicago7.tif")}: 96×64); '
            f'their tiles are stretched to 32²') in capsys.readouterr().out
    for split in ('train', 'val'):  # aligned A|B files: the size of each half
        os.makedirs(tmp_path / 'ab' / split)
        Image.fromarray(np.zeros((40, 96, 3), np.uint8)).save(tmp_path / 'ab' / split / '1.png')
    run(tmp_path / 'ab', tmp_path / 'out_ab', '--size', '32', '--format', 'aligned')
    assert f'{tmp_path / "ab" / "train" / "1.png"}: 48×40 per A|B half)' in capsys.readouterr().out


@pytest.mark.parametrize('dataroot, options, hint', [
    ('facades', [], 'for A|B images side by side (e.g. facades) use --format aligned'),
    ('inria_samples', ['--format', 'aligned'], 'images/ and gt/ are the Inria layout: leave out --format aligned'),
    ('inria_samples/gt', [], f'give the folder that holds both: {os.path.join(DATA, "inria_samples")}'),
    ('inria_samples/gt/', [], f'give the folder that holds both: {os.path.join(DATA, "inria_samples")}'),
])
def test_the_wrong_format_gets_a_hint(tmp_path, dataroot, options, hint):
    with pytest.raises(UserError, match=re.escape(hint)):
        run(os.path.join(DATA, dataroot), tmp_path / 'out', *options)
    assert not os.path.exists(tmp_path / 'out')


def test_no_train_source_is_a_warning_and_makes_a_val_only_dataset(tmp_path, capsys):
    # a held-out set for `test.py --dataroot`: val only, which train.py then refuses in one line
    root = make_inria_dir(tmp_path / 'in', names=('austin1', 'chicago2'))  # both in Inria's validation images
    run(root, tmp_path / 'out', '--size', '32')
    err = capsys.readouterr().err
    assert "warning: " in err and "no source is in the train split (sources are split by --val_pattern" in err
    assert [len(json.load(open(tmp_path / 'out' / s / 'manifest.json'))['tiles']) for s in ('train', 'val')] == [0, 2]


def test_a_folder_beside_images_and_gt_gets_no_hint_to_them(tmp_path):
    root = make_inria_dir(tmp_path / 'data')
    os.makedirs(tmp_path / 'data' / 'facades' / 'train')  # another dataset beside images/ and gt/
    with pytest.raises(UserError, match=re.escape('use --format aligned')):
        run(os.path.join(root, 'facades'), tmp_path / 'out')
    shutil.rmtree(os.path.join(root, 'gt'))  # images/ given, and no gt/ beside it to point to
    with pytest.raises(UserError, match=re.escape(f'{root}/images/images: folder not found (Inria layout needs '
                                                  f'images/ and gt/ in --dataroot); give the folder that holds both, '
                                                  f'but {root} has no gt/ (every image needs its mask)')):
        run(os.path.join(root, 'images'), tmp_path / 'out')


def test_inria_download_folder_gets_a_hint(tmp_path):
    make_inria_dir(tmp_path / 'AerialImageDataset' / 'train')
    with pytest.raises(UserError, match=re.escape(f'give {tmp_path / "AerialImageDataset" / "train"}')):
        run(tmp_path / 'AerialImageDataset', tmp_path / 'out')
    assert not os.path.exists(tmp_path / 'out')


def test_empty_val_split_is_a_warning(tmp_path, capsys):
    run(make_inria_dir(tmp_path / 'in', names=('austin6', 'chicago7')), tmp_path / 'out', '--size', '32')
    err = capsys.readouterr().err
    assert 'warning:' in err and 'no source is in the val split' in err and '--val_pattern' in err
    assert err.count('warning:') == 1  # not a second one about --min_building, which left nothing out
    run(make_inria_dir(tmp_path / 'both'), tmp_path / 'out_both', '--size', '32')  # sources in both splits
    assert 'warning' not in capsys.readouterr().err


@pytest.mark.parametrize('direction', ['BtoA', 'AtoB'])
def test_facades_aligned_format(tmp_path, direction):
    root = os.path.join(DATA, 'facades')
    run(root, tmp_path, '--format', 'aligned', '--direction', direction, '--size', '64')
    train = json.load(open(tmp_path / 'train' / 'manifest.json'))['tiles']
    val = json.load(open(tmp_path / 'val' / 'manifest.json'))['tiles']
    assert len(train) == 4 and len(val) == 2  # facades/test becomes val
    both = np.asarray(Image.open(os.path.join(root, 'train', '1.jpg')))
    mask = np.load(tmp_path / 'train' / 'masks' / '1.npy')
    image = np.load(tmp_path / 'train' / 'images' / '1.npy')
    assert mask.shape == (64, 64, 3)  # colour label map stays 3-channel
    labels, photo = both[:, 256:], both[:, :256]  # BtoA: the right half (labels) is the input
    if direction == 'AtoB':
        labels, photo = photo, labels
    np.testing.assert_array_equal(mask, resize_mask(labels, 64))
    np.testing.assert_array_equal(image, resize_image(photo, 64))


def test_rerun_skips_finished_sources(tmp_path):
    root = make_inria_dir(tmp_path / 'in')
    out = tmp_path / 'out'
    run(root, out, '--size', '32')
    before = {p: os.stat(p).st_mtime_ns for p in npy_files(out)}
    run(root, out, '--size', '32')
    assert {p: os.stat(p).st_mtime_ns for p in npy_files(out)} == before


def test_interrupted_run_is_completed_exactly(tmp_path):
    root = make_inria_dir(tmp_path / 'in')
    clean, out = tmp_path / 'clean', tmp_path / 'out'
    run(root, clean, '--size', '32')
    run(root, out, '--size', '32')
    # simulate a kill: one source lost its record and an array, and a temp file was left mid-write
    os.remove(out / 'train' / 'sources' / 'austin6.json')
    os.remove(out / 'train' / 'images' / 'austin6.npy')
    for folder, name in (('train/images', 'austin6.npy'), ('train', 'manifest.json'), ('.', 'transform.json')):
        (out / folder / f'.{name}.x1c2d3e4.tmp').write_bytes(b'partial')
    untouched = os.stat(out / 'train' / 'images' / 'chicago7.npy').st_mtime_ns
    run(root, out, '--size', '32')
    assert os.stat(out / 'train' / 'images' / 'chicago7.npy').st_mtime_ns == untouched
    assert not temp_files(out)
    assert [os.path.relpath(p, out) for p in npy_files(out)] == [os.path.relpath(p, clean) for p in npy_files(clean)]
    for a, b in zip(npy_files(out), npy_files(clean)):
        np.testing.assert_array_equal(np.load(a), np.load(b))
    assert json.load(open(out / 'train' / 'manifest.json')) == json.load(open(clean / 'train' / 'manifest.json'))


def test_rerun_with_other_options_is_refused(tmp_path):
    root = make_inria_dir(tmp_path / 'in')
    run(root, tmp_path / 'out', '--size', '32')
    with pytest.raises(UserError, match='--size 32'):
        run(root, tmp_path / 'out', '--size', '48')


def test_rerun_with_other_dataroot_is_refused(tmp_path):
    """Sources are skipped by name, so another input folder with the same names would keep the old arrays."""
    first = make_inria_dir(tmp_path / 'first')
    run(first, tmp_path / 'out', '--size', '32')
    with pytest.raises(UserError, match=f'--dataroot {first}'):
        run(make_inria_dir(tmp_path / 'second', seed=1), tmp_path / 'out', '--size', '32')


def test_the_same_input_through_a_symlink_resumes(tmp_path, capsys):
    first = make_inria_dir(tmp_path / 'first')
    run(first, tmp_path / 'out', '--size', '32')
    os.symlink(first, tmp_path / 'link')
    run(tmp_path / 'link', tmp_path / 'out', '--size', '32')
    config = json.load(open(tmp_path / 'out' / 'transform.json'))
    config['dataroot'] = str(tmp_path / 'link')  # as versions that saved the absolute path did
    write_json_atomic(str(tmp_path / 'out' / 'transform.json'), config)
    run(first, tmp_path / 'out', '--size', '32')
    assert capsys.readouterr().out.count('resuming: 3 of 3 sources already done') == 2


def test_input_inside_a_folder_that_out_writes_is_refused(tmp_path):
    root = make_inria_dir(tmp_path / 'data' / 'train')  # --out data would write data/train/images/*.npy there
    with pytest.raises(UserError, match=f'{root}: the input folder is inside {tmp_path / "data" / "train"}, where'):
        run(root, tmp_path / 'data')
    assert sorted(os.listdir(tmp_path / 'data')) == ['train']
    run(root, tmp_path / 'data' / 'arrays')  # beside the input is fine


def test_a_mask_of_the_wrong_depth_is_found_before_any_decoding(tmp_path):
    root = make_inria_dir(tmp_path / 'in')  # chicago7, the last source, gets a 16-bit mask
    tifffile.imwrite(os.path.join(root, 'gt', 'chicago7.tif'), np.zeros((64, 64), np.uint16), compression='lzw')
    with pytest.raises(UserError, match=r'chicago7\.tif: mask must be 8-bit \(uint8\) with values 0/255, got uint16'):
        run(root, tmp_path / 'out')
    assert not os.path.exists(tmp_path / 'out')


def break_input(root, case):
    """Damage a valid Inria folder in one way; return the file name (a regex) the error must mention."""
    images, gt = os.path.join(root, 'images'), os.path.join(root, 'gt')
    if case == 'image without mask':
        os.remove(os.path.join(gt, 'austin6.tif'))
        return 'austin6.tif'
    if case == 'mask without image':
        os.remove(os.path.join(images, 'austin6.tif'))
        return 'austin6.tif'
    if case == 'size mismatch':
        tifffile.imwrite(os.path.join(gt, 'austin6.tif'), np.zeros((32, 64), np.uint8), compression='lzw')
        return 'austin6.tif'
    if case == 'truncated tiff':
        path = os.path.join(gt, 'austin6.tif')
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[: len(data) // 2])
        return 'austin6.tif'
    if case == 'truncated image tiff':
        path = os.path.join(images, 'chicago7.tif')
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[: len(data) - 2000])
        return 'chicago7.tif'
    if case == 'width mismatch':
        tifffile.imwrite(os.path.join(gt, 'austin6.tif'), np.zeros((64, 32), np.uint8), compression='lzw')
        return r'austin6\.tif: mask is 32×64 but its image'
    if case == 'zero-byte file':
        open(os.path.join(images, 'austin6.tif'), 'wb').close()
        return r'austin6\.tif: file is empty'
    if case == 'not an image':
        open(os.path.join(gt, 'austin6.tif'), 'w').write('hello, I am text\n' * 10)
        return 'austin6.tif'
    if case == '16-bit mask':
        tifffile.imwrite(os.path.join(gt, 'austin6.tif'), np.zeros((64, 64), np.uint16))
        return 'austin6.tif'
    if case == 'float mask':
        tifffile.imwrite(os.path.join(gt, 'austin6.tif'), np.zeros((64, 64), np.float32))
        return 'austin6.tif'
    if case == 'non-binary mask':
        tifffile.imwrite(os.path.join(gt, 'austin6.tif'),
                         np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), compression='lzw')
        return 'austin6.tif'
    if case == '16-bit PNG mask':
        os.remove(os.path.join(gt, 'austin6.tif'))
        Image.fromarray(np.zeros((64, 64), np.uint16)).save(os.path.join(gt, 'austin6.png'))
        return r'austin6\.png: mask must be 8-bit'
    if case == 'four-channel PNG image':
        os.remove(os.path.join(images, 'austin6.tif'))
        Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(os.path.join(images, 'austin6.png'))
        return r'austin6\.png: image must have 3 channels'
    if case == 'four-channel image':
        tifffile.imwrite(os.path.join(images, 'austin6.tif'), np.zeros((64, 64, 4), np.uint8), photometric='rgb',
                         extrasamples=['unassalpha'])
        return 'austin6.tif'
    if case == 'grayscale image':
        tifffile.imwrite(os.path.join(images, 'austin6.tif'), np.zeros((64, 64), np.uint8))
        return 'austin6.tif'
    if case == 'two files, one name':
        Image.fromarray(tifffile.imread(os.path.join(images, 'austin6.tif'))).save(os.path.join(images, 'austin6.png'))
        return r'austin6\.png and \S*austin6\.tif'
    raise AssertionError(case)


def test_run_that_finished_no_source_does_not_lock_its_options(tmp_path):
    root = make_inria_dir(tmp_path / 'in', names=('austin6', 'vienna1'))  # austin6 is transformed first
    break_input(root, 'non-binary mask')
    with pytest.raises(UserError, match='tolerance'):
        run(root, tmp_path / 'out', '--size', '32')
    run(root, tmp_path / 'out', '--size', '48', '--mask_tolerance', '1')
    assert json.load(open(tmp_path / 'out' / 'transform.json'))['size'] == 48


def test_raising_mask_tolerance_after_a_refusal_resumes(tmp_path, capsys):
    root = make_inria_dir(tmp_path / 'in', names=('austin1', 'austin6'))  # austin1 finishes before austin6 fails
    break_input(root, 'non-binary mask')
    with pytest.raises(UserError, match='austin6.tif: mask has .*--mask_tolerance'):
        run(root, tmp_path / 'out', '--size', '32')
    run(root, tmp_path / 'out', '--size', '32', '--mask_tolerance', '1')
    assert 'resuming: 1 of 2 sources already done' in capsys.readouterr().out


def test_multiple_workers_give_the_same_arrays(tmp_path):
    root = make_inria_dir(tmp_path / 'in', names=('austin1', 'austin6', 'chicago7', 'vienna9'))
    run(root, tmp_path / 'one', '--size', '32')
    transform_dataset.main(['--dataroot', root, '--out', str(tmp_path / 'two'), '--size', '32', '--workers', '2',
                            '--crop_size', '16'])
    for a, b in zip(npy_files(tmp_path / 'one'), npy_files(tmp_path / 'two')):
        np.testing.assert_array_equal(np.load(a), np.load(b))
