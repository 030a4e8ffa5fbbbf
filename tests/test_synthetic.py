import os
import re

import numpy as np
import pytest
import tifffile

import transform_dataset
from image_io import write_tiff_atomic
from synthetic_inria import (CITIES, make_synthetic_inria, render_aerial_image, synthetic_layout,
                             synthetic_pair, synthetic_tile_names, tile_seed)
from utils import UserError

GEOTIFF_TAGS = (33550, 33922, 34735)  # ModelPixelScale, ModelTiepoint, GeoKeyDirectory


def test_tile_names_round_robin_with_validation_first():
    names = synthetic_tile_names(20)
    assert names[:5] == [f'{c}1' for c in CITIES]
    assert names[5:10] == [f'{c}6' for c in CITIES]
    assert names[-5:] == [f'{c}8' for c in CITIES]
    assert len(set(names)) == 20
    assert synthetic_tile_names(3) == ['austin1', 'chicago1', 'kitsap1']
    # Default validation split "1-5": exactly one tile per city (index 1), the rest >= 6.
    indices = [int(re.search(r'\d+$', n).group()) for n in names]
    assert sum(k <= 5 for k in indices) == 5 and all(k == 1 or k >= 6 for k in indices)


def test_pair_is_deterministic_and_seed_dependent():
    m1, i1 = synthetic_pair(256, seed=3)
    m2, i2 = synthetic_pair(256, seed=3)
    m3, i3 = synthetic_pair(256, seed=4)
    assert np.array_equal(m1, m2) and np.array_equal(i1, i2)
    assert not np.array_equal(i1, i3)
    assert tile_seed(0, 1) == tile_seed(0, 1) != tile_seed(0, 2) != tile_seed(1, 2)
    assert tile_seed(0, 1) != tile_seed(1, 0)  # or --seed 1 would repeat --seed 0's tiles, one place later


@pytest.mark.parametrize('density', [0.0, 0.5, 1.0, None])
def test_pair_dtypes_shapes_values(density):
    mask, image = synthetic_pair(300, seed=1, density=density)
    assert mask.shape == (300, 300) and mask.dtype == np.uint8
    assert image.shape == (300, 300, 3) and image.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    if density != 0.0:
        assert set(np.unique(mask)) == {0, 255}


def test_building_fraction_spans_rural_to_urban():
    fractions = [(synthetic_pair(1000, seed)[0] > 0).mean() for seed in range(20)]
    assert min(fractions) < 0.06 and max(fractions) > 0.35
    assert all(0.005 < f < 0.65 for f in fractions)
    rural = synthetic_layout(np.random.default_rng(0), 1000, 0.0)[0]
    urban = synthetic_layout(np.random.default_rng(0), 1000, 1.0)[0]
    assert 0.003 < (rural > 0).mean() < 0.03 and (urban > 0).mean() > 0.4


@pytest.mark.parametrize('density', [0.0, 0.3, 0.7, 1.0])
def test_no_building_on_road(density):
    n_roads = 0
    for seed in range(8):
        roof_id, road = synthetic_layout(np.random.default_rng(seed), 600, density)
        assert road.shape == roof_id.shape and road.dtype == bool
        assert not (roof_id > 0)[road].any()
        n_roads += road.any()
    assert n_roads >= 4  # the check above is not vacuous


def test_buildings_look_different_from_ground():
    for seed in range(10):
        mask, image = synthetic_pair(500, seed)
        building = mask > 0
        diff = image[building].mean(0) - image[~building].mean(0)
        assert np.linalg.norm(diff) > 25, (seed, diff)


def test_every_roof_colour_differs_from_ground():
    # Per roof colour (roof_id), not just on average: no roof may blend into the ground.
    for seed, density in [(0, 0.2), (1, 0.6), (2, 1.0)]:
        rng = np.random.default_rng(seed)
        roof_id, road = synthetic_layout(rng, 800, density)
        image = render_aerial_image(rng, roof_id, road, density).astype(float)
        ground = image[(roof_id == 0) & ~road].mean(0)
        for rid in np.unique(roof_id[roof_id > 0]):
            assert np.linalg.norm(image[roof_id == rid].mean(0) - ground) > 35, (seed, rid)


def test_shadow_falls_down_right_on_ground():
    mask, image = synthetic_pair(600, seed=5, density=0.5)
    building = mask > 0
    lum = image.astype(float).mean(2)
    below_right = np.zeros_like(building)
    below_right[3:, 3:] = building[:-3, :-3]
    above_left = np.zeros_like(building)
    above_left[:-3, :-3] = building[3:, 3:]
    assert lum[below_right & ~building].mean() < 0.75 * lum[above_left & ~building].mean()


def _read(path):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tags = {code: page.tags[code].value for code in GEOTIFF_TAGS if code in page.tags}
        return page.asarray(), page.compression, page.photometric, tags


def test_make_synthetic_inria_layout_and_formats(tmp_path):
    names = make_synthetic_inria(str(tmp_path), n_tiles=5, size=200, seed=0, progress=False)
    assert names == ['austin1', 'chicago1', 'kitsap1', 'tyrol-w1', 'vienna1']
    assert sorted(os.listdir(tmp_path)) == ['.lock', 'gt', 'images', 'synthetic.json']  # .lock: one maker at a time
    for sub in ('images', 'gt'):  # no temp files left behind
        assert sorted(os.listdir(tmp_path / sub)) == sorted(f'{n}.tif' for n in names)
    for i, name in enumerate(names):
        mask, image = synthetic_pair(200, tile_seed(0, i))
        img, img_comp, img_photo, img_tags = _read(tmp_path / 'images' / f'{name}.tif')
        gt, gt_comp, gt_photo, gt_tags = _read(tmp_path / 'gt' / f'{name}.tif')
        assert img.dtype == np.uint8 and np.array_equal(img, image)
        assert gt.dtype == np.uint8 and gt.shape == (200, 200) and np.array_equal(gt, mask)
        assert img_comp == tifffile.COMPRESSION.NONE and gt_comp == tifffile.COMPRESSION.LZW
        assert img_photo == tifffile.PHOTOMETRIC.RGB
        assert gt_photo == tifffile.PHOTOMETRIC.MINISBLACK
        for tags in (img_tags, gt_tags):
            assert all(code in tags for code in GEOTIFF_TAGS)
            assert tuple(tags[33550]) == (0.3, 0.3, 0.0)
    with tifffile.TiffFile(tmp_path / 'gt' / 'austin1.tif') as tif:
        geo = tif.geotiff_metadata
    assert geo['ProjectedCSTypeGeoKey'] == 26914 and geo['ModelTiepoint'][3] > 0


def test_make_synthetic_inria_is_deterministic_and_prefix_stable(tmp_path):
    a = make_synthetic_inria(str(tmp_path / 'a'), n_tiles=2, size=64, seed=7, progress=False)
    make_synthetic_inria(str(tmp_path / 'b'), n_tiles=6, size=64, seed=7, progress=False)
    make_synthetic_inria(str(tmp_path / 'c'), n_tiles=2, size=64, seed=8, progress=False)
    for name in a:
        for sub in ('images', 'gt'):
            bytes_a = (tmp_path / 'a' / sub / f'{name}.tif').read_bytes()
            assert bytes_a == (tmp_path / 'b' / sub / f'{name}.tif').read_bytes()
            assert bytes_a != (tmp_path / 'c' / sub / f'{name}.tif').read_bytes()


def test_a_folder_that_holds_tiles_is_refused_and_left_as_it_was(tmp_path):
    make_synthetic_inria(str(tmp_path / 'real'), n_tiles=1, size=32, seed=0, progress=False)
    os.remove(tmp_path / 'real' / 'synthetic.json')  # now it stands in for real Inria tiles
    os.remove(tmp_path / 'real' / '.lock')
    before = (tmp_path / 'real' / 'images' / 'austin1.tif').read_bytes()
    with pytest.raises(UserError, match=f'{tmp_path / "real" / "images"}: already holds files; synthetic tiles'):
        make_synthetic_inria(str(tmp_path / 'real'), n_tiles=2, size=32, seed=0, progress=False)
    assert sorted(os.listdir(tmp_path / 'real')) == ['gt', 'images']  # no lock file left in the user's folder
    assert (tmp_path / 'real' / 'images' / 'austin1.tif').read_bytes() == before
    assert sorted(os.listdir(tmp_path / 'real' / 'images')) == ['austin1.tif']
    (tmp_path / 'new' / 'images').mkdir(parents=True)
    (tmp_path / 'new' / 'images' / '.DS_Store').write_bytes(b'')  # a file manager's, in an empty folder
    assert make_synthetic_inria(str(tmp_path / 'new'), n_tiles=1, size=32, seed=0, progress=False) == ['austin1']


def test_a_rerun_completes_a_killed_one_and_other_settings_are_refused(tmp_path):
    make_synthetic_inria(str(tmp_path / 'syn'), n_tiles=3, size=32, seed=0, progress=False)
    complete = {p: p.read_bytes() for p in sorted(tmp_path.glob('syn/*/*.tif'))}
    os.remove(tmp_path / 'syn' / 'gt' / 'kitsap1.tif')  # as a kill between a tile's two files leaves it
    (tmp_path / 'syn' / 'gt' / '.kitsap1.tif.k6p_zh9l.tmp').write_bytes(b'II*\0')  # and the write it cut short
    assert make_synthetic_inria(str(tmp_path / 'syn'), n_tiles=3, size=32, seed=0, progress=False) == ['kitsap1']
    assert {p: p.read_bytes() for p in sorted(tmp_path.glob('syn/*/*.tif'))} == complete
    assert not list(tmp_path.glob('syn/*/.*.tmp'))  # was left for good (a 5000² tile's is up to 75 MB)
    with pytest.raises(UserError, match=r"syn: holds synthetic tiles made with other settings \(--tile_size 32, not "
                                        r"64, --seed 0, not 1\); use a new folder$"):
        make_synthetic_inria(str(tmp_path / 'syn'), n_tiles=3, size=64, seed=1, progress=False)
    with pytest.raises(UserError, match=r"\(--n_tiles 3, not 4\)"):  # the same tiles, but more of them
        make_synthetic_inria(str(tmp_path / 'syn'), n_tiles=4, size=32, seed=0, progress=False)
    (tmp_path / 'syn' / 'synthetic.json').write_text('[32, 0]')  # edited by hand: was an AttributeError
    with pytest.raises(UserError, match=r"syn/synthetic\.json: not a settings record \(a JSON object\); use a new "
                                        r"folder$"):
        make_synthetic_inria(str(tmp_path / 'syn'), n_tiles=3, size=32, seed=0, progress=False)


@pytest.mark.parametrize('options, message', [
    (['--seed', '-1'], '--seed >= 0'),
    (['--tile_size', '8'], '--tile_size >= 16'),
    # transform options were ignored in silence: no arrays made, nothing said
    (['--out', 'arrays', '--size', '72'], r'^--out --size: not used by --make_synthetic, which only writes the tiles; '
                                          r'transform them in a second run \(--dataroot \S+syn\)$'),
])
def test_bad_make_synthetic_options_are_one_line_errors(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        transform_dataset.main(['--make_synthetic', str(tmp_path / 'syn'), *options])
    assert not os.path.exists(tmp_path / 'syn')


def test_make_synthetic_onto_a_file_is_one_line_error(tmp_path):
    (tmp_path / 'afile').write_text('not a folder')
    with pytest.raises(UserError, match=f'{tmp_path / "afile"}: is a file, not a folder; choose another '
                                        f'--make_synthetic'):
        transform_dataset.main(['--make_synthetic', str(tmp_path / 'afile')])
    assert (tmp_path / 'afile').read_text() == 'not a folder'


def test_write_tiff_atomic_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(Exception):
        write_tiff_atomic(str(tmp_path / 'x.tif'), np.zeros((8, 8), np.uint8),
                          compression='no-such-codec')
    assert os.listdir(tmp_path) == []


def test_progress_bar_only_when_asked(tmp_path, capsys):
    make_synthetic_inria(str(tmp_path / 'quiet'), n_tiles=1, size=32, progress=False)
    assert 'synthetic tiles' not in capsys.readouterr().err
    make_synthetic_inria(str(tmp_path / 'loud'), n_tiles=1, size=32, progress=True)
    assert 'synthetic tiles' in capsys.readouterr().err


def test_a_rerun_says_which_tiles_were_already_there(tmp_path, capsys):
    args = ['--make_synthetic', str(tmp_path / 'syn'), '--n_tiles', '2', '--tile_size', '64']
    transform_dataset.main(args)
    os.remove(tmp_path / 'syn' / 'images' / 'chicago1.tif')
    transform_dataset.main(args)
    transform_dataset.main(args)
    where = f'{tmp_path / "syn"}/images and {tmp_path / "syn"}/gt'
    assert capsys.readouterr().out.splitlines() == [f'wrote 2 synthetic tiles to {where}',
                                                    f'wrote 1 of 2 synthetic tiles to {where} (the rest were there)',
                                                    f'all 2 synthetic tiles were already in {where}']
