"""Pre-transform a paired dataset once into small uint8 .npy arrays, so training never decodes TIFFs.

    python transform_dataset.py --dataroot AerialImageDataset/train --out data/inria286 --size 286 --split 2
    python transform_dataset.py --dataroot facades --out data/facades286 --format aligned --direction BtoA
    python transform_dataset.py --make_synthetic data/synthetic_inria      # small Inria-layout TIFFs for the demo

Inria layout: <dataroot>/images/<name>.tif + <dataroot>/gt/<name>.tif (PNG/JPEG pairs also accepted).
Aligned layout: one image holding A|B side by side, in <dataroot>/{train,val|test}/ or flat in <dataroot>.
Output: <out>/{train,val}/masks/<tile>.npy (H×W, or H×W×3 for colour label maps), <out>/{train,val}/images/<tile>.npy
(H×W×3), <out>/{train,val}/manifest.json, <out>/transform.json. Re-running skips finished sources.
"""
import argparse
import glob
import multiprocessing
import os
import re
import sys

import numpy as np
import tifffile
from tqdm import tqdm

from utils import (IMAGE_SUFFIXES, UserError, building_fraction, check_binary_mask, check_rgb_format,
                   check_rgb_image, read_image_file, read_image_header, read_json, remove_stale_temp_files,
                   resize_image, resize_mask, run_cli, save_npy_atomic, tile_bounds, write_json_atomic,
                   write_tiff_atomic)

INRIA_VAL_PATTERN = r'^[a-z-]+[1-5](?!\d)'  # Inria's usual validation split: images 1-5 of each city
SPLITS = ('train', 'val')
# Options that change the arrays: an output folder made with other values must not be mixed with new ones.
# --mask_tolerance is not among them: it only accepts or refuses a mask, so raising it after a refusal resumes.
OUTPUT_DEFINING_OPTIONS = ('format', 'direction', 'size', 'split', 'val_pattern', 'min_building')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataroot', help='input folder (Inria layout: images/ and gt/; or aligned A|B images)')
    p.add_argument('--out', help='output folder for the arrays (must not be inside --dataroot)')
    p.add_argument('--format', choices=('inria', 'aligned'), default='inria',
                   help='inria: images/ + gt/ pairs by file name; aligned: A|B side by side in one file')
    p.add_argument('--direction', choices=('AtoB', 'BtoA'), default='BtoA',
                   help='aligned only: which half is the input mask. Facades are photo|labels, so BtoA')
    p.add_argument('--size', type=int, default=286, help='side of the output arrays (train crops 256 from 286)')
    p.add_argument('--crop_size', type=int, default=256,
                   help='the crop train.py will take (its --crop_size): --size must be at least this')
    p.add_argument('--split', type=int, default=1,
                   help='cut every source into N×N tiles before resizing (1, 2, 5: more detail, N² more data)')
    p.add_argument('--val_pattern', default=INRIA_VAL_PATTERN,
                   help='regex on the source file stem selecting validation sources (default: images 1-5 of each '
                        'Inria city). For aligned data with train/ and val|test/ folders the folders decide')
    p.add_argument('--min_building', type=float, default=0.0,
                   help='drop tiles whose building fraction is below this (the seed used 0.25); 0 keeps all')
    p.add_argument('--mask_tolerance', type=float, default=0.01,
                   help='fraction of mask pixels allowed to be neither 0 nor 255 (compression noise)')
    p.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                   help='processes decoding sources in parallel (each holds ~3× one source in RAM)')
    p.add_argument('--make_synthetic', metavar='DIR',
                   help='instead of transforming: write a synthetic Inria-layout dataset of TIFFs to DIR')
    p.add_argument('--n_tiles', type=int, default=20, help='--make_synthetic: number of tiles')
    p.add_argument('--tile_size', type=int, default=1000, help='--make_synthetic: side of each tile (real: 5000)')
    p.add_argument('--seed', type=int, default=0, help='--make_synthetic: random seed')
    return p.parse_args(argv)


def check_options(opt):
    if opt.make_synthetic:
        if opt.n_tiles < 1 or opt.tile_size < 16:
            raise UserError('--make_synthetic needs --n_tiles >= 1 and --tile_size >= 16')
        return
    if not opt.dataroot or not opt.out:
        raise UserError('--dataroot and --out are required (or use --make_synthetic DIR)')
    if not os.path.isdir(opt.dataroot):
        raise UserError(f'{opt.dataroot}: input folder not found')
    if opt.size < 16:
        raise UserError(f'--size {opt.size} is too small (need >= 16)')
    if opt.size < opt.crop_size:
        raise UserError(f'--size {opt.size} is smaller than --crop_size {opt.crop_size}: training could not crop '
                        f'these arrays (use --size >= {opt.crop_size}, e.g. 286 for 256 crops)')
    if opt.split < 1 or opt.split > 64:
        raise UserError(f'--split {opt.split}: must be between 1 and 64 (N×N tiles per source)')
    if not 0.0 <= opt.min_building <= 1.0:
        raise UserError(f'--min_building {opt.min_building}: must be a fraction between 0 and 1')
    try:
        re.compile(opt.val_pattern)
    except re.error as err:
        raise UserError(f'--val_pattern {opt.val_pattern!r} is not a valid regex ({err})') from None
    if os.path.exists(opt.out) and not os.path.isdir(opt.out):
        raise UserError(f'{opt.out}: --out is an existing file, not a folder')
    dataroot, out = os.path.realpath(opt.dataroot), os.path.realpath(opt.out)
    if out == dataroot or out.startswith(dataroot + os.sep):
        raise UserError(f'{opt.out}: output folder is inside the input folder {opt.dataroot}; choose another --out')


# ---------------------------------------------------------------- finding sources

def list_images(folder):
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith('.'))


def stems(folder):
    """{stem: file name} of the images in folder. Outputs are named by stem, so two files sharing one
    (austin3_8.png and austin3_8.jpg) would silently become one tile: refuse."""
    found = {}
    for name in list_images(folder):
        stem = os.path.splitext(name)[0]
        if stem in found:
            raise UserError(f'{os.path.join(folder, found[stem])} and {os.path.join(folder, name)}: two files with '
                            f'the same name {stem!r} would make one output; remove or rename one')
        found[stem] = name
    return found


def find_inria_sources(opt):
    """Pairs (stem, image path, mask path, split), matched by file stem; any unmatched file is an error."""
    image_dir, mask_dir = os.path.join(opt.dataroot, 'images'), os.path.join(opt.dataroot, 'gt')
    for folder in (image_dir, mask_dir):
        if not os.path.isdir(folder):
            raise UserError(f'{folder}: folder not found (Inria layout needs images/ and gt/ in --dataroot)')
    images, masks = stems(image_dir), stems(mask_dir)
    if not images and not masks:
        raise UserError(f'{opt.dataroot}: no images found in images/ or gt/ (.tif, .png, .jpg)')
    for stem in sorted(images.keys() - masks.keys()):
        raise UserError(f'{os.path.join(image_dir, images[stem])}: image has no mask in {mask_dir}')
    for stem in sorted(masks.keys() - images.keys()):
        raise UserError(f'{os.path.join(mask_dir, masks[stem])}: mask has no image in {image_dir}')
    pattern = re.compile(opt.val_pattern)
    return [(stem, os.path.join(image_dir, images[stem]), os.path.join(mask_dir, masks[stem]),
             'val' if pattern.search(stem) else 'train') for stem in sorted(images)]


def aligned_split_folders(dataroot):
    """{split: folder} from <dataroot>/train and val/, else test/; {} without a train/ folder.
    The CMP facades download holds train/, val/ and test/: val/ validates and test/ stays held out.
    Printed, so which folder became the val split is never a guess."""
    present = [name for name in ('train', 'val', 'test') if os.path.isdir(os.path.join(dataroot, name))]
    if 'train' not in present:
        return {}
    names = dict(zip(SPLITS, present))  # train/, then val/ if present, else test/
    left_out = '; test/ left out (val/ is the validation split)' if len(present) == 3 else ''
    print('aligned splits: ' + ', '.join(f'{name}/ -> {split}' for split, name in names.items()) + left_out)
    return {split: os.path.join(dataroot, name) for split, name in names.items()}


def find_aligned_sources(opt):
    """(stem, path, path, split): split from train/ and val/ (or test/) folders, else from --val_pattern."""
    folders = aligned_split_folders(opt.dataroot)
    if folders:
        sources = [(stem, os.path.join(folder, name), os.path.join(folder, name), split)
                   for split, folder in folders.items() for stem, name in stems(folder).items()]
    else:
        pattern = re.compile(opt.val_pattern)
        sources = [(stem, os.path.join(opt.dataroot, name), os.path.join(opt.dataroot, name),
                    'val' if pattern.search(stem) else 'train') for stem, name in stems(opt.dataroot).items()]
    if not sources:
        raise UserError(f'{opt.dataroot}: no images found (.tif, .png, .jpg), nor train/ and val/ folders holding them')
    return sorted(sources, key=lambda s: (s[3], s[0]))


def check_headers(sources, opt):
    """Validate sizes, channels and dtypes from file headers before any output is written."""
    for stem, image_path, mask_path, split in tqdm(sources, desc='checking headers', leave=False, disable=len(sources) < 50):
        height, width, channels, dtype = read_image_header(image_path)
        if opt.format == 'aligned':
            if width % 2:
                raise UserError(f'{image_path}: aligned A|B image must have an even width, got {width}')
            width //= 2
        else:
            check_rgb_format(channels, dtype, image_path)
            mask_h, mask_w, _, _ = read_image_header(mask_path)
            if (mask_h, mask_w) != (height, width):
                raise UserError(f'{mask_path}: mask is {mask_w}×{mask_h} but its image {image_path} is {width}×{height}')
        if min(height, width) // opt.split < 8:
            raise UserError(f'{image_path}: {width}×{height} cannot be cut into {opt.split}×{opt.split} tiles '
                            f'(tiles would be under 8 px); use a smaller --split')


# ---------------------------------------------------------------- one source -> tiles

def load_pair(source, opt):
    """Decode one source once: (mask H×W or H×W×3, image H×W×3), both uint8, validated."""
    stem, image_path, mask_path, _ = source
    if opt.format == 'aligned':
        both = check_rgb_image(read_image_file(image_path), image_path)
        half = both.shape[1] // 2
        left, right = both[:, :half], both[:, half:]
        return (left, right) if opt.direction == 'AtoB' else (right, left)
    image = check_rgb_image(read_image_file(image_path), image_path)
    mask = check_binary_mask(read_image_file(mask_path), mask_path, opt.mask_tolerance)
    if mask.shape != image.shape[:2]:
        raise UserError(f'{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image is '
                        f'{image.shape[1]}×{image.shape[0]}')
    return mask, image


def tile_name(stem, row, col, split):
    return stem if split == 1 else f'{stem}_r{row}c{col}'


def record_path(out, split, stem):
    return os.path.join(out, split, 'sources', stem + '.json')


def transform_source(source, opt):
    """Cut, resize and save one source; the per-source record is written last and marks it done."""
    stem, image_path, mask_path, split = source
    mask, image = load_pair(source, opt)
    ys, xs = tile_bounds(mask.shape[0], opt.split), tile_bounds(mask.shape[1], opt.split)
    tiles, fractions = [], []
    for row in range(opt.split):
        for col in range(opt.split):
            tile_mask = resize_mask(mask[ys[row]:ys[row + 1], xs[col]:xs[col + 1]], opt.size)
            fraction = building_fraction(tile_mask)
            if fraction is not None:
                fractions.append(fraction)
                if fraction < opt.min_building:
                    continue
            name = tile_name(stem, row, col, opt.split)
            tile_image = resize_image(image[ys[row]:ys[row + 1], xs[col]:xs[col + 1]], opt.size)
            save_npy_atomic(os.path.join(opt.out, split, 'images', name + '.npy'), tile_image)
            save_npy_atomic(os.path.join(opt.out, split, 'masks', name + '.npy'), tile_mask)
            tiles.append({'name': name, 'source': os.path.basename(image_path), 'mask_source': os.path.basename(mask_path),
                          'tile': [row, col], 'building_fraction': fraction})
    # The largest fraction, dropped tiles included, tells a user whose --min_building kept nothing what would.
    write_json_atomic(record_path(opt.out, split, stem), {'source': stem, 'tiles': tiles,
                                                          'max_building_fraction': max(fractions, default=None)})
    return stem


def is_done(source, opt):
    """A source is finished when its record exists and every tile it lists is on disk."""
    stem, _, _, split = source
    path = record_path(opt.out, split, stem)
    if not os.path.exists(path):
        return False
    tiles = read_json(path, 'source record')['tiles']
    return all(os.path.exists(os.path.join(opt.out, split, kind, t['name'] + '.npy'))
               for t in tiles for kind in ('images', 'masks'))


def _worker(args):
    source, opt = args
    try:
        return transform_source(source, opt), None
    except UserError as err:
        return source[0], str(err)


# ---------------------------------------------------------------- whole dataset

def output_settings(opt):
    """What the arrays are made from: the options and the input folder (is_done matches sources by name only)."""
    return dict({k: getattr(opt, k) for k in OUTPUT_DEFINING_OPTIONS}, dataroot=os.path.abspath(opt.dataroot))


def has_finished_sources(out):
    """Whether any source record exists. Records are written last, each after transform.json, so only then
    does the folder hold arrays made with transform.json's settings."""
    return any(glob.glob(os.path.join(out, split, 'sources', '*.json')) for split in SPLITS)


def check_same_settings(opt, settings, config_path):
    """Refuse to mix arrays made with other settings. A run that failed before finishing any source
    (e.g. an unreadable first image) made nothing, so its settings are simply replaced."""
    if not os.path.exists(config_path):
        return
    previous = read_json(config_path, 'transform config')
    changed = [k for k in settings if previous.get(k) != settings[k]]
    if not changed:
        return
    old = ', '.join(f'--{k} {previous.get(k)}' for k in changed)
    if has_finished_sources(opt.out):
        raise UserError(f'{opt.out}: already holds a dataset made with other options ({old}); use a new --out')
    print(f'{opt.out}: an earlier run ({old}) finished no source; its settings are replaced')


def output_folders(out):
    """Every folder this script writes to, out/ and out/<split>/ included: transform.json and the manifests
    are written atomically there too, so a kill can leave their temp files."""
    yield out
    for split in SPLITS:
        yield os.path.join(out, split)
        for sub in ('images', 'masks', 'sources'):
            yield os.path.join(out, split, sub)


def prepare_output(opt):
    """Create the output folders, clear temp files a kill left behind, record the settings; refuse to mix
    outputs made with different settings."""
    settings = output_settings(opt)
    config_path = os.path.join(opt.out, 'transform.json')
    check_same_settings(opt, settings, config_path)
    try:
        for folder in output_folders(opt.out):
            os.makedirs(folder, exist_ok=True)
            remove_stale_temp_files(folder)
        write_json_atomic(config_path, settings)
    except OSError as err:  # not writable, a file in the way, ...: one line naming it instead of a traceback
        raise UserError(f'{opt.out}: cannot write the output folder ({err.strerror}: {err.filename})') from None


def check_split_not_empty(split, records, opt):
    """A split without tiles only fails later in train.py, so say why now: an error when --min_building
    dropped every train tile, a warning otherwise (an empty val split, or a run making only val data)."""
    if any(r['tiles'] for r in records):
        return
    if records:
        largest = max((r['max_building_fraction'] for r in records if r.get('max_building_fraction') is not None),
                      default=None)
        seen = '' if largest is None else f' (the largest building fraction of a tile is {largest:.3f})'
        message = (f'{opt.out}/{split}: --min_building {opt.min_building} dropped all tiles of its {len(records)} '
                   f'sources{seen}; use a lower --min_building and a new --out')
    else:
        by_folders = opt.format == 'aligned' and os.path.isdir(os.path.join(opt.dataroot, 'train'))
        rule = 'the train/ and val/ or test/ folders' if by_folders else f'--val_pattern {opt.val_pattern!r}'
        message = f'{opt.out}/{split}: no source is in the {split} split (sources are split by {rule})'
    if split == 'train' and records:
        raise UserError(message)
    print(f'warning: {message}; train.py needs tiles in both train/ and val/', file=sys.stderr)


def write_manifests(sources, opt):
    records = {split: [read_json(record_path(opt.out, split, s[0]), 'source record') for s in sources if s[3] == split]
               for split in SPLITS}
    for split in SPLITS:
        check_split_not_empty(split, records[split], opt)
    for split in SPLITS:
        tiles = [t for r in records[split] for t in r['tiles']]
        write_json_atomic(os.path.join(opt.out, split, 'manifest.json'),
                          {'split': split, 'size': opt.size, 'tiles': tiles})
        print(f'{split}: {len(tiles)} tiles from {len(records[split])} sources')


def transform(opt):
    sources = find_inria_sources(opt) if opt.format == 'inria' else find_aligned_sources(opt)
    check_headers(sources, opt)
    if opt.min_building > 0 and opt.format == 'aligned':
        raise UserError('--min_building needs binary building masks; aligned colour label maps have none')
    prepare_output(opt)
    todo = [s for s in sources if not is_done(s, opt)]
    if len(todo) < len(sources):
        print(f'resuming: {len(sources) - len(todo)} of {len(sources)} sources already done')
    jobs = [(s, opt) for s in todo]
    bar = tqdm(total=len(todo), desc='transforming', unit='source')
    if opt.workers > 1 and len(todo) > 1:
        # spawn: a fork of a process that already imported torch/threads can deadlock
        with multiprocessing.get_context('spawn').Pool(min(opt.workers, len(todo))) as pool:
            for stem, error in pool.imap_unordered(_worker, jobs):
                if error:
                    raise UserError(error)
                bar.update()
    else:
        for job in jobs:
            stem, error = _worker(job)
            if error:
                raise UserError(error)
            bar.update()
    bar.close()
    write_manifests(sources, opt)


# ---------------------------------------------------------------- synthetic Inria-layout data
# Procedural building masks and matching "aerial" images, so that the demo and the tests have data whose
# mask -> image mapping is learnable, in the real dataset's files, folders, dtypes and compression.

CITIES = ('austin', 'chicago', 'kitsap', 'tyrol-w', 'vienna')
# Scene colours (RGB). Roofs: red-brown tiles, grey, light grey (concrete/metal), dark (tar).
ROOF_PALETTE = np.array([[150, 78, 60], [128, 126, 132], [196, 194, 188], [78, 74, 82]], np.float32)
GRASS = np.array([88, 112, 58], np.float32)
SOIL = np.array([128, 116, 82], np.float32)
TREE = np.array([46, 70, 38], np.float32)
ASPHALT = np.array([104, 104, 108], np.float32)
SHADOW_OFFSET = 5  # px; the sun is fixed, so shadows always fall down-right


def synthetic_tile_names(n_tiles):
    """Round-robin over CITIES; each city's first tile is index 1 (inside the default
    validation split "1-5"), its later tiles 6, 7, ... (training split)."""
    k = len(CITIES)
    return [f'{CITIES[i % k]}{1 if i < k else i // k + 5}' for i in range(n_tiles)]


def tile_seed(seed, index):
    """Seed of tile `index`, derived from (seed, index) so a tile never depends on n_tiles."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def smooth_noise(rng, size, cell, mean=0.0, std=1.0):
    """(size, size) float32 field: coarse N(mean, std^2) noise bilinearly upsampled, blobs ~cell
    px wide. Scaling the coarse grid (interpolation is linear) and interpolating one axis at a
    time keep full-size temporaries to two."""
    n = size // cell + 2
    coarse = rng.standard_normal((n, n), dtype=np.float32) * np.float32(std) + np.float32(mean)
    pos = np.arange(size, dtype=np.float32) / cell
    i0 = pos.astype(np.intp)
    w = pos % 1  # stays float32 (pos - i0 would promote to float64 and double the memory)
    rows = coarse[i0] * (1 - w[:, None]) + coarse[i0 + 1] * w[:, None]  # (size, n)
    out = rows[:, i0]
    out *= 1 - w
    right = rows[:, i0 + 1]
    right *= w
    out += right
    return out


def draw_road_lines(rng, size, spacing, width):
    """1-D bool profile of parallel straight roads: True where a road covers that row/column."""
    profile = np.zeros(size, bool)
    centres = np.arange(rng.uniform(0, spacing), size + spacing, spacing)
    centres += rng.uniform(-0.15, 0.15, len(centres)) * spacing  # irregular block sizes
    for c, w in zip(centres, width * rng.uniform(0.8, 1.2, len(centres))):
        profile[max(0, int(c - w / 2)):max(0, int(c + w / 2))] = True
    return profile


def split_into_lots(road_profile, lot, setback):
    """Cut every road-free run of a 1-D road profile (shrunk by `setback` so buildings keep off
    the road) into lots ~lot px long. Returns starts, stops and the block side each lot touches
    (-1 first, +1 last, 0 inner/only) so houses can line up along the street."""
    edges = np.flatnonzero(np.diff(np.concatenate(([1], road_profile, [1])).astype(np.int8)))
    starts, stops, sides = [np.zeros(0, int)], [np.zeros(0, int)], [np.zeros(0, int)]
    for a, b in zip(edges[0::2] + setback, edges[1::2] - setback):
        if b - a < 12:
            continue
        n = max(1, int(round((b - a) / lot)))
        cuts = np.linspace(a, b, n + 1).astype(int)
        side = np.zeros(n, int)
        if n > 1:
            side[0], side[-1] = -1, 1
        starts.append(cuts[:-1]), stops.append(cuts[1:]), sides.append(side)
    return np.concatenate(starts), np.concatenate(stops), np.concatenate(sides)


def draw_buildings(rng, road_rows, road_cols, density):
    """(size, size) uint8 roof-id image: 0 = no building, 1..255 index a roof colour table.
    Roads cross the whole tile, so lots are the Cartesian product of the row and column lots;
    each lot holds at most one rectangle or L-shape, inset by a gap so neighbours never touch
    (that keeps roof colours and outlines per building clean)."""
    size = len(road_rows)
    roof_id = np.zeros((size, size), np.uint8)
    lot, setback, gap = 55 + 75 * density, int(10 - 6 * density), 2
    y0, y1, side = split_into_lots(road_rows, lot, setback)
    x0, x1, _ = split_into_lots(road_cols, lot, setback)
    ny, nx = len(y0), len(x0)
    y0, y1, side = (np.repeat(a, nx) for a in (y0, y1, side))
    x0, x1 = np.tile(x0, ny), np.tile(x1, ny)
    n = ny * nx
    # Rural: lots mostly empty, small houses. Urban: lots all built up, nearly edge to edge.
    fill = 0.35 + 0.6 * density
    h = np.minimum((y1 - y0) * rng.uniform(fill - .12, fill + .08, n), y1 - y0 - 2 * gap)
    w = np.minimum((x1 - x0) * rng.uniform(fill - .12, fill + .08, n), x1 - x0 - 2 * gap)
    h, w = h.astype(int), w.astype(int)
    keep = (rng.random(n) < 0.12 + 0.88 * density ** 0.7) & (h >= 6) & (w >= 6)
    # Houses in a block's first/last lot row sit at the street side: rows form along the roads.
    slack_y, slack_x = y1 - y0 - 2 * gap - h, x1 - x0 - 2 * gap - w
    offset_y = np.where(side == -1, 0, np.where(side == 1, slack_y, rng.random(n) * slack_y))
    top = y0 + gap + offset_y.astype(int)
    left = x0 + gap + (rng.random(n) * slack_x).astype(int)
    colour = rng.integers(1, 256, n)
    # L-shapes: cut one random corner (30-60 % of each side) out of ~35 % of the rectangles.
    is_l = rng.random(n) < 0.35
    cut_h = (h * rng.uniform(0.3, 0.6, n)).astype(int)
    cut_w = (w * rng.uniform(0.3, 0.6, n)).astype(int)
    cut_top = top + np.where(rng.random(n) < 0.5, 0, h - cut_h)
    cut_left = left + np.where(rng.random(n) < 0.5, 0, w - cut_w)
    for i in np.flatnonzero(keep):
        roof_id[top[i]:top[i] + h[i], left[i]:left[i] + w[i]] = colour[i]
        if is_l[i]:
            roof_id[cut_top[i]:cut_top[i] + cut_h[i], cut_left[i]:cut_left[i] + cut_w[i]] = 0
    return roof_id


def synthetic_layout(rng, size, density):
    """(roof_id, road): uint8 roof-id image (0 = ground) and bool road mask of one tile.
    Rural tiles get sparse narrow roads, urban tiles a dense grid of wider streets."""
    spacing, width = 650 - 500 * density, 12 + 10 * density
    road_rows = draw_road_lines(rng, size, spacing, width)
    road_cols = draw_road_lines(rng, size, spacing, width)
    return draw_buildings(rng, road_rows, road_cols, density), road_rows[:, None] | road_cols


def cast_shadow(building, offset=SHADOW_OFFSET):
    """Ground pixels (never roofs) covered by the buildings shifted `offset` px down-right."""
    shadow = np.zeros_like(building)
    shadow[offset:, offset:] = building[:-offset, :-offset]
    return shadow & ~building


def building_outline(building):
    """1-px inner boundary of the buildings (they never touch, so the mask alone is enough)."""
    interior = building.copy()
    interior[1:] &= building[:-1]
    interior[:-1] &= building[1:]
    interior[:, 1:] &= building[:, :-1]
    interior[:, :-1] &= building[:, 1:]
    return building & ~interior


def render_aerial_image(rng, roof_id, road, density):
    """RGB uint8 image: grass/soil ground with tree blobs, asphalt roads, per-building roofs,
    ground shadows, dark roof outlines, mild noise. Full-size fields are uint8/int8/bool and one
    float32 channel is painted at a time, so peak memory stays a few times the image size."""
    size = roof_id.shape[0]
    building = roof_id > 0
    soil = smooth_noise(rng, size, 160, mean=128, std=90)  # 0 = green grass, 255 = dry soil
    soil = np.clip(soil, 0, 255, out=soil).astype(np.uint8)
    trees = smooth_noise(rng, size, 14) > 0.7 + 0.9 * density  # more trees in rural tiles
    shadow, outline = cast_shadow(building), building_outline(building)
    noise = rng.standard_normal((size, size), dtype=np.float32)  # luminance texture, all bands
    noise = np.multiply(noise, 6, out=noise).astype(np.int8)
    # 255 roof colours: palette entries with +-15 % brightness; roof_id picks one per building.
    table = ROOF_PALETTE[rng.integers(0, len(ROOF_PALETTE), 256)] * rng.uniform(.85, 1.15, (256, 1))
    table = np.clip(table, 0, 255).astype(np.uint8)
    image = np.empty((size, size, 3), np.uint8)
    chan = np.empty((size, size), np.float32)  # reused, so two channels never coexist
    for c in range(3):
        np.multiply(soil, np.float32((SOIL[c] - GRASS[c]) / 255), out=chan)
        chan += GRASS[c]
        np.copyto(chan, TREE[c], where=trees)
        np.copyto(chan, ASPHALT[c], where=road)
        np.multiply(chan, 0.55, out=chan, where=shadow)
        np.copyto(chan, table[roof_id, c], where=building)
        np.multiply(chan, 0.7, out=chan, where=outline)
        chan += noise
        image[..., c] = np.clip(chan, 0, 255, out=chan)
    return image


def synthetic_pair(size, seed, density=None):
    """One (mask, image) pair: mask (size, size) uint8 in {0, 255}, image (size, size, 3) uint8.
    density in [0, 1] goes from rural to dense urban; None draws it from the seed."""
    rng = np.random.default_rng(seed)
    density = rng.uniform(0, 1) if density is None else density
    roof_id, road = synthetic_layout(rng, size, density)
    image = render_aerial_image(rng, roof_id, road, density)
    return np.where(roof_id > 0, np.uint8(255), np.uint8(0)), image


def geotiff_tags(index, size):
    """tifffile extratags with minimal GeoTIFF georeferencing as in real Inria tiles: 0.3 m
    pixels, NAD83 / UTM 14N (EPSG:26914, like Austin), tiles side by side so origins differ."""
    x0 = 620000.0 + (index % 10) * size * 0.3
    y0 = 3350000.0 - (index // 10) * size * 0.3
    geokeys = [1, 1, 0, 4,  # directory version, revision, minor revision, number of keys
               1024, 0, 1, 1,  # GTModelTypeGeoKey = projected
               1025, 0, 1, 1,  # GTRasterTypeGeoKey = pixel is area
               3072, 0, 1, 26914,  # ProjectedCSTypeGeoKey = EPSG:26914
               3076, 0, 1, 9001]  # ProjLinearUnitsGeoKey = metre
    double, short = tifffile.DATATYPE.DOUBLE, tifffile.DATATYPE.SHORT
    return [(33550, double, 3, (0.3, 0.3, 0.0), True),  # ModelPixelScaleTag
            (33922, double, 6, (0.0, 0.0, 0.0, x0, y0, 0.0), True),  # ModelTiepointTag
            (34735, short, len(geokeys), geokeys, True)]  # GeoKeyDirectoryTag


def make_synthetic_inria(out_dir, n_tiles=20, size=1000, seed=0, progress=True):
    """Write n_tiles synthetic pairs as <out_dir>/images/<name>.tif (RGB, uncompressed) and
    <out_dir>/gt/<name>.tif (uint8 {0,255}, LZW), both with GeoTIFF tags; returns the names."""
    names = synthetic_tile_names(n_tiles)
    for sub in ('images', 'gt'):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    for i, name in enumerate(tqdm(names, desc='synthetic tiles', disable=not progress)):
        mask, image = synthetic_pair(size, tile_seed(seed, i))
        tags = geotiff_tags(i, size)
        write_tiff_atomic(os.path.join(out_dir, 'images', f'{name}.tif'), image,
                          photometric='rgb', extratags=tags)
        write_tiff_atomic(os.path.join(out_dir, 'gt', f'{name}.tif'), mask,
                          photometric='minisblack', compression='lzw', extratags=tags)
    return names


def main(argv=None):
    opt = parse_args(argv)
    check_options(opt)
    if opt.make_synthetic:
        names = make_synthetic_inria(opt.make_synthetic, opt.n_tiles, opt.tile_size, opt.seed)
        print(f'wrote {len(names)} synthetic tiles to {opt.make_synthetic}/images and {opt.make_synthetic}/gt')
        return
    transform(opt)
    print(f'done: {opt.out}')


if __name__ == '__main__':
    run_cli(main)
