"""Tests for test.py: the four modes and their files, the Python API giving test.py's pixels, seam scores at the
scale generated, GeoTIFF tags, FID/KID, mask fidelity and --scale (generation.py alone: tests/test_generation.py;
test.py's one-line errors for bad input: tests/test_test_script_errors.py). Both files use one tiny run (ResNet,
ngf 8, 64² crops, 1 epoch), conftest's run_dir, trained once per session; CPU only.
"""
import argparse
import html.parser
import json
import os
import re
import shutil
import textwrap
import urllib.parse

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import generation
from conftest import DATA, WINDOW, SmoothNorm, ramp_mask, script_module
from generation import generate_sliding, generate_tiles, load_generator
from image_io import read_image_file, read_mask
from metrics import compute_fid_kid, make_fid_kid, seam_score
from utils import UserError, load_checkpoint

ts = script_module('test.py')

VAL_SIZE = 72  # transformed_root's array size: tiles and sliding keep it
BLOCK = np.zeros((64, 64), np.uint8)
BLOCK[10:30, 12:50] = 255  # one building


def generate(run, out, *extra):
    ts.main(['--run', run, '--results_dir', str(out), *extra])
    return json.load(open(os.path.join(out, 'metrics.json')))


def save_mask(path, array):
    Image.fromarray(array).save(path)
    return str(path)


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.rows = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ('img', 'a'):
            self.refs.append(urllib.parse.unquote(attrs['src' if tag == 'img' else 'href']))
        self.rows += tag == 'tr'


# ---------------------------------------------------------------- the modes on the val split

@pytest.mark.parametrize('mode', ts.MODES)
def test_mode_writes_images_html_and_metrics(run_dir, transformed_root, tmp_path, monkeypatch, mode):
    monkeypatch.chdir(tmp_path)  # default --results_dir is relative: results/<run>/<mode>_<epoch>
    ts.main(['--run', run_dir, '--mode', mode])
    out = tmp_path / 'results' / 'tiny' / f'{mode}_latest'
    names = [t['name'] for t in json.load(open(os.path.join(transformed_root, 'val', 'manifest.json')))['tiles']]
    side = WINDOW if mode in ('full', 'crop') else VAL_SIZE
    for name in names:
        generated = np.asarray(Image.open(out / f'Generated-{name}.png'))
        assert generated.shape == (side, side, 3)
        assert np.asarray(Image.open(out / f'OriginalResized-{name}.png')).shape == (side, side, 3)
        mask = np.asarray(Image.open(out / f'MaskResized-{name}.png'))
        assert mask.shape == (side, side) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / f'Grid-{name}.png')).shape == (side, 3 * side, 3)  # mask|fake|real

    metrics = json.load(open(out / 'metrics.json'))
    assert metrics['mode'] == mode and metrics['epoch'] == 'latest' and metrics['trained_epochs'] == 1
    assert metrics['samples'] == len(names) == len(metrics['images'])
    for row in metrics['images']:
        assert set(row['metrics']) >= {'PSNR', 'SSIM', 'L1', 'seam_score'}
        assert all(np.isfinite(v) for v in row['metrics'].values())
    assert metrics['mean']['PSNR'] == pytest.approx(np.mean([r['metrics']['PSNR'] for r in metrics['images']]))

    lines = open(out / 'metrics.csv').read().splitlines()
    header = lines[0].split(',')
    assert header[:3] == ['name', 'height', 'width'] and 'PSNR' in header and 'seam_score' in header
    assert [line.split(',')[0] for line in lines[1:]] == names + ['mean']

    page = Links()
    page.feed(open(out / 'index.html').read())
    assert page.rows == len(names) + 1  # header + one row per image
    assert set(page.refs) >= {f'Generated-{n}.png' for n in names} | {f'OriginalResized-{n}.png' for n in names}
    assert all((out / ref).is_file() for ref in page.refs)
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]


def test_crop_mode_scores_what_train_py_validated(run_dir, tmp_path):
    """--mode crop generates train.py's centre crops of the val split: its means are the run's last val metrics, up
    to the 8-bit rounding of the saved images. (Full mode resizes the 72² arrays to 64²: other pictures.)"""
    validated = load_checkpoint(os.path.join(run_dir, 'latest.pt'))['history'][-1]
    crop = generate(run_dir, tmp_path / 'crop', '--mode', 'crop')
    assert crop['samples'] == 5 and crop['images'][0]['size'] == [WINDOW, WINDOW]
    # measured: 2e-4 dB, 3e-5 and 1e-6 apart; full mode's resized pictures 7e-3 dB, 1.4e-4 and 2.9e-4
    assert crop['mean']['PSNR'] == pytest.approx(validated['PSNR'], abs=1e-3)
    assert crop['mean']['SSIM'] == pytest.approx(validated['SSIM'], abs=1e-4)
    assert crop['mean']['L1'] == pytest.approx(validated['L1'], abs=2e-5)


def test_epoch_choice_and_num_test(run_dir, tmp_path):
    metrics = generate(run_dir, tmp_path / 'a', '--epoch', '01', '--num_test', '2')  # train.py writes epoch_1.pt
    assert metrics['samples'] == 2 and metrics['checkpoint'].endswith(f'{os.sep}epoch_1.pt')
    assert generate(run_dir, tmp_path / 'b', '--epoch', 'best', '--num_test', '1')['checkpoint'].endswith('best.pt')
    assert generate(run_dir, tmp_path / 'c', '--scale', '1', '--num_test', '1')['samples'] == 1  # the default: fine


def test_a_run_given_as_dot_names_its_results_folder_by_the_runs_name(run_dir, tmp_path, monkeypatch):
    """'--run .' wrote results/./full_latest inside the run, '--run ..' results/../full_latest outside results/."""
    shutil.copytree(run_dir, tmp_path / 'mine')
    monkeypatch.chdir(tmp_path / 'mine')
    ts.main(['--run', '.', '--num_test', '1'])
    assert os.path.isfile(tmp_path / 'mine' / 'results' / 'mine' / 'full_latest' / 'metrics.json')


def test_num_test_and_the_notes_at_their_edges_for_mask_files(run_dir, tmp_path, capsys):
    """A building mask twice as wide as tall is no A|B pair (those hold label maps); a mask of exactly one window
    needs no mirrored context around it."""
    (tmp_path / 'masks').mkdir()
    save_mask(tmp_path / 'masks' / 'a.png', BLOCK[:, :32].repeat(4, axis=1))  # 64×128
    save_mask(tmp_path / 'masks' / 'b.png', BLOCK)  # 64×64, one window
    capsys.readouterr()
    assert generate(run_dir, tmp_path / 'out', '--mode', 'sliding', '--masks', str(tmp_path / 'masks'))['samples'] == 2
    assert 'note:' not in capsys.readouterr().out
    assert generate(run_dir, tmp_path / 'one', '--masks', str(tmp_path / 'masks'), '--num_test', '1')['samples'] == 1


def test_a_segmenter_judges_building_masks_only(tmp_path):
    with pytest.raises(UserError, match=r'--segmenter: mask fidelity needs a model of binary building masks'):
        ts.load_segmenter(str(tmp_path / 'never_read.pt'), {'input_nc': 3}, torch.device('cpu'), None)


# ---------------------------------------------------------------- sliding windows

def test_sliding_output_is_exactly_the_input_size(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    masks = [save_mask(tmp_path / 'odd.png', ramp_mask(157, 203, 1)),  # larger than the 64² window
             save_mask(tmp_path / 'small.png', (rng.random((37, 50)) < 0.3).astype(np.uint8) * 255)]  # smaller
    for extra in ([], ['--scale', '0.6', '--overlap', '0.25', '--batch_size', '3']):
        out = tmp_path / f'out{len(extra)}'
        generate(run_dir, out, '--mode', 'sliding', '--masks', *masks, *extra)
        assert np.asarray(Image.open(out / 'Generated-odd.png')).shape == (157, 203, 3)
        assert np.asarray(Image.open(out / 'Generated-small.png')).shape == (37, 50, 3)
        assert np.asarray(Image.open(out / 'MaskResized-odd.png')).shape == (157, 203)
        assert not os.path.exists(out / 'OriginalResized-odd.png')  # raw masks have no ground truth



def test_the_docstring_example_of_the_python_api_runs_as_written(run_dir, tmp_path, monkeypatch):
    code = textwrap.dedent(next(part for part in generation.__doc__.split('\n\n') if part.startswith('    ')))
    assert 'generate_sliding(' in code and 'read_mask(' in code
    monkeypatch.chdir(tmp_path)
    os.makedirs('runs/inria_2x2')
    shutil.copy(os.path.join(run_dir, 'latest.pt'), 'runs/inria_2x2/best.pt')
    os.makedirs('forged')
    tifffile.imwrite('forged/austin1.tif', ramp_mask(100, 140, 0), compression='lzw')
    namespace = {}
    exec(code, namespace)
    assert namespace['image'].shape == (100, 140, 3) and namespace['image'].dtype == np.uint8
    assert namespace['scale'] == pytest.approx(0.3)  # the run's 240² synthetic sources at --size 72
    ts.main(['--run', 'runs/inria_2x2', '--epoch', 'best', '--mode', 'sliding', '--scale', 'train', '--batch_size',
             '16', '--masks', 'forged/austin1.tif', '--results_dir', 'out'])
    np.testing.assert_array_equal(namespace['image'], read_image_file('out/Generated-austin1.tif'))


def test_the_python_api_names_a_mask_read_in_colour(run_dir):
    G, cfg, _ = load_generator(os.path.join(run_dir, 'latest.pt'), torch.device('cpu'))
    rgb = np.repeat(ramp_mask(50, 60, 0)[..., None], 3, 2)  # a mask PNG read with PIL, not read_binary_mask
    for generate_some in (lambda: generate_sliding(G, rgb, cfg['crop_size'], 0.5, 4, torch.device('cpu')),
                          lambda: generate_tiles(G, rgb, 2, cfg['crop_size'], 4, torch.device('cpu'))):
        with pytest.raises(ValueError, match=r'takes 1-channel input \(image_io.read_mask\(path, 1\) .*\(50, 60, 3\)$'):
            generate_some()
    as_function = generate_sliding(lambda x: G(x), rgb[..., 0], cfg['crop_size'], 0.5, 4, torch.device('cpu'))
    assert as_function.shape == (50, 60, 3)  # a plain function stands in for G, as before the check


def test_sliding_scores_far_fewer_seams_than_tiles(run_dir, tmp_path):
    masks = [save_mask(tmp_path / f'ramp{seed}.png', ramp_mask(128, 160, seed)) for seed in range(4)]
    scores = {}
    for mode in ('tiles', 'sliding'):
        metrics = generate(run_dir, tmp_path / mode, '--mode', mode, '--tiles', '2', '--masks', *masks)
        scores[mode] = [row['metrics']['seam_score'] for row in metrics['images']]
    # measured: tiles 1.3-1.9, sliding 1.03-1.11 (a 1-epoch model's output is mostly texture)
    assert np.mean(scores['tiles']) > 1.25, scores  # the tile borders show
    assert np.mean(scores['sliding']) < 1.12, scores  # blending hides the same lines
    assert all(s < t for s, t in zip(scores['sliding'], scores['tiles'])), scores


@pytest.mark.parametrize('mode', ['full', 'crop'])
def test_a_model_size_output_of_a_geotiff_mask_is_a_png(run_dir, tmp_path, mode):
    """full and crop modes output the model's size, off the mask's pixel grid: its geo-referencing would be wrong."""
    tifffile.imwrite(tmp_path / 'geo.tif', ramp_mask(90, 110, 2), compression='lzw', metadata=None)
    generate(run_dir, tmp_path / 'out', '--mode', mode, '--masks', str(tmp_path / 'geo.tif'))
    assert (tmp_path / 'out' / 'Generated-geo.png').is_file() and not (tmp_path / 'out' / 'Generated-geo.tif').exists()


def stored_bytes(page, code):
    page.parent.filehandle.seek(page.tags[code].valueoffset)
    return page.parent.filehandle.read(page.tags[code].count)


# tiles mode wrote a PNG: its output is on the same grid. GDAL writes UTF-8 text; older writers Latin-1, which
# tifffile decodes as cp1252, and trailing spaces, which it strips: both changed GeoAsciiParams' bytes
@pytest.mark.parametrize('mode, citation', [('sliding', 'NAD83 / UTM zone 14N, Zürich|'.encode()),
                                            ('tiles', b'Lambert zone II \xe9tendu|  ')])
def test_geotiff_tags_are_copied(run_dir, tmp_path, mode, citation):
    dt = tifffile.DATATYPE
    tags = [(33550, dt.DOUBLE, 3, (0.3, 0.3, 0.0), True),
            (33922, dt.DOUBLE, 6, (0.0, 0.0, 0.0, 620000.0, 3350000.0, 0.0), True),
            (34735, dt.SHORT, 8, (1, 1, 0, 1, 3072, 0, 1, 26914), True),
            (34737, dt.ASCII, 0, citation, True)]
    mask_only = [(42112, dt.ASCII, 0, b'<GDALMetadata><Item name="STATISTICS_MEAN" sample="0">40</Item>'
                                      b'</GDALMetadata>', True),
                 (42113, dt.ASCII, 0, b'0', True)]  # the mask's nodata: it would hide the image's black pixels
    mask = ramp_mask(90, 110, 2)
    tifffile.imwrite(tmp_path / 'geo.tif', mask, compression='lzw', extratags=tags + mask_only, metadata=None)
    generate(run_dir, tmp_path / 'out', '--mode', mode, '--masks', str(tmp_path / 'geo.tif'))
    with tifffile.TiffFile(tmp_path / 'out' / 'Generated-geo.tif') as tif, \
            tifffile.TiffFile(tmp_path / 'geo.tif') as source:
        page = tif.pages[0]
        assert page.shape == (90, 110, 3) and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE  # zlib
        for code, _, _, value, _ in tags:
            assert page.tags[code].value == source.pages[0].tags[code].value
        assert stored_bytes(page, 34737) == citation + b'\0' == stored_bytes(source.pages[0], 34737)
        assert 42112 not in page.tags and 42113 not in page.tags
    page = Links()
    page.feed(open(tmp_path / 'out' / 'index.html').read())
    assert 'Generated-geo.tif' in page.refs and all((tmp_path / 'out' / ref).is_file() for ref in page.refs)


@pytest.mark.parametrize('failure, message', [
    (ModuleNotFoundError('no torch_fidelity'), 'need the torch-fidelity package'),
    (RuntimeError('invalid load key, x.\nmore'), 'cannot load InceptionV3 weights for FID/KID (invalid load key, x.)'),
])
def test_inception_that_cannot_be_built_stops_the_run(tmp_path, monkeypatch, failure, message):
    import torchmetrics.image.fid

    def fail(**kwargs):
        raise failure
    monkeypatch.setattr(torchmetrics.image.fid, 'FrechetInceptionDistance', fail)
    torch.save({'w': torch.zeros(1)}, tmp_path / 'w.pth')  # loads with weights_only: on to torch-fidelity
    with pytest.raises(UserError, match=re.escape(f'{tmp_path / "w.pth"}: ') + '.*' + re.escape(message)):
        make_fid_kid(str(tmp_path / 'w.pth'), torch.device('cpu'))


class PoolFeatures(torch.nn.Module):
    """Stands in for torch-fidelity's InceptionV3 (not installed here, and its weights are never downloaded)."""
    num_features = 12

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x.float(), 2).flatten(1)


@pytest.mark.filterwarnings('ignore:Metric `Kernel Inception Distance` will save')
def test_fid_and_kid_reach_metrics_json(run_dir, tmp_path, monkeypatch, capsys):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    def fake_fid_kid(path, device):
        fid = FrechetInceptionDistance(feature=PoolFeatures())
        return fid, KernelInceptionDistance(feature=fid.inception, subset_size=1000)
    monkeypatch.setattr(ts, 'make_fid_kid', fake_fid_kid)
    metrics = generate(run_dir, tmp_path / 'out', '--inception_weights', 'unused.pth')
    assert np.isfinite(metrics['FID']) and np.isfinite(metrics['KID'])
    assert 'KID_std' not in metrics  # 5 images: every subset of up to 1000 is the whole set
    assert 'FID/KID on 5 images is unreliable' in capsys.readouterr().out


@pytest.mark.filterwarnings('ignore:Metric `Kernel Inception Distance` will save')
@pytest.mark.parametrize('count, subset_size', [(6, 4), (4, 4), (4, 1000)])
def test_kid_std_is_reported_only_when_its_subsets_differ(count, subset_size, capsys):
    """With count images and subsets of min(subset_size, count), subsets of the whole set gave a KID_std of ~1e-16."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    fid = FrechetInceptionDistance(feature=PoolFeatures())
    kid = KernelInceptionDistance(feature=fid.inception, subsets=20, subset_size=subset_size)
    images = torch.randint(0, 256, (2, count, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for metric in (fid, kid):
        metric.update(images[0], real=True)
        metric.update(images[1], real=False)
    scores = compute_fid_kid((fid, kid), count)
    assert np.isfinite(scores['KID'])
    assert ('KID_std' in scores) == (count > subset_size)
    if 'KID_std' in scores:
        assert scores['KID_std'] > 1e-6


def test_fid_and_kid_of_one_image_are_skipped_with_a_line(capsys):
    assert compute_fid_kid(('FID', 'KID'), 1) == {}  # never computed: one image has no covariance
    assert capsys.readouterr().out == 'FID/KID skipped: 1 image with ground truth; needs at least 2\n'


def test_label_map_models_take_rgb_masks(tmp_path):
    label_map = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(label_map).save(tmp_path / 'labels.png')
    np.testing.assert_array_equal(read_mask(str(tmp_path / 'labels.png'), 3, 0.01), label_map)
    Image.fromarray(label_map).convert('RGBA').save(tmp_path / 'opaque.png')
    np.testing.assert_array_equal(read_mask(str(tmp_path / 'opaque.png'), 3, 0.01), label_map)
    Image.fromarray(np.dstack([label_map, label_map[..., :1]])).save(tmp_path / 'see-through.png')
    with pytest.raises(UserError, match=r'see-through.png: label map has transparent pixels \(alpha channel\)'):
        read_mask(str(tmp_path / 'see-through.png'), 3, 0.01)
    Image.fromarray(label_map[..., 0]).save(tmp_path / 'grey.png')
    with pytest.raises(UserError, match='grey.png: this model takes 3-channel label maps'):
        read_mask(str(tmp_path / 'grey.png'), 3, 0.01)
    tifffile.imwrite(tmp_path / 'deep.tif', label_map.astype(np.uint16) * 257, photometric='rgb')
    with pytest.raises(UserError, match=r'deep.tif: label map must be 8-bit \(uint8\), got uint16'):
        read_mask(str(tmp_path / 'deep.tif'), 3, 0.01)


def test_no_eval_keeps_dropout_on_as_the_official_test_does_and_is_seeded(run_dir, tmp_path):
    """The official test.py leaves G in train mode unless given --eval: the paper's inference, dropout as noise."""
    def generated(out, *extra):
        metrics = generate(run_dir, tmp_path / out, '--num_test', '2', *extra)
        images = [np.asarray(Image.open(tmp_path / out / row['files']['generated'])) for row in metrics['images']]
        return metrics, np.stack(images).astype(int)
    eval_metrics, deterministic = generated('eval')
    train_metrics, noisy = generated('train', '--no_eval')
    _, noisy_again = generated('train_again', '--no_eval')
    assert np.abs(noisy - deterministic).mean() > 1  # the run's resnet_6blocks has dropout in its blocks
    np.testing.assert_array_equal(noisy, noisy_again)
    assert eval_metrics['eval_mode'] and not train_metrics['eval_mode']
    assert 'G in train mode (--no_eval)' in (tmp_path / 'train' / 'index.html').read_text()


def test_raw_aligned_pairs_given_as_label_maps_get_a_note(tmp_path, capsys):
    shutil.copy(os.path.join(DATA, 'facades', 'test', sorted(os.listdir(os.path.join(DATA, 'facades', 'test')))[0]),
                tmp_path / 'pair.jpg')  # photo | label map, 512×256
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(tmp_path / 'label.png')
    opt = argparse.Namespace(masks=[str(tmp_path)], num_test=10, mask_tolerance=0.01)
    inputs = ts.collect_inputs(opt, {'input_nc': 3})
    assert [shape for *_, shape in inputs] == [(256, 256), (256, 512)]
    assert f'note: 1 of 2 --masks (e.g. {tmp_path / "pair.jpg"}) are twice as wide as tall' in capsys.readouterr().out
    ts.collect_inputs(argparse.Namespace(masks=[str(tmp_path / 'label.png')], num_test=10, mask_tolerance=0.01),
                      {'input_nc': 3})
    assert 'note' not in capsys.readouterr().out


# ---------------------------------------------------------------- mask fidelity, --scale and the Python API

def test_mask_fidelity_with_a_segmenter(run_dir, transformed_root, tmp_path, capsys):
    import train_segmenter
    segmenter = tmp_path / 'segmenter.pt'
    train_segmenter.main(['--dataroot', transformed_root, '--out', str(segmenter), '--ngf', '8', '--crop_size', '64',
                          '--batch_size', '1', '--n_epochs', '2', '--lr', '1e-3'])
    capsys.readouterr()
    metrics = generate(run_dir, tmp_path / 'out', '--mode', 'sliding', '--segmenter', str(segmenter))
    for image in metrics['images']:
        for key in ('fidelity_IoU', 'fidelity_F1', 'fidelity_IoU_real', 'fidelity_F1_real'):
            assert 0.0 <= image['metrics'][key] <= 1.0, key
    assert 'fidelity_IoU' in metrics['mean'] and 'fidelity_IoU_real' in metrics['mean']
    assert 'warning' not in capsys.readouterr().err  # both trained on the same arrays
    # a segmenter trained on other data (2×2 tiles where the generator had whole ones) read buildings of another
    # size without a word: its fidelity scores were low for a reason the user could not see
    state = torch.load(segmenter, weights_only=True)
    state['data_scale'] *= 2
    torch.save(state, segmenter)
    generate(run_dir, tmp_path / 'out2', '--mode', 'sliding', '--segmenter', str(segmenter))
    assert (f'warning: {segmenter}: the segmenter was trained on data resized by 0.6, the generator on data resized '
            'by 0.3: it judges buildings at a size it never saw') in capsys.readouterr().err


def test_mask_fidelity_is_judged_at_the_scale_generated(run_dir, tmp_path, monkeypatch):
    """With --scale the segmenter, trained like the generator on the transformed arrays, sees the generated
    image at that scale, not resized back to the input's resolution."""
    seen = []
    monkeypatch.setattr(ts, 'load_segmenter',
                        lambda path, cfg, device, scale: (torch.nn.Conv2d(3, 1, 1), 64, device))
    monkeypatch.setattr(ts, 'mask_fidelity', lambda segmenter, image, mask, batch_size: seen.append(
        (image.shape, mask.shape)) or {'IoU': 1.0, 'F1': 1.0})
    Image.fromarray(ramp_mask(90, 110, 2)).save(tmp_path / 'm.png')
    generate(run_dir, tmp_path / 'out', '--mode', 'sliding', '--scale', '0.5', '--masks', str(tmp_path / 'm.png'),
             '--segmenter', 'seg.pt')
    assert seen == [((45, 55, 3), (45, 55))]
    assert Image.open(tmp_path / 'out' / 'Generated-m.png').size == (110, 90)  # the output keeps the input's size
    seen.clear()  # a val sample (72²) has a real image: the score it aims for is judged at the same scale
    generate(run_dir, tmp_path / 'val', '--mode', 'sliding', '--scale', '0.5', '--segmenter', 'seg.pt', '--num_test',
             '1')
    assert seen == [((36, 36, 3), (36, 36))] * 2  # generated, then real


def test_scaled_sizes_round_a_product_that_floats_put_a_hair_under_a_whole_number():
    assert 100 * 0.29 < 29 and ts.scaled_size((100, 300), 0.29) == (29, 87)
    assert ts.scaled_size((3, 1), 0.1) == (1, 1)  # never an empty side


def test_a_perfect_copy_stores_psnr_as_null_in_strict_json():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    scores = ts.image_scores(image, image, None, 1.0, argparse.Namespace(scale=1.0))
    assert scores['PSNR'] is None
    json.dumps(scores, allow_nan=False)


def test_a_scale_that_shrinks_masks_under_one_window_is_noted(run_dir, tmp_path, capsys):
    """README's --scale 0.114 (for 5000² tiles at --split 2) on 256² forged masks made 29 px masks, generated as
    mirrored padding and blown back up, without a word."""
    capsys.readouterr()
    generate(run_dir, tmp_path / 'a', '--mode', 'sliding', '--num_test', '2')
    assert 'smaller than one' not in capsys.readouterr().out
    generate(run_dir, tmp_path / 'b', '--mode', 'sliding', '--num_test', '2', '--scale', '0.25')
    assert re.search(r'note: 2 of 2 masks are smaller than one 64² window at --scale 0\.25 \(e\.g\. \S+\.npy: '
                     r'72×72 -> 18×18\)', capsys.readouterr().out)


def test_scale_train_generates_source_resolution_masks_at_the_training_scale(run_dir, synthetic_root, tmp_path,
                                                                             capsys):
    """The run trained on 240² synthetic tiles resized to 72: --scale train reads 0.3 from the checkpoint. Left at
    1, a mask at the source resolution gets a note; one at the model's resolution, or an explicit 1, does not."""
    state = torch.load(os.path.join(run_dir, 'latest.pt'), weights_only=True)
    assert state['data_scale'] == pytest.approx(72 / 240)
    source = os.path.join(synthetic_root, 'gt', 'austin1.tif')  # a 240² source tile, LZW TIFF
    capsys.readouterr()
    result = generate(run_dir, tmp_path / 'train', '--mode', 'sliding', '--scale', 'train', '--masks', source)
    assert result['scale'] == pytest.approx(0.3)
    assert '--scale train: 0.3, the factor the training tiles were resized by' in capsys.readouterr().out
    name = os.path.splitext(os.path.basename(source))[0]
    generate(run_dir, tmp_path / 'number', '--mode', 'sliding', '--scale', '0.3', '--masks', source)
    assert (tmp_path / 'train' / f'Generated-{name}.tif').read_bytes() == \
        (tmp_path / 'number' / f'Generated-{name}.tif').read_bytes()
    capsys.readouterr()
    assert generate(run_dir, tmp_path / 'default', '--mode', 'sliding', '--masks', source)['scale'] == 1
    assert re.search(r'note: 1 of 1 masks \(e\.g\. \S+\) are generated at their own resolution \(--scale 1\), where '
                     r'this run trained on tiles resized by 0\.3: for masks at the source', capsys.readouterr().out)
    generate(run_dir, tmp_path / 'one', '--mode', 'sliding', '--scale', '1', '--masks', source)
    small = save_mask(tmp_path / 'small.png', ramp_mask(72, 72, 0))  # the model's resolution: 72 * 0.3 < 64
    generate(run_dir, tmp_path / 'small', '--mode', 'sliding', '--masks', small)
    assert 'generated at their own resolution' not in capsys.readouterr().out


@pytest.mark.parametrize('mode, extra', [('full', []), ('tiles', ['--tiles', '2']),
                                         ('sliding', ['--overlap', '0.25', '--batch_size', '3'])])
def test_the_python_api_gives_test_pys_pixels(run_dir, tmp_path, mode, extra):
    mask = ramp_mask(100, 140, 0)
    save_mask(tmp_path / 'forged.png', mask)
    ts.main(['--run', run_dir, '--mode', mode, '--masks', str(tmp_path / 'forged.png'),
             '--results_dir', str(tmp_path / 'out'), *extra])
    G, cfg, _ = load_generator(os.path.join(run_dir, 'latest.pt'), torch.device('cpu'))
    cpu, size = torch.device('cpu'), cfg['crop_size']
    image = {'full': lambda: generation.generate_full(G, mask, size, cpu),
             'tiles': lambda: generate_tiles(G, mask, 2, size, 8, cpu),
             'sliding': lambda: generate_sliding(G, mask, size, 0.25, 3, cpu)}[mode]()
    np.testing.assert_array_equal(image, read_image_file(str(tmp_path / 'out' / 'Generated-forged.png')))


def test_sliding_mode_scores_its_window_edges_at_the_scale_it_generates():
    """Windows that do not blend (--overlap 0) make seams at their edges, which the --tiles grid misses unless the
    two happen to coincide (here: rows 64 and 128 against the grid's 75, columns 64 and 128 against 85)."""
    cpu = torch.device('cpu')
    for seed, scale in ((0, 1.0), (1, 1.0), (2, 0.5)):
        mask = ramp_mask(round(150 / scale), round(170 / scale), seed, count=round(150 / scale ** 2))
        seams, images = {}, {}
        for overlap in (0.0, 0.5):
            opt = argparse.Namespace(mode='sliding', overlap=overlap, scale=scale, batch_size=4, tiles=2)
            images[overlap], _, seams[overlap] = ts.generate(opt, SmoothNorm(), {'output_nc': 3}, mask, WINDOW, cpu)
            assert images[overlap].shape[:2] == mask.shape
        on_the_grid = seam_score(images[0.0], 2)
        # measured: window edges 7.0-18.5 unblended, 0.8-1.6 blended; the grid's lines 0.9-1.4 (they miss them)
        assert seams[0.0] > 5 and seams[0.5] < 2 and on_the_grid < 2, (seams, on_the_grid)
