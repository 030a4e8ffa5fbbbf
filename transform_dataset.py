"""Pre-transform a paired dataset once into small uint8 .npy arrays, so training never decodes TIFFs.

    python transform_dataset.py --dataroot AerialImageDataset/train --out data/inria286 --size 286 --split 2
    python transform_dataset.py --dataroot facades --out data/facades286 --format aligned --direction BtoA
    python transform_dataset.py --make_synthetic data/synthetic_inria      # small Inria-layout TIFFs for the demo

Inria layout: <dataroot>/images/<name>.tif + <dataroot>/gt/<name>.tif (PNG/JPEG pairs also accepted).
Aligned layout: one image holding A|B side by side, in <dataroot>/{train,val|test}/ or flat in <dataroot>.
Output: <out>/{train,val}/masks/<tile>.npy (H×W, or H×W×3 for colour label maps), <out>/{train,val}/images/<tile>.npy
(H×W×3), <out>/{train,val}/manifest.json, <out>/transform.json. Re-running skips finished sources.
"""
import contextlib
import glob
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from image_io import (building_fraction, check_mask_format, check_rgb_format, check_rgb_image, list_images,
                      read_binary_mask, read_image_file, read_image_header, resize_image, resize_mask, tile_bounds)
from synthetic_inria import make_synthetic_inria
from utils import (ArgumentParser, UserError, check_counts, check_fractions, counted, raise_noted_stop, read_json,
                   remove_stale_temp_files, run_cli, save_npy_atomic, stop_signals_noted, write_json_atomic,
                   writing_alone)

INRIA_VAL_PATTERN = r'^[a-z-]+[1-5](?!\d)'  # Inria's usual validation split: images 1-5 of each city
SPLITS = ('train', 'val')
# Options that change the arrays: an output folder made with other values must not be mixed with new ones.
# Not among them: --mask_tolerance only accepts or refuses a mask, so raising it after a refusal resumes; and
# --min_building only picks the tiles the manifests list (every tile is saved), so a re-run with another value
# rewrites the manifests in seconds.
OUTPUT_DEFINING_OPTIONS = ('format', 'direction', 'size', 'split', 'val_pattern')
MAX_SIZE = 8192  # a tile of 8192² is 200 MB of uint8 RGB; an Inria source is 5000²
# records list every tile of their source (version 1 listed only those --min_building kept) and, since version 3,
# the file they were made from
RECORD_VERSION = 3


def parse_args(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument('--dataroot', help='input folder (Inria layout: images/ and gt/; or aligned A|B images)')
    p.add_argument('--out', help='output folder for the arrays (must not be inside --dataroot)')
    p.add_argument('--format', choices=('inria', 'aligned'), default='inria',
                   help='inria: images/ + gt/ pairs by file name; aligned: A|B side by side in one file')
    p.add_argument('--direction', choices=('AtoB', 'BtoA'), default='BtoA',
                   help='aligned only: which half is the input, the label map or mask (resized nearest; the other '
                        'half, the photo, bilinear). Facades are photo|labels, so BtoA')
    p.add_argument('--size', type=int, default=286, help='side of the output arrays (train crops 256 from 286)')
    p.add_argument('--crop_size', type=int, default=256,
                   help='the crop train.py will take (its --crop_size): --size must be at least this')
    p.add_argument('--split', type=int, default=1,
                   help='cut every source into N×N tiles before resizing (1, 2, 5: more detail, N² more data)')
    p.add_argument('--val_pattern', default=INRIA_VAL_PATTERN,
                   help='regex searched in each source file stem; a match is a validation source (default: images '
                        '1-5 of each Inria city). Unanchored: vienna1 also matches vienna10, ^vienna1$ does not. '
                        'For aligned data with train/ and val|test/ folders the folders decide')
    p.add_argument('--min_building', type=float, default=0.0,
                   help='leave tiles whose building fraction is below this out of the manifests (the seed used '
                        '0.25; the arrays are kept, so another value re-runs in seconds); 0 keeps all')
    p.add_argument('--mask_tolerance', type=float, default=0.01,
                   help='fraction of mask pixels allowed to be neither 0 nor 255 (compression noise)')
    p.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                   help='processes decoding sources in parallel (each holds ~2× one decoded source in RAM)')
    p.add_argument('--make_synthetic', metavar='DIR',
                   help='instead of transforming: write a synthetic Inria-layout dataset of TIFFs to DIR')
    p.add_argument('--n_tiles', type=int, default=20,
                   help='--make_synthetic: number of tiles; the first 5, one per city, fall in the default val split')
    p.add_argument('--tile_size', type=int, default=1000, help='--make_synthetic: side of each tile (real: 5000)')
    p.add_argument('--seed', type=int, default=0, help='--make_synthetic: random seed')
    return p.parse_args(argv)


SYNTHETIC_OPTIONS = ('make_synthetic', 'n_tiles', 'tile_size', 'seed')


def check_options_apply(opt):
    """An option that does not apply to this run would be ignored in silence: a --size beside --make_synthetic
    makes no arrays, and --direction on Inria data would only lock the --out folder."""
    defaults = vars(parse_args([]))
    given = [key for key, value in vars(opt).items() if value != defaults[key]]
    if opt.make_synthetic:
        stray = [key for key in given if key not in SYNTHETIC_OPTIONS]
        if stray:
            raise UserError(f'{" ".join("--" + key for key in stray)}: not used by --make_synthetic, which only writes '
                            f'the tiles; transform them in a second run (--dataroot {opt.make_synthetic})')
        return
    stray = [key for key in given if key in SYNTHETIC_OPTIONS]
    if stray:
        raise UserError(f'{" ".join("--" + key for key in stray)}: only used with --make_synthetic DIR')
    if 'direction' in given and opt.format != 'aligned':
        raise UserError('--direction only applies to --format aligned (Inria masks are always the input)')


def check_options(opt):
    check_options_apply(opt)
    if opt.make_synthetic:
        if opt.n_tiles < 1 or opt.tile_size < 16 or opt.seed < 0:
            raise UserError('--make_synthetic needs --n_tiles >= 1, --tile_size >= 16 and --seed >= 0')
        return
    if not opt.dataroot or not opt.out:
        raise UserError('--dataroot and --out are required (or use --make_synthetic DIR)')
    if not os.path.isdir(opt.dataroot):
        raise UserError(f'{opt.dataroot}: input folder not found')
    check_counts(opt, ('workers', 'crop_size'))
    if not 16 <= opt.size <= MAX_SIZE:  # 100000000 was a MemoryError traceback, after transform.json was written
        raise UserError(f'--size {opt.size}: must be between 16 and {MAX_SIZE} (the seed used 286)')
    if opt.size < opt.crop_size:
        raise UserError(f'--size {opt.size} is smaller than --crop_size {opt.crop_size}: training could not crop '
                        f'these arrays (use --size >= {opt.crop_size}, e.g. 286 for 256 crops)')
    if opt.split < 1 or opt.split > 64:
        raise UserError(f'--split {opt.split}: must be between 1 and 64 (N×N tiles per source)')
    check_fractions(opt, ('min_building', 'mask_tolerance'))
    if opt.min_building > 0 and opt.format == 'aligned':
        raise UserError('--min_building needs binary building masks; aligned colour label maps have none')
    try:
        re.compile(opt.val_pattern)
    except re.error as err:
        raise UserError(f'--val_pattern {opt.val_pattern!r} is not a valid regex ({err})') from None
    if os.path.exists(opt.out) and not os.path.isdir(opt.out):
        raise UserError(f'{opt.out}: --out is an existing file, not a folder')
    dataroot, out = os.path.realpath(opt.dataroot), os.path.realpath(opt.out)
    if out == dataroot or out.startswith(dataroot + os.sep):
        raise UserError(f'{opt.out}: output folder is inside the input folder {opt.dataroot}; choose another --out')
    for folder in list(output_folders(out))[1:]:  # out/ itself may hold the input: nothing is written beside it
        if dataroot == folder or dataroot.startswith(folder + os.sep):
            raise UserError(f'{opt.dataroot}: the input folder is inside {folder}, where --out {opt.out} writes '
                            f'arrays; choose another --out')


# ---------------------------------------------------------------- finding sources

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
            parent, given = os.path.split(os.path.abspath(opt.dataroot))
            if given in ('images', 'gt'):  # one half of the pair layout (check_options made sure it exists)
                other = 'gt' if given == 'images' else 'images'
                hint = f'; give the folder that holds both: {parent}'
                if not os.path.isdir(os.path.join(parent, other)):
                    hint = (f'; give the folder that holds both, but {parent} has no {other}/ (every image needs '
                            'its mask)')
            elif os.path.isdir(os.path.join(opt.dataroot, 'train', 'images')):  # the Inria download's parent folder
                hint = f'; the Inria download holds train/ and test/: give {os.path.join(opt.dataroot, "train")}'
            elif os.path.isdir(os.path.join(opt.dataroot, 'train')) or list_images(opt.dataroot):
                hint = '; for A|B images side by side (e.g. facades) use --format aligned'
            else:
                hint = ''
            raise UserError(f'{folder}: folder not found (Inria layout needs images/ and gt/ in --dataroot){hint}')
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
        hint = ('; images/ and gt/ are the Inria layout: leave out --format aligned'
                if os.path.isdir(os.path.join(opt.dataroot, 'images')) else '')
        raise UserError(f'{opt.dataroot}: no images found (.tif, .png, .jpg), nor train/ and val/ folders holding '
                        f'them{hint}')
    return sorted(sources, key=lambda s: (s[3], s[0]))


def check_headers(sources, opt):
    """Validate sizes, channels and dtypes from file headers before any output is written; returns notes on what
    will be enlarged or stretched, printed once the output folder is accepted."""
    enlarged = []  # (tile side, path) of sources whose tiles are smaller than --size
    stretched = []  # (path, 'W×H') of sources that are not square
    for stem, image_path, mask_path, split in tqdm(sources, desc='checking headers', leave=False, disable=len(sources) < 50):
        height, width, channels, dtype = read_image_header(image_path)
        check_rgb_format(channels, dtype, image_path)
        if opt.format == 'aligned':
            if width % 2:
                raise UserError(f'{image_path}: aligned A|B image must have an even width, got {width}')
            width //= 2
        else:
            mask_h, mask_w, _, mask_dtype = read_image_header(mask_path)
            check_mask_format(mask_dtype, mask_path)  # found now, not after decoding every source before it
            if (mask_h, mask_w) != (height, width):
                raise UserError(f'{mask_path}: mask is {mask_w}×{mask_h} but its image {image_path} is {width}×{height}')
        tile_side = min(height, width) // opt.split
        if tile_side < 8:
            raise UserError(f'{image_path}: {width}×{height} cannot be cut into {opt.split}×{opt.split} tiles '
                            f'(tiles would be under 8 px); use a smaller --split')
        if tile_side < opt.size:
            enlarged.append((tile_side, image_path))
        if height != width:
            stretched.append((image_path, f'{width}×{height}' + (' per A|B half' if opt.format == 'aligned' else '')))
    notes = []
    if enlarged:
        side, path = min(enlarged)
        notes.append(f'note: {len(enlarged)} of {len(sources)} sources have tiles under --size {opt.size} px, enlarged '
                     f'to it (e.g. {path}: {side} px tiles at --split {opt.split})')
    if stretched:
        path, size = stretched[0]
        notes.append(f'note: {len(stretched)} of {len(sources)} sources are not square (e.g. {path}: {size}); their '
                     f'tiles are stretched to {opt.size}² as pix2pix does, so shapes change proportions: crop them '
                     f'square first to keep them')
    return notes


# ---------------------------------------------------------------- one source -> tiles

def load_pair(source, opt):
    """Decode one source once: (mask H×W or H×W×3, image H×W×3), both uint8, validated."""
    stem, image_path, mask_path, _ = source
    image = check_rgb_image(read_image_file(image_path), image_path)
    if opt.format == 'aligned':
        half = image.shape[1] // 2
        left, right = image[:, :half], image[:, half:]
        return (left, right) if opt.direction == 'AtoB' else (right, left)
    mask = read_binary_mask(mask_path, opt.mask_tolerance)
    if mask.shape != image.shape[:2]:
        raise UserError(f'{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image is '
                        f'{image.shape[1]}×{image.shape[0]}')
    return mask, image


def tile_name(stem, row, col, split):
    return stem if split == 1 else f'{stem}_r{row}c{col}'


def resize_factors(y_bounds, x_bounds, size):
    """[vertical, horizontal] factor a source piece is resized by: test.py --scale train generates raw masks at
    it, the resolution the model saw."""
    return [round(size / (y_bounds[1] - y_bounds[0]), 6), round(size / (x_bounds[1] - x_bounds[0]), 6)]


def record_path(out, split, stem):
    return os.path.join(out, split, 'sources', stem + '.json')


def transform_source(source, opt):
    """Cut, resize and save one source; the per-source record is written last and marks it done."""
    stem, image_path, mask_path, split = source
    mask, image = load_pair(source, opt)
    ys, xs = tile_bounds(mask.shape[0], opt.split), tile_bounds(mask.shape[1], opt.split)
    tiles = []
    for row in range(opt.split):
        for col in range(opt.split):
            tile_mask = resize_mask(mask[ys[row]:ys[row + 1], xs[col]:xs[col + 1]], opt.size)
            name = tile_name(stem, row, col, opt.split)
            tile_image = resize_image(image[ys[row]:ys[row + 1], xs[col]:xs[col + 1]], opt.size)
            save_npy_atomic(os.path.join(opt.out, split, 'images', name + '.npy'), tile_image)
            save_npy_atomic(os.path.join(opt.out, split, 'masks', name + '.npy'), tile_mask)
            tiles.append({'name': name, 'source': os.path.basename(image_path), 'mask_source': os.path.basename(mask_path),
                          'tile': [row, col], 'building_fraction': building_fraction(tile_mask),
                          'scale': resize_factors(ys[row:row + 2], xs[col:col + 2], opt.size)})
    write_json_atomic(record_path(opt.out, split, stem), {'source': stem, 'version': RECORD_VERSION,
                                                          'from': source_file(source, opt), 'tiles': tiles})


def source_file(source, opt):
    """The image's path under --dataroot: facades' val/1.jpg and test/1.jpg share a name, and a val/ folder added
    after a run whose val split came from test/ must not find test/'s arrays done."""
    return os.path.relpath(source[1], opt.dataroot).replace(os.sep, '/')


def is_done(source, opt):
    """A source is finished when its record (of this version, from this very file) exists and every tile it lists
    is on disk. A record that is not one this script writes (edited by hand) does not count: the source is done
    again."""
    stem, _, _, split = source
    path = record_path(opt.out, split, stem)
    if not os.path.exists(path):
        return False
    with contextlib.suppress(UserError):  # not JSON
        record = read_json(path, 'source record')
        tiles = record.get('tiles') if isinstance(record, dict) else None
        return (isinstance(tiles, list) and record.get('version') == RECORD_VERSION and len(tiles) == opt.split ** 2
                and record.get('from') == source_file(source, opt)
                and all(isinstance(t, dict) and isinstance(t.get('name'), str) and 'building_fraction' in t
                        and os.path.exists(os.path.join(opt.out, split, kind, t['name'] + '.npy'))
                        for t in tiles for kind in ('images', 'masks')))
    return False


# ---------------------------------------------------------------- whole dataset

def output_settings(opt):
    """What the arrays are made from: the options and the input folder (is_done matches sources by their path
    under --dataroot, not by the folder itself)."""
    return dict({k: getattr(opt, k) for k in OUTPUT_DEFINING_OPTIONS}, dataroot=os.path.realpath(opt.dataroot))


def has_finished_sources(out):
    """Whether any source record exists. Records are written last, each after transform.json, so only then
    does the folder hold arrays made with transform.json's settings."""
    return any(glob.glob(os.path.join(glob.escape(out), split, 'sources', '*.json')) for split in SPLITS)


def check_same_settings(opt, settings, config_path):
    """Refuse to mix arrays made with other settings. A run that failed before finishing any source
    (e.g. an unreadable first image) made nothing, so its settings are simply replaced."""
    if not os.path.exists(config_path):
        return
    previous = read_json(config_path, 'transform config')
    if not isinstance(previous, dict):
        raise UserError(f'{config_path}: not a transform config (a JSON object of options); use a new --out')
    changed = [k for k in settings if previous.get(k) != settings[k]]
    old_root = previous.get('dataroot')
    if 'dataroot' in changed and old_root and os.path.realpath(old_root) == settings['dataroot']:
        changed.remove('dataroot')  # the same folder: older versions saved the path through its symlinks
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
    outputs made with different settings. Called holding out/.lock: no other process writes there meanwhile."""
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


def split_rule(opt):
    by_folders = opt.format == 'aligned' and os.path.isdir(os.path.join(opt.dataroot, 'train'))
    return 'the train/ and val/ or test/ folders' if by_folders else f'--val_pattern {opt.val_pattern!r}'


def check_sources_in_both_splits(sources, opt):
    """Said before any decoding, so a wrong --val_pattern can be stopped at once. Only a warning: a folder with only
    a val split is what `test.py --dataroot` evaluates on held-out data; train.py refuses it."""
    for split in SPLITS:
        if not any(s[3] == split for s in sources):
            print(f'warning: {opt.dataroot}: no source is in the {split} split (sources are split by '
                  f'{split_rule(opt)}); train.py needs tiles in both train/ and val/', file=sys.stderr)


def kept_tiles(record, opt):
    """The record's tiles with at least --min_building buildings (colour label maps have no fraction: all kept)."""
    return [t for t in record['tiles'] if t['building_fraction'] is None or t['building_fraction'] >= opt.min_building]


def check_min_building_keeps_train_tiles(records, opt):
    """--min_building that drops every train tile would only fail later in train.py: say now what would keep some."""
    if records and not any(kept_tiles(r, opt) for r in records):
        fractions = [t['building_fraction'] for r in records for t in r['tiles'] if t['building_fraction'] is not None]
        raise UserError(f'{opt.out}/train: --min_building {opt.min_building} drops all tiles of its {len(records)} '
                        f'sources (the largest building fraction of a tile is {max(fractions):.3f}); re-run with a '
                        f'lower --min_building (the arrays are kept: only the manifests are rewritten)')


def write_manifests(sources, opt):
    records = {split: [read_json(record_path(opt.out, split, s[0]), 'source record') for s in sources if s[3] == split]
               for split in SPLITS}
    check_min_building_keeps_train_tiles(records['train'], opt)
    for split in SPLITS:
        tiles = [t for r in records[split] for t in kept_tiles(r, opt)]
        write_json_atomic(os.path.join(opt.out, split, 'manifest.json'),
                          {'split': split, 'size': opt.size, 'min_building': opt.min_building, 'tiles': tiles})
        dropped = sum(len(r['tiles']) for r in records[split]) - len(tiles)
        if dropped and not tiles:  # train: refused above; val: train.py would refuse it
            print(f'warning: {opt.out}/{split}: --min_building {opt.min_building} leaves out all {dropped} tiles',
                  file=sys.stderr)
        print(f'{split}: {counted(len(tiles), "tile")} from {counted(len(records[split]), "source")}'
              + (f' ({dropped} under --min_building {opt.min_building} left out)' if dropped else ''))


def transform(opt):
    sources = find_inria_sources(opt) if opt.format == 'inria' else find_aligned_sources(opt)
    check_sources_in_both_splits(sources, opt)
    notes = check_headers(sources, opt)
    with writing_alone(opt.out, '--out'):
        prepare_output(opt)
        for note in notes:
            print(note)
        todo = [s for s in sources if not is_done(s, opt)]
        if len(todo) < len(sources):
            print(f'resuming: {len(sources) - len(todo)} of {len(sources)} sources already done')
        # closed before an error line; none when every source is done
        with tqdm(total=len(todo), desc='transforming', unit='source', disable=not todo) as bar:
            if opt.workers > 1 and len(todo) > 1:
                transform_in_processes(todo, opt, bar)
            else:
                for source in todo:
                    transform_source(source, opt)
                    bar.update()
        write_manifests(sources, opt)


def transform_in_processes(todo, opt, bar):
    """Sources in --workers processes. A worker killed (out of memory, a crashing decoder) is an error, not a
    hang; after any error the running sources finish (their records are written) and the rest are dropped.
    Ctrl-C and SIGTERM are noted while the pool runs and raised once it has stopped the same way: raised inside
    the pool's own start-up or shutdown, they left a traceback or workers waiting forever."""
    with stop_signals_noted() as asked:
        # spawn: a fork of a process that already imported torch/threads can deadlock
        pool = ProcessPoolExecutor(min(opt.workers, len(todo)), mp_context=multiprocessing.get_context('spawn'),
                                   initializer=leave_stopping_to_the_parent)
        try:
            with blocked_in_new_workers():  # the workers start in the first submit()
                pending = {pool.submit(transform_source, source, opt) for source in todo}
            while pending and not asked:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # re-raises a worker's UserError
                    bar.update()
        except BrokenProcessPool:
            kill_workers(pool)
            if not asked:  # a worker the signal reached before its set-up: the signal's doing, not a crash
                raise UserError(f'{opt.out}: a worker process died (killed, probably out of memory); finished '
                                f'sources are kept: re-run, with fewer --workers if memory is short') from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    raise_noted_stop(asked)


def kill_workers(pool):
    """The workers left in a broken pool, killed. The pool's own clean-up stops them with SIGTERM, which they ignore
    (leave_stopping_to_the_parent), and then waits for them to take a stop order from the work queue: a worker killed
    while it waited on that queue dies holding the queue's lock, and the pool waited forever (seen once in CI). A
    killed worker's unfinished source is done again by the next run: its files are written atomically."""
    for process in list((pool._processes or {}).values()):  # a public kill_workers() comes with Python 3.14
        process.kill()


@contextlib.contextmanager
def blocked_in_new_workers():
    """Ctrl-C and SIGTERM blocked in this thread while it starts worker processes, which inherit the blocked set: a
    signal to the whole process group then waits in a starting worker until leave_stopping_to_the_parent ignores it.
    Unblocked, it killed the worker half-started, and the pool waited forever for it. This process gets its own
    copy as it unblocks (stop_signals_noted notes it)."""
    if not hasattr(signal, 'pthread_sigmask'):  # Windows: no process groups to signal either
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def leave_stopping_to_the_parent():
    """Worker set-up. Ctrl-C or a SIGTERM to the process group stops the parent, which lets the running sources
    (and the few already handed to the workers) finish, their records written, and drops the rest; a worker dying
    of the signal instead would read as a crash. A parent gone without that (kill -9) left its workers waiting
    forever for work, outside the folder lock: they now exit with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    threading.Thread(target=exit_when_closed, args=(parent.sentinel,), daemon=True).start()


def exit_when_closed(sentinel):
    multiprocessing.connection.wait([sentinel])
    os._exit(1)  # a half-written tile is a temp file, removed by the next run


def main(argv=None):
    opt = parse_args(argv)
    check_options(opt)
    if opt.make_synthetic:
        written = make_synthetic_inria(opt.make_synthetic, opt.n_tiles, opt.tile_size, opt.seed)
        where = f'{opt.make_synthetic}/images and {opt.make_synthetic}/gt'
        if not written:
            print(f'all {opt.n_tiles} synthetic tiles were already in {where}')
        elif len(written) < opt.n_tiles:
            print(f'wrote {len(written)} of {opt.n_tiles} synthetic tiles to {where} (the rest were there)')
        else:
            print(f'wrote {len(written)} synthetic tiles to {where}')
        return
    transform(opt)
    print(f'done: {opt.out}')


if __name__ == '__main__':
    run_cli(main)
