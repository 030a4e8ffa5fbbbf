"""Generate aerial images from building masks with a trained run, and score them.

    python test.py --run runs/inria_unet                                   # val split, each mask -> model size
    python test.py --run runs/inria_unet --mode crop                       # train.py's validation, as images
    python test.py --run runs/inria_unet --mode tiles --tiles 2            # the seed's "2x2": shows seams
    python test.py --run runs/inria_unet --mode sliding --masks my_masks/  # full resolution, no seams
    python test.py --run runs/inria_unet --mode sliding --scale train --masks AerialImageDataset/train/gt/vienna1.tif
        # --scale train: at the resolution runs/inria_unet trained at (--size 286 --split 2 tiles: 286/2500 = 0.1144)

Modes: full = the mask resized to the model size (the seed's "fullsize"); tiles = N×N tiles generated apart and
stitched (the seed's "2x2"); sliding = overlapping windows blended smoothly; crop = the centre model-size square of
the mask, not resized (on the val split, what train.py validates on: its metrics are the val curve's, up to the
8-bit rounding of the saved images). Tiles and sliding output exactly the input size (TIFF in, GeoTIFF out).
Output (default results/<run>/<mode>_<epoch>/): Generated-, MaskResized-, OriginalResized- (with ground truth) and
Grid- (mask | generated | real) <name>.png, index.html, metrics.csv, metrics.json (last).
Metrics: PSNR/SSIM/L1 against ground truth, a seam score for every image (≈1 = seamless; see generate),
FID/KID only with --inception_weights.
"""
import argparse
import math
import os
import shutil
import sys

import numpy as np
import torch
from tqdm import tqdm

import networks
from dataset import center_crop, load_split, to_unit_range
from generation import (available_bytes, generate_full, generate_sliding, generate_tiles, load_generator,
                        peak_window_bytes, sliding_plan, window_edges)
from image_io import list_images, read_mask, resize_image, resize_mask
from metrics import building_scores, compute_fid_kid, image_metrics, make_fid_kid, seam_score, seam_score_at
from results import (MAX_NAME_BYTES, check_outputs_spare_inputs, check_results_dir_is_ours, format_score, mean_scores,
                     publish_results, save_outputs, start_staging, write_index_html, write_metrics_csv)
from utils import (ArgumentParser, UserError, amp_enabled, check_counts, check_fractions, counted, first_line,
                   pick_device, run_cli, saved_checkpoints, write_json_atomic, writing_alone)

MODES = ('full', 'tiles', 'sliding', 'crop')


def build_parser():
    p = ArgumentParser(__doc__)
    a = p.add_argument
    a('--run', required=True, help='run folder made by train.py (holds latest.pt, best.pt, epoch_<N>.pt)')
    a('--epoch', default='latest', help="which checkpoint: latest, best (the run's --best_metric) or N (epoch_<N>.pt)")
    a('--mode', default='full', choices=MODES, help='full, tiles, sliding or crop (see above)')
    a('--tiles', type=int, default=2, help='N: tiles mode cuts N×N tiles; full, crop and tiles score seams on this '
                                           'grid (sliding: on its window edges)')
    a('--overlap', type=float, default=None,
      help='sliding: overlap of neighbouring windows, fraction in [0, 1) (default: 0.5)')
    a('--scale', type=scale_option, default=None, metavar='N|train',
      help="sliding: resample the mask by this first, the result is resized back to the input size; 'train': the "
           "factor the run's training tiles were resized by (286/2500 for 5000² tiles at --size 286 --split 2), "
           'for masks at the source data\'s resolution (default: 1, masks at the model\'s resolution)')
    a('--load_size', type=int, default=None, help="model input / window side (default: the run's --crop_size)")
    a('--batch_size', type=int, default=8, help='windows or tiles per forward pass')
    a('--max_memory_gb', type=float, default=None,
      help='memory budget for the up-front check (default: free GPU memory / available RAM)')
    a('--dataroot', default=None, help="transformed dataset with ground truth (default: the run's --dataroot)")
    a('--split', default='val', help='split of --dataroot to generate')
    a('--masks', nargs='+', metavar='PATH', help='raw mask files or folders (TIFF/PNG/JPEG) instead of a split')
    a('--mask_tolerance', type=float, default=0.01, help='fraction of mask pixels allowed to be neither 0 nor 255')
    a('--num_test', type=int, default=None, help='only the first N inputs')
    a('--results_dir', default=None, help='output folder (default: results/<run>/<mode>_<epoch>)')
    p.add_device_option()
    a('--amp', default='auto', choices=('auto', 'on', 'off'),
      help='bf16 autocast for the generator; auto = on for CUDA (on a bf16-capable CPU, on is ~2× faster)')
    a('--no_eval', action='store_true',
      help="keep G in train mode, as the official test.py does without its --eval: the pix2pix paper's inference, "
           'dropout on (seeded) and batch norm on the statistics of each forward pass; default: eval mode')
    a('--inception_weights', default=None,
      help="FID/KID: torch-fidelity's pt_inception-2015-12-05 weights file (never downloaded; "
           'missing or unloadable stops the run; unused with --masks, which have no real images)')
    a('--segmenter', default=None,
      help='segmenter from train_segmenter.py: adds mask fidelity (IoU/F1 of the buildings it finds in the '
           'generated image against the input mask; on real images too, the upper bound)')
    return p


def scale_option(text):
    if text == 'train':
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'train' nor a number") from None


def check_options(opt):
    check_counts(opt, ('tiles', 'batch_size'))
    if opt.load_size is not None:
        check_counts(opt, ('load_size',))
    if opt.overlap is not None and opt.mode != 'sliding':
        raise UserError('--overlap only applies to --mode sliding (the other modes generate without overlap)')
    # options the run would otherwise ignore in silence
    defaults = build_parser()
    if opt.mode == 'sliding' and opt.tiles != defaults.get_default('tiles'):
        raise UserError('--tiles does not apply to --mode sliding (it cuts tiles mode\'s tiles and places full and '
                        'crop\'s seam score; sliding scores its window edges)')
    if opt.masks and opt.split != defaults.get_default('split'):
        raise UserError('--split picks a split of --dataroot; raw --masks have none')
    if opt.mode == 'sliding':
        opt.overlap = 0.5 if opt.overlap is None else opt.overlap
        if not 0 <= opt.overlap < 1:
            raise UserError(f'--overlap {opt.overlap}: must be a fraction in [0, 1)')
    if isinstance(opt.scale, float) and not (math.isfinite(opt.scale) and opt.scale > 0):
        raise UserError(f'--scale {opt.scale}: must be a positive number')
    if opt.scale not in (None, 1) and opt.mode != 'sliding':
        raise UserError('--scale only applies to --mode sliding (full and tiles resize to the model size anyway, '
                        'crop takes the mask as it is)')
    if opt.scale == 'train' and not opt.masks:
        raise UserError("--scale train applies to raw --masks: a transformed split's masks are at the training "
                        'scale already')
    if opt.num_test is not None and opt.num_test < 1:
        raise UserError(f'--num_test must be >= 1, got {opt.num_test}')
    check_fractions(opt, ('mask_tolerance',))
    if opt.max_memory_gb is not None and not opt.max_memory_gb > 0:
        raise UserError(f'--max_memory_gb must be positive, got {opt.max_memory_gb}')
    if opt.masks and opt.dataroot:
        raise UserError('give either --masks (raw masks) or --dataroot (a transformed split), not both')


# ---------------------------------------------------------------- model

def checkpoint_path(run_dir, epoch):
    if os.path.isfile(run_dir):
        raise UserError(f'{run_dir}: --run takes the run folder, not a checkpoint in it (pick one with --epoch '
                        f'latest|best|N)')
    if not os.path.isdir(run_dir):
        raise UserError(f'{run_dir}: run folder not found (--run)')
    if epoch in ('latest', 'best'):
        name = f'{epoch}.pt'
    elif epoch.isdecimal():  # not isdigit(): '²' is a digit that int() refuses
        name = f'epoch_{int(epoch)}.pt'
    else:
        raise UserError(f'--epoch {epoch!r}: use latest, best or an epoch number')
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        available = saved_checkpoints(run_dir)
        if not available and os.path.isfile(os.path.join(run_dir, 'config.json')):  # train.py has started there
            raise UserError(f'{path}: checkpoint not found; {run_dir} holds no checkpoint yet (train.py writes the '
                            f'first at the end of epoch 1, or when stopped)')
        raise UserError(f'{path}: checkpoint not found; {run_dir} holds {", ".join(available) or "no checkpoints"}')
    return path


def check_model_size(cfg, size):
    if not size:
        raise UserError('the checkpoint config has no crop_size; give the model size with --load_size')
    problem = networks.generator_size_problem(cfg['netG'], size)
    if problem:
        raise UserError(f'--load_size {size}: {problem}')


def load_segmenter(path, cfg, device, generator_scale):
    """(segmenter, its window side, device) for mask fidelity; it judges binary building masks only, and at the
    resolution it was trained at: a warning when the generator's training data was resized by another factor."""
    if cfg['input_nc'] != 1:
        raise UserError('--segmenter: mask fidelity needs a model of binary building masks (input_nc 1)')
    model, seg_cfg, seg_state = load_generator(path, device, role='segmenter')
    seg_scale = seg_state.get('data_scale')  # None: trained before segmenters recorded it, or on mixed sources
    if seg_scale and generator_scale and not 1 / 1.02 < seg_scale / generator_scale < 1.02:
        print(f'warning: {path}: the segmenter was trained on data resized by {seg_scale:.4g}, the generator on '
              f'data resized by {generator_scale:.4g}: it judges buildings at a size it never saw, and mask fidelity '
              f'may read low; train it on the generator\'s --dataroot', file=sys.stderr)
    return model, seg_cfg['crop_size'], device


def mask_fidelity(segmenter, image, mask, batch_size):
    """IoU / F1 of the buildings the segmenter finds in `image` against `mask` (the pix2pix paper's FCN-score
    idea): high when the generated image shows the buildings the mask asked for. Any image size: the segmenter
    runs as a sliding window like the generator."""
    model, window, device = segmenter
    prob = generate_sliding(model, image, window, 0.5, batch_size, device, output_nc=1)
    scores = building_scores(torch.from_numpy(prob).float().div_(255)[None, None],
                             torch.from_numpy(np.ascontiguousarray(mask))[None, None])
    return {key: float(value[0]) for key, value in scores.items()}


# ---------------------------------------------------------------- inputs

def list_mask_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = [os.path.join(path, name) for name in list_images(path)]
            if not found:
                gt = os.path.join(path, 'gt')  # a dataset root given for its mask folder
                hint = f'; its masks are in gt/: give {gt}' if os.path.isdir(gt) else ''
                raise UserError(f'{path}: no mask images (.tif, .png, .jpg) in this folder{hint}')
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UserError(f'{path}: mask file or folder not found (--masks)')
    return files


def collect_inputs(opt, cfg):
    """[(name, source path, mask array or None, real image or None, (H, W))]; every mask checked up front,
    so a bad file stops the run before anything is written. File masks are re-read when generated."""
    input_nc = cfg['input_nc']
    if opt.masks:
        inputs, seen = [], {}
        files = list_mask_files(opt.masks)[:opt.num_test]
        for path in tqdm(files, desc='checking masks', unit='mask', leave=False, disable=len(files) < 10):
            name = os.path.splitext(os.path.basename(path))[0]
            if len(os.fsencode(name)) > MAX_NAME_BYTES:
                raise UserError(f'{path}: file name too long for its outputs (OriginalResized-<name>.png and a temp '
                                f'suffix must fit in 255 bytes); rename it')
            if name in seen and os.path.realpath(path) == os.path.realpath(seen[name]):
                raise UserError(f'{path}: given twice in --masks')
            if name in seen:
                raise UserError(f'{path}: same name as {seen[name]}; outputs would overwrite each other')
            seen[name] = path
            shape = read_mask(path, input_nc, opt.mask_tolerance).shape[:2]
            inputs.append((name, path, None, None, shape))
        note_side_by_side_pairs(inputs, input_nc)
        return inputs
    dataroot = opt.dataroot or cfg.get('dataroot')
    if not dataroot or not os.path.isdir(dataroot):
        whose = '--dataroot' if opt.dataroot else "the run's --dataroot; pass --dataroot or --masks"
        raise UserError(f'{dataroot}: dataset not found ({whose})')
    masks, images, names = load_split(dataroot, opt.split)
    if masks.shape[1] != input_nc:
        raise UserError(f'{dataroot}/{opt.split}: masks have {masks.shape[1]} channels, the model takes {input_nc}')
    inputs = []
    for mask, image, name in list(zip(masks, images, names))[:opt.num_test]:
        mask = mask.permute(1, 2, 0).numpy()
        inputs.append((name, os.path.join(dataroot, opt.split, 'masks', name + '.npy'),
                       mask[..., 0] if input_nc == 1 else mask, image.permute(1, 2, 0).numpy(), mask.shape[:2]))
    return inputs


def note_side_by_side_pairs(inputs, input_nc):
    """Label maps twice as wide as tall look like raw aligned A|B files (facades/test/*.jpg), which would be
    generated from as one label map, photo half included. A note, not an error: a wide label map is possible."""
    pairs = [source for _, source, _, _, (height, width) in inputs if input_nc == 3 and width == 2 * height]
    if pairs:
        print(f'note: {len(pairs)} of {len(inputs)} --masks (e.g. {pairs[0]}) are twice as wide as tall, like '
              f'aligned A|B pairs; each is read as one label map. For A|B files, transform their folder '
              f'(transform_dataset.py --format aligned) and pass its --out as --dataroot')


def resolve_scale(opt, state, ckpt, inputs, size):
    """--scale as a number: 'train' read from the checkpoint; unset is 1, with a note when the masks look like
    the source data's resolution: a 5000² Inria mask shows buildings 8.7× larger than a model trained on 2×2 tiles
    at --size 286 (286/2500) ever saw."""
    recorded = state.get('data_scale')
    if opt.scale == 'train':
        if recorded is None:
            raise UserError(f'{ckpt}: --scale train: the checkpoint records no training scale (trained before '
                            f'train.py recorded it, on data transformed before transform_dataset.py did, or on '
                            f'sources of different sizes or not square, resized by different factors); give it as '
                            f'a number: --size / the source pieces\' side (of the axis that matters most to you)')
        print(f'--scale train: {recorded:.4g}, the factor the training tiles were resized by')
        return recorded
    if opt.scale is None:
        if opt.mode == 'sliding' and opt.masks and recorded and recorded < 0.9:
            large = [source for _, source, _, _, shape in inputs if min(shape) * recorded >= size]
            if large:
                print(f'note: {len(large)} of {len(inputs)} masks (e.g. {large[0]}) are generated at their own '
                      f'resolution (--scale 1), where this run trained on tiles resized by {recorded:.4g}: '
                      f'for masks at the source data\'s resolution, pass --scale train')
        return 1.0
    return opt.scale


def note_masks_under_one_window(opt, inputs, size):
    """Sliding mode fills a window around a smaller mask by mirroring it, a picture the model never saw: most often
    a --scale meant for 5000² tiles given to masks already at the model's resolution. A note: the output is made."""
    if opt.mode != 'sliding':
        return
    scaled = [(source, shape, scaled_size(shape, opt.scale)) for _, source, _, _, shape in inputs]
    small = [entry for entry in scaled if min(entry[2]) < size]
    if small:
        source, (height, width), (h, w) = small[0]
        print(f'note: {len(small)} of {len(inputs)} masks are smaller than one {size}² window at --scale {opt.scale} '
              f'(e.g. {source}: {width}×{height} -> {w}×{h}); the window around them is mirrored mask, which the '
              f'model never saw: check --scale (1 for masks already at the resolution the model trained at)')


# ---------------------------------------------------------------- memory check

def check_memory(opt, G, cfg, size, inputs, device, segmenter=None):
    """Refuse before generating when the largest input would not fit with this --batch_size (or --tiles): in G, and
    then in the --segmenter, which reads each generated image as windows of its own size."""
    _, smallest, *_, shape = min(inputs, key=lambda i: min(i[-1]))
    if opt.mode == 'tiles' and opt.tiles > min(shape):
        raise UserError(f'{smallest}: --tiles {opt.tiles}, but the mask is only {shape[1]}×{shape[0]} pixels')
    if opt.mode == 'crop' and size > min(shape):
        raise UserError(f'{smallest}: --mode crop takes the centre {size}×{size} pixels, but the mask is only '
                        f'{shape[1]}×{shape[0]}; --mode full resizes it to the model size')
    given = '--load_size' if opt.load_size else 'the run\'s --crop_size; a smaller --load_size may fit'
    per_window = measured_window_bytes(G, cfg['input_nc'], size, device, given)
    _, largest, *_, (height, width) = max(inputs, key=lambda i: i[-1][0] * i[-1][1])
    if opt.mode == 'sliding':
        h, w = scaled_size((height, width), opt.scale)
        if (cfg['input_nc'] + 3) * h * w > available_bytes(torch.device('cpu')):  # before planning its windows
            raise UserError(f'{largest}: --scale {opt.scale} makes the {width}×{height} mask {w}×{h}, more than '
                            f'this machine\'s memory holds')
        windows, band, host = sliding_needs(h, w, size, opt.overlap, cfg['input_nc'], cfg['output_nc'])
        host += 3 * height * width  # the output resized back to the input's size
    else:
        h, w = height, width
        windows = opt.tiles ** 2 if opt.mode == 'tiles' else 1
        band, host = 0, 3 * height * width * 2
    limit = opt.max_memory_gb * 2 ** 30 if opt.max_memory_gb else available_bytes(device)
    refuse_over_limit(f'{largest}: {width}×{height} mask', min(opt.batch_size, windows), size, per_window,
                      (band, host), limit, device, '--scale or --load_size', bool(opt.max_memory_gb))
    if segmenter:
        model, window, _ = segmenter
        judged = (size, size) if opt.mode in ('full', 'crop') else (h, w)  # what image_scores gives it
        windows, band, host = sliding_needs(*judged, window, 0.5, 3, 1)
        per_window = measured_window_bytes(model, 3, window, device, "the segmenter's --crop_size")
        refuse_over_limit(f'{largest}: the segmenter on its {judged[1]}×{judged[0]} generated image',
                          min(opt.batch_size, windows), window, per_window, (band, host), limit, device, '--scale',
                          bool(opt.max_memory_gb))


def measured_window_bytes(model, input_nc, size, device, given):
    try:
        return peak_window_bytes(model, input_nc, size, device)
    except (RuntimeError, MemoryError) as err:  # the measurement itself: one window does not fit (--load_size 100000)
        if not isinstance(err, MemoryError) and 'allocate' not in str(err):  # CPU and CUDA allocators say so
            raise
        raise UserError(f'one {size}² window ({given}) does not fit in {device.type} memory '
                        f'({first_line(err)})') from None


def sliding_needs(h, w, window, overlap, input_nc, output_nc):
    """(windows, device bytes besides them, host bytes) of generate_sliding over an h×w input."""
    padded = [sliding_plan(n, window, overlap) for n in (h, w)]
    hp, wp = (a + b + n for (a, b, _), n in zip(padded, (h, w)))
    band = 4 * output_nc * window * wp  # float accumulator of one band of rows
    host = hp * wp * input_nc + output_nc * h * w  # padded input, uint8 output
    return len(padded[0][2]) * len(padded[1][2]), band, host


def refuse_over_limit(what, batch, size, per_window, band_and_host, limit, device, shrinks, given_limit):
    """Refuse `batch` windows of per_window bytes beside the band (device) and host bytes when they exceed limit
    (--max_memory_gb's where given_limit); on a CPU the host's bytes are the device's too."""
    band, host = band_and_host
    fixed = band + (host if device.type == 'cpu' else 0)
    needed = batch * per_window + fixed
    if needed > limit:
        fits = int((limit - fixed) // per_window)
        advice = (f'lower --batch_size (about {fits} fits)' if fits >= 1
                  else f'even one window does not fit: lower {shrinks}, or free memory')
        available = f'--max_memory_gb allows {limit / 2 ** 30:.3g} GB' if given_limit else \
            f'{limit / 2 ** 30:.2f} GB is available'
        raise UserError(f'{what}, {batch} windows of {size}² at once: needs ~{needed / 2 ** 30:.2f} GB of '
                        f'{device.type} memory but {available}; {advice}')


# ---------------------------------------------------------------- generation

def generate(opt, G, cfg, mask, size, device):
    """(generated uint8 image, the mask at the output's size, seam score) for one input in --mode. Seams are scored
    where the mode could make them, at the resolution it generates at: the --tiles grid in tiles mode (and on the
    same lines in full and crop modes, which have none); the window edges in sliding mode, before --scale is undone
    (resizing back up would spread a seam over many pixels)."""
    if opt.mode in ('full', 'crop'):
        small = center_crop(mask, size, (0, 1)) if opt.mode == 'crop' else resize_mask(mask, size)  # as train.py
        image = generate_full(G, small, size, device)  # at the model size already: generate_full resizes nothing
        return image, small, seam_score(image, opt.tiles)
    if opt.mode == 'tiles':
        image = generate_tiles(G, mask, opt.tiles, size, opt.batch_size, device)
        return image, mask, seam_score(image, opt.tiles)
    height, width = mask.shape[:2]
    scaled = resize_mask(mask, scaled_size((height, width), opt.scale))
    fake = generate_sliding(G, scaled, size, opt.overlap, opt.batch_size, device, cfg['output_nc'])
    seams = seam_score_at(fake, *(window_edges(n, size, opt.overlap) for n in fake.shape[:2]))
    return resize_image(fake, (height, width)), mask, seams  # back on the input's pixel grid (and geo-referencing)


def scaled_size(shape, scale):
    """(height, width) of an H×W input resampled by --scale, at least one pixel each."""
    return tuple(max(1, round(n * scale)) for n in shape[:2])


# ---------------------------------------------------------------- metrics

def as_tensor(hwc):
    return torch.from_numpy(np.array(hwc)).permute(2, 0, 1)[None]  # a copy: PIL's arrays are read-only


def image_scores(generated, real, mask, seams, opt, segmenter=None):
    """Per-image metrics, a flat name -> number dict: a new metric is one more key."""
    scores = {'seam_score': seams}
    if real is not None:
        metrics = image_metrics(to_unit_range(as_tensor(generated)), to_unit_range(as_tensor(real)))
        # PSNR of a perfect copy is inf, which strict JSON cannot hold: stored as null
        scores.update({key: float(value[0]) if torch.isfinite(value[0]) else None for key, value in metrics.items()})
    if segmenter is not None:
        if opt.scale != 1:  # judged at the scale the segmenter, like the generator, was trained at
            size = scaled_size(mask.shape, opt.scale)
            generated, mask = resize_image(generated, size), resize_mask(mask, size)
            real = None if real is None else resize_image(real, size)
        for key, value in mask_fidelity(segmenter, generated, mask, opt.batch_size).items():
            scores[f'fidelity_{key}'] = value
        if real is not None:  # the same segmenter on the real image: the score generated images aim for
            for key, value in mask_fidelity(segmenter, real, mask, opt.batch_size).items():
                scores[f'fidelity_{key}_real'] = value
    return scores


def generate_all(opt, G, cfg, size, device, inputs, folder, segmenter, fid_kid, desc):
    """Generate, save into folder and score every input: one report row each."""
    amp = amp_enabled(opt.amp, device)
    rows = []
    for name, source, mask, real, _ in tqdm(inputs, desc=desc, unit='mask'):
        if mask is None:
            mask = read_mask(source, cfg['input_nc'], opt.mask_tolerance)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):  # generation only, not the metrics
            generated, mask_out, seams = generate(opt, G, cfg, mask, size, device)
        if real is not None and real.shape[:2] != generated.shape[:2]:
            real = center_crop(real, size, (0, 1)) if opt.mode == 'crop' else resize_image(real, generated.shape[:2])
        files = save_outputs(folder, opt.mode, name, source, generated, mask_out, real)
        if real is not None and fid_kid:
            for metric in fid_kid:
                metric.update(as_tensor(generated).to(device), real=False)
                metric.update(as_tensor(real).to(device), real=True)
        rows.append({'name': name, 'source': source, 'size': list(generated.shape[:2]), 'files': files,
                     'metrics': image_scores(generated, real, mask_out, seams, opt, segmenter)})
    return rows


# ---------------------------------------------------------------- main

def write_reports(staging, opt, run_name, ckpt, trained_epochs, size, rows, fid_kid):
    """index.html, metrics.csv and metrics.json of the generated rows; returns the mean scores and FID/KID."""
    mean = mean_scores(rows)
    set_metrics = compute_fid_kid(fid_kid, sum('real' in row['files'] for row in rows))
    train_mode = ' · G in train mode (--no_eval)' if opt.no_eval else ''
    title = f'{run_name} · {opt.mode} · epoch {opt.epoch} ({trained_epochs} trained){train_mode}'
    write_index_html(os.path.join(staging, 'index.html'), title, rows, {**mean, **set_metrics})
    write_metrics_csv(os.path.join(staging, 'metrics.csv'), rows, mean)
    write_json_atomic(os.path.join(staging, 'metrics.json'), {
        'run': opt.run, 'checkpoint': ckpt, 'epoch': opt.epoch, 'trained_epochs': trained_epochs,
        'mode': opt.mode, 'eval_mode': not opt.no_eval, 'tiles': opt.tiles, 'overlap': opt.overlap,
        'scale': opt.scale, 'load_size': size, 'samples': len(rows), 'mean': mean, **set_metrics, 'images': rows})
    return {**mean, **set_metrics}


def main(argv=None):
    opt = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    check_options(opt)
    device = pick_device(opt.device)
    ckpt = checkpoint_path(opt.run, opt.epoch)
    G, cfg, state = load_generator(ckpt, device)
    trained_epochs = state.get('epoch')
    segmenter = load_segmenter(opt.segmenter, cfg, device, state.get('data_scale')) if opt.segmenter else None
    size = opt.load_size or cfg.get('crop_size')
    check_model_size(cfg, size)
    inputs = collect_inputs(opt, cfg)
    opt.scale = resolve_scale(opt, state, ckpt, inputs, size)
    check_memory(opt, G, cfg, size, inputs, device, segmenter)
    note_masks_under_one_window(opt, inputs, size)
    run_name = os.path.basename(os.path.abspath(opt.run))  # '.' and '..' by their names: results/../ is outside
    results_dir = opt.results_dir or os.path.join('results', run_name, f'{opt.mode}_{opt.epoch}')
    fid_kid = make_fid_kid(opt.inception_weights, device) if inputs[0][3] is not None else None
    if opt.inception_weights and inputs[0][3] is None:
        print('FID/KID skipped: raw --masks have no ground-truth images')
    check_outputs_spare_inputs(results_dir, opt.mode, inputs)
    check_results_dir_is_ours(results_dir, inputs)
    with writing_alone(results_dir, '--results_dir'):  # a second test.py into this folder stops here
        staging = start_staging(results_dir)
        if opt.no_eval:
            G.train()
            torch.manual_seed(0)  # the dropout noise: a re-run gives the same images
        try:
            rows = generate_all(opt, G, cfg, size, device, inputs, staging, segmenter, fid_kid,
                                f'{opt.mode} {run_name}')
            scores = write_reports(staging, opt, run_name, ckpt, trained_epochs, size, rows, fid_kid)
        except KeyboardInterrupt:
            print(f'note: {results_dir}: the results of an earlier run there are unchanged; what this run finished '
                  f'is in {staging} until the next run', file=sys.stderr)
            raise
        except Exception:  # a bad mask or a full disk: partial outputs would only hold disk space until the next run
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish_results(results_dir, staging, inputs)
    summary = ', '.join(f'{k} {format_score(v)}' for k, v in scores.items())
    print(f'{counted(len(rows), "result")} in {results_dir}' + (f' ({summary})' if summary else ''))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
