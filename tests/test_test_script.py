"""Tests for test.py: the four modes and their files, the Python API giving test.py's pixels, seam scores at the
scale generated, GeoTIFF tags, FID/KID, and one-line errors for bad input (generation.py alone:
tests/test_generation.py). One tiny run (ResNet, ngf 8, 64² crops, 1 epoch) is trained once for the module; CPU only.
"""
import argparse
import html.parser
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import generation
import results
import train
from conftest import (DATA, REPO, SmoothNorm, another_process_writing, ramp_mask, script_module,
                      write_array_dataset)
from generation import generate_sliding, generate_tiles, load_generator, run_generator
from image_io import read_image_file, read_mask
from metrics import compute_fid_kid, make_fid_kid, seam_score
from utils import UserError, load_checkpoint

ts = script_module('test.py')

WINDOW = 64  # the run's --crop_size: full mode outputs this size, and it is the sliding window
VAL_SIZE = 72  # transformed_root's array size: tiles and sliding keep it


@pytest.fixture(scope='module')
def run_dir(transformed_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp('runs')
    train.main(['--dataroot', transformed_root, '--name', 'tiny', '--runs_dir', str(runs), '--netG', 'resnet_6blocks',
                '--ngf', '8', '--ndf', '8', '--crop_size', str(WINDOW), '--n_epochs', '1', '--n_epochs_decay', '0',
                '--batch_size', '2', '--log_freq', '1', '--save_epoch_freq', '1'])
    return str(runs / 'tiny')


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

BLOCK = np.zeros((64, 64), np.uint8)
BLOCK[10:30, 12:50] = 255  # one building


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


def test_a_test_py_into_a_results_folder_another_process_writes_stops_before_touching_it(run_dir, tmp_path):
    out = tmp_path / 'res'
    generate(run_dir, out)
    with another_process_writing(out) as pid:
        before = {name: os.path.getmtime(out / name) for name in os.listdir(out)}
        with pytest.raises(UserError, match=rf'res: another process \(pid {pid}\) is writing there; wait for it to '
                                            rf'end, or choose another --results_dir$'):
            ts.main(['--run', run_dir, '--results_dir', str(out), '--mode', 'sliding'])
        assert {name: os.path.getmtime(out / name) for name in os.listdir(out)} == before


def test_a_perfect_copy_stores_psnr_as_null_in_strict_json():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    scores = ts.image_scores(image, image, None, 1.0, argparse.Namespace(scale=1.0))
    assert scores['PSNR'] is None
    json.dumps(scores, allow_nan=False)


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
