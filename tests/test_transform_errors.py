"""transform_dataset.py's bad input: one line naming the file or option, and no dataset written (damaged, missing
or mismatched sources, bad options, an --out that cannot be a folder, is not writable or lies inside the input);
then a 5000 px tile's peak memory, the tiles of non-square sources and the resize factor each records, the default
--val_pattern, how sources are found, and repairs of damaged or hand-edited files. The rest of transform_dataset.py:
tests/test_transform.py, whose helpers this file shares.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

import transform_dataset
from conftest import DATA, REPO
from dataset import load_split, training_scale
from image_io import resize_image, resize_mask
from synthetic_inria import make_synthetic_inria
from test_transform import break_input, make_inria_dir, manifest_tiles, npy_files, run, temp_files
from utils import UserError, write_json_atomic


# ---------------------------------------------------------------- bad input

BAD_CASES = ['image without mask', 'mask without image', 'size mismatch', 'width mismatch', 'truncated tiff',
             'truncated image tiff', 'zero-byte file', 'not an image', '16-bit mask', '16-bit PNG mask', 'float mask',
             'non-binary mask', 'four-channel image', 'four-channel PNG image', 'grayscale image',
             'two files, one name']
FOUND_BY_DECODING = {'truncated tiff', 'truncated image tiff', 'non-binary mask'}  # the others from names or headers


@pytest.mark.parametrize('case', BAD_CASES)
def test_bad_input_names_the_file_and_writes_no_dataset(tmp_path, case):
    root = make_inria_dir(tmp_path / 'in')
    filename = break_input(root, case)
    with pytest.raises(UserError, match=filename):
        run(root, tmp_path / 'out')
    if case not in FOUND_BY_DECODING:  # found before the output folder is made, not after decoding the sources
        assert not os.path.exists(tmp_path / 'out')
    assert not glob.glob(str(tmp_path / 'out' / '*' / 'manifest.json'))
    assert not temp_files(tmp_path / 'out')
    # whatever was written is complete and marked done, so a fixed re-run resumes cleanly
    for path in npy_files(tmp_path / 'out'):
        np.load(path)


@pytest.mark.parametrize('options, message', [
    (['--dataroot', 'DOES_NOT_EXIST'], 'input folder not found'),
    (['--split', '0'], '--split 0'),
    (['--split', '20'], 'smaller --split'),
    (['--size', '8'], '--size 8: must be between 16 and 8192'),
    (['--size', '100000000'], '--size 100000000: must be between 16 and 8192'),  # a MemoryError traceback
    (['--size', '64', '--crop_size', '128'], '--size 64 is smaller than --crop_size 128'),
    (['--min_building', '2'], '--min_building'),
    (['--mask_tolerance', '-1'], '--mask_tolerance -1.0: must be a fraction between 0 and 1'),
    (['--mask_tolerance', 'nan'], '--mask_tolerance nan: must be a fraction between 0 and 1'),
    (['--format', 'aligned', '--min_building', '0.25'], '--min_building needs binary building masks'),
    (['--val_pattern', '(['], 'not a valid regex'),
    (['--workers', '-5'], '--workers must be >= 1, got -5'),
    (['--crop_size', '0'], '--crop_size must be >= 1, got 0'),
])
def test_bad_options(tmp_path, options, message):
    root = make_inria_dir(tmp_path / 'in')
    args = ['--dataroot', root, '--out', str(tmp_path / 'out'), '--workers', '1', '--crop_size', '8'] + options
    with pytest.raises(UserError, match=message.replace('(', r'\(').replace('[', r'\[')):
        transform_dataset.main(args)


def test_the_largest_split_and_size_are_accepted(tmp_path):
    root = make_inria_dir(tmp_path / 'in')
    for option, value in (('--split', '64'), ('--size', str(transform_dataset.MAX_SIZE))):
        transform_dataset.check_options(transform_dataset.parse_args(['--dataroot', root, '--out', str(tmp_path / 'o'),
                                                                      option, value]))


@pytest.mark.parametrize('options, message', [
    (['--n_tiles', '3'], '^--n_tiles: only used with --make_synthetic DIR$'),  # ignored in silence before
    # ignored, yet recorded: a re-run with it was refused as "made with other options (--direction BtoA)"
    (['--direction', 'AtoB'], r'^--direction only applies to --format aligned \(Inria masks are always the input\)$'),
])
def test_options_that_do_not_apply_to_the_run_are_one_line(tmp_path, options, message):
    root = make_inria_dir(tmp_path / 'in')
    with pytest.raises(UserError, match=message):
        run(root, tmp_path / 'out', '--size', '32', *options)
    assert not os.path.exists(tmp_path / 'out')


def test_an_aligned_image_of_odd_width_is_refused_before_any_output(tmp_path):
    (tmp_path / 'in').mkdir()
    for name, width in (('1', 64), ('2', 65)):
        Image.fromarray(np.zeros((32, width, 3), np.uint8)).save(tmp_path / 'in' / f'{name}.png')
    with pytest.raises(UserError, match=r'2\.png: aligned A\|B image must have an even width, got 65'):
        run(tmp_path / 'in', tmp_path / 'out', '--format', 'aligned', '--size', '16')
    assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('mode, channels', [('L', 1), ('RGBA', 4)])
def test_an_aligned_image_that_is_not_rgb_is_refused_before_any_output(tmp_path, mode, channels):
    (tmp_path / 'in').mkdir()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / 'in' / '1.png')
    Image.new(mode, (64, 32)).save(tmp_path / 'in' / '2.png')
    with pytest.raises(UserError, match=rf'2\.png: image must have 3 channels \(RGB\), got {channels}$'):
        run(tmp_path / 'in', tmp_path / 'out', '--format', 'aligned', '--size', '16')
    assert not os.path.exists(tmp_path / 'out')


def test_a_flat_aligned_folder_is_split_by_val_pattern_and_says_so(tmp_path, capsys):
    (tmp_path / 'in').mkdir()
    for name in ('1', '2'):
        shutil.copy(os.path.join(DATA, 'facades', 'train', name + '.jpg'), tmp_path / 'in')
    run(tmp_path / 'in', tmp_path / 'out', '--format', 'aligned', '--size', '16')  # the default pattern: no val
    assert "no source is in the val split (sources are split by --val_pattern '" in capsys.readouterr().err
    run(tmp_path / 'in', tmp_path / 'out2', '--format', 'aligned', '--size', '16', '--val_pattern', '2')
    assert [t['name'] for t in json.load(open(tmp_path / 'out2' / 'val' / 'manifest.json'))['tiles']] == ['2']


def test_empty_input_dir(tmp_path):
    os.makedirs(tmp_path / 'in' / 'images')
    os.makedirs(tmp_path / 'in' / 'gt')
    with pytest.raises(UserError, match='no images found'):
        run(tmp_path / 'in', tmp_path / 'out')


@pytest.mark.parametrize('out', ['afile', 'afile/sub'])
def test_output_that_cannot_be_a_folder_is_one_clear_error(tmp_path, out):
    root = make_inria_dir(tmp_path / 'in')
    (tmp_path / 'afile').write_text('not a folder')
    with pytest.raises(UserError, match=str(tmp_path / out)):
        run(root, tmp_path / out)
    assert (tmp_path / 'afile').read_text() == 'not a folder'


def test_unwritable_output_is_one_clear_error(tmp_path, monkeypatch):
    def denied(path, obj):  # chmod cannot deny root, who may run the tests
        raise PermissionError(13, 'Permission denied', path)
    monkeypatch.setattr(transform_dataset, 'write_json_atomic', denied)
    with pytest.raises(UserError, match='Permission denied.*transform.json'):
        run(make_inria_dir(tmp_path / 'in'), tmp_path / 'out')


def test_output_inside_input_is_refused(tmp_path):
    root = make_inria_dir(tmp_path / 'in')
    with pytest.raises(UserError, match='inside the input folder'):
        run(root, os.path.join(root, 'arrays'))
    assert not os.path.exists(os.path.join(root, 'arrays'))
    run(root, root + '286', '--size', '32')  # beside it, under a name that starts with the input's


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    root = make_inria_dir(tmp_path / 'in')
    break_input(root, 'size mismatch')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'transform_dataset.py'), '--dataroot', root,
                           '--out', str(tmp_path / 'out'), '--crop_size', '16'], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and 'austin6.tif' in lines[0] and 'Traceback' not in proc.stderr


# ---------------------------------------------------------------- memory, tile geometry, the val pattern, repairs

def peak_rss_mb_of(command):
    """Peak RSS (MB) of a command, measured by a fresh parent so no earlier test's children count."""
    probe = ('import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); '
             'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)')
    out = subprocess.run([sys.executable, '-c', probe, *command], check=True, capture_output=True, text=True)
    return int(out.stdout) / 1024


def test_a_5000px_tile_needs_less_than_4x_its_size_in_ram(tmp_path):
    make_synthetic_inria(str(tmp_path / 'in'), n_tiles=1, size=5000, progress=False)
    tile_mb = (5000 * 5000 * 3 + 5000 * 5000) / 2**20  # decoded image + mask
    baseline = peak_rss_mb_of([sys.executable, '-c', f'import sys; sys.path.insert(0, {REPO!r}); import transform_dataset'])
    peak = peak_rss_mb_of([sys.executable, os.path.join(REPO, 'transform_dataset.py'), '--dataroot',
                           str(tmp_path / 'in'), '--out', str(tmp_path / 'out'), '--workers', '1',
                           '--val_pattern', '^$'])  # the one tile (austin1) in train: a dataset needs train tiles
    print(f'peak {peak:.0f} MB, imports {baseline:.0f} MB, tile {tile_mb:.0f} MB')
    assert peak - baseline < 4 * tile_mb, (peak, baseline)
    assert os.path.exists(tmp_path / 'out' / 'train' / 'images' / 'austin1.npy')


def test_tiles_of_a_non_square_source_pair_up(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / 'in'
    (root / 'images').mkdir(parents=True)
    (root / 'gt').mkdir()
    image = rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)
    mask = np.where(rng.random((60, 100)) < 0.3, 255, 0).astype(np.uint8)
    tifffile.imwrite(root / 'images' / 'austin6.tif', image, photometric='rgb')
    tifffile.imwrite(root / 'gt' / 'austin6.tif', mask, compression='lzw')
    run(root, tmp_path / 'out', '--size', '16', '--split', '2')
    got_image = np.load(tmp_path / 'out' / 'train' / 'images' / 'austin6_r0c1.npy')
    got_mask = np.load(tmp_path / 'out' / 'train' / 'masks' / 'austin6_r0c1.npy')
    np.testing.assert_array_equal(got_image, resize_image(image[0:30, 50:100], 16))  # row 0, column 1
    np.testing.assert_array_equal(got_mask, resize_mask(mask[0:30, 50:100], 16))
    assert [t['scale'] for t in manifest_tiles(tmp_path / 'out') if t['name'] == 'austin6_r0c1'] == [[0.533333, 0.32]]
    assert training_scale(str(tmp_path / 'out')) is None  # 16/30 down, 16/50 across: no one factor for test.py


@pytest.mark.parametrize('split, factors, middle_left, scale', [
    (2, {(0.5, 0.5)}, [0.5, 0.5], 0.5),
    (3, {(0.761905, 0.761905), (0.761905, 0.727273), (0.727273, 0.761905), (0.727273, 0.727273)},
     [0.727273, 0.761905], None)])  # tile r1c0: the 22 px middle row, the 21 px left column
def test_tiles_record_the_factor_their_piece_was_resized_by(tmp_path, split, factors, middle_left, scale):
    """64 px sources at --size 16: halves of 32 px, or thirds of 21, 22 and 21 px (5 % apart: no one factor)."""
    run(make_inria_dir(tmp_path / 'in', size=64), tmp_path / 'out', '--size', '16', '--split', str(split))
    tiles = manifest_tiles(tmp_path / 'out')
    assert {tuple(t['scale']) for t in tiles} == factors
    assert [t['scale'] for t in tiles if t['name'] == 'austin6_r1c0'] == [middle_left]
    assert training_scale(str(tmp_path / 'out')) == scale


def test_data_transformed_before_tiles_recorded_their_factor_has_no_training_scale(tmp_path):
    run(make_inria_dir(tmp_path / 'in', size=64), tmp_path / 'out', '--size', '16', '--split', '2')
    path = tmp_path / 'out' / 'train' / 'manifest.json'
    manifest = json.load(open(path))
    del manifest['tiles'][0]['scale']
    write_json_atomic(str(path), manifest)
    assert training_scale(str(tmp_path / 'out')) is None


def test_mask_resize_marks_a_cell_building_when_at_least_half_of_it_is():
    mask = np.zeros((10, 20), np.uint8)
    mask[:, :3] = 255  # left cell: 30 % building
    mask[:, 10:17] = 255  # right cell: 70 %
    assert resize_mask(mask, (1, 2)).tolist() == [[0, 255]]


def test_default_val_pattern_takes_images_1_to_5_of_each_city(tmp_path):
    names = {'austin1': 'val', 'austin5': 'val', 'austin6': 'train', 'austin10': 'train', 'austin15': 'train',
             'vienna36': 'train', 'tyrol-w3': 'val', 'tyrol-w30': 'train', 'austin3_45': 'val', 'kitsap8_26': 'train'}
    for sub in ('images', 'gt'):
        (tmp_path / sub).mkdir()
        for name in names:
            (tmp_path / sub / f'{name}.tif').write_bytes(b'')
    opt = transform_dataset.parse_args(['--dataroot', str(tmp_path), '--out', str(tmp_path / 'out')])
    assert {stem: split for stem, _, _, split in transform_dataset.find_inria_sources(opt)} == names
    opt.val_pattern = '_4'  # searched anywhere in the stem, not only at its start
    assert [stem for stem, *_, split in transform_dataset.find_inria_sources(opt) if split == 'val'] == ['austin3_45']


def test_sources_are_found_whatever_the_suffix_case_and_hidden_files_are_not(tmp_path):
    """Windows tools write AUSTIN1.TIF; macOS copies leave ._austin1.tif (AppleDouble metadata, not an image)."""
    for sub in ('images', 'gt'):
        (tmp_path / sub).mkdir()
        for name in ('AUSTIN1.TIF', 'austin6.Tif', '._austin6.tif', '.DS_Store'):
            (tmp_path / sub / name).write_bytes(b'')
    opt = transform_dataset.parse_args(['--dataroot', str(tmp_path), '--out', str(tmp_path / 'out')])
    assert [os.path.basename(image) for _, image, *_ in transform_dataset.find_inria_sources(opt)] == [
        'AUSTIN1.TIF', 'austin6.Tif']


@pytest.mark.parametrize('kind', ['images', 'masks'])
def test_a_damaged_tile_is_repaired_as_its_error_says(tmp_path, kind):
    """The error said "re-run transform_dataset.py", which skipped the source (its tiles all exist) and changed
    nothing; deleting the damaged tile first makes the re-run redo that source."""
    root = make_inria_dir(tmp_path / 'inria')
    run(root, tmp_path / 'out', '--size', '32')
    tile = tmp_path / 'out' / 'train' / kind / 'austin6.npy'
    original = np.load(tile)
    tile.write_bytes(tile.read_bytes()[:100])
    with pytest.raises(UserError, match=r'austin6\.npy: unreadable array \(.*\); delete it and re-run '
                                        r'transform_dataset\.py with the same options$'):
        load_split(str(tmp_path / 'out'), 'train')
    os.remove(tile)
    run(root, tmp_path / 'out', '--size', '32')
    assert np.array_equal(np.load(tile), original)
    assert len(load_split(str(tmp_path / 'out'), 'train')[0]) == 2


def test_an_edited_source_is_redone_once_its_record_is_deleted(tmp_path):
    """Sources are matched by name (documented): an edited source is skipped until its record goes."""
    root = make_inria_dir(tmp_path / 'inria')
    run(root, tmp_path / 'out', '--size', '32')
    tifffile.imwrite(os.path.join(root, 'gt', 'austin6.tif'), np.zeros((64, 64), np.uint8), compression='lzw')
    run(root, tmp_path / 'out', '--size', '32')
    tile = tmp_path / 'out' / 'train' / 'masks' / 'austin6.npy'
    assert np.load(tile).any()  # still the old buildings
    os.remove(tmp_path / 'out' / 'train' / 'sources' / 'austin6.json')
    run(root, tmp_path / 'out', '--size', '32')
    assert not np.load(tile).any()


@pytest.mark.parametrize('edited', ['{"version": 3, "tiles": "x"}', '[1, 2]', '"x"',
                                    '{"version": 3, "tiles": []}', '{"version": 3, "tiles": [{"name": "austin6"}]}'])
def test_its_own_files_edited_by_hand_are_redone_or_one_line(tmp_path, edited):
    """A source record with "tiles": "x" was a TypeError traceback, one with no tiles dropped its source silently,
    and transform.json [1] was an AttributeError."""
    root = make_inria_dir(tmp_path / 'inria')
    run(root, tmp_path / 'out', '--size', '32')
    manifest = (tmp_path / 'out' / 'train' / 'manifest.json').read_text()
    record = tmp_path / 'out' / 'train' / 'sources' / 'austin6.json'
    record.write_text(edited)
    run(root, tmp_path / 'out', '--size', '32')  # the source is done again
    assert json.loads(record.read_text())['tiles'][0]['name'] == 'austin6'
    assert (tmp_path / 'out' / 'train' / 'manifest.json').read_text() == manifest
    (tmp_path / 'out' / 'transform.json').write_text('[1]')
    with pytest.raises(UserError, match=r'transform\.json: not a transform config \(a JSON object of options\); '
                                        r'use a new --out$'):
        run(root, tmp_path / 'out', '--size', '32')
