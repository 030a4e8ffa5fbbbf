"""Synthetic Inria-layout data: procedural building masks and matching "aerial" images.

The demo and the tests need data whose mask -> image mapping is learnable, in the real dataset's files, folders,
dtypes and compression (RGB GeoTIFF images, LZW single-channel 0/255 masks, Inria tile names), and the full
Inria set (15 GB) cannot be fetched. Written from the command line by `transform_dataset.py --make_synthetic DIR`.

    from synthetic_inria import make_synthetic_inria, synthetic_pair
    make_synthetic_inria('data/synthetic_inria', n_tiles=20, size=1000)
    mask, image = synthetic_pair(256, seed=0)   # (256, 256) {0, 255} and (256, 256, 3) uint8
"""
import os

import numpy as np
import tifffile
from tqdm import tqdm

from image_io import write_tiff_atomic
from utils import (UserError, make_writable_dir, one_line_write_errors, read_json, remove_stale_temp_files,
                   write_json_atomic, writing_alone)

CITIES = ('austin', 'chicago', 'kitsap', 'tyrol-w', 'vienna')
SETTINGS_FILE = 'synthetic.json'  # beside images/ and gt/: what the tiles were made with
SETTING_OPTIONS = {'n_tiles': '--n_tiles', 'size': '--tile_size', 'seed': '--seed'}  # transform_dataset.py's names
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
    <out_dir>/gt/<name>.tif (uint8 {0,255}, LZW), both with GeoTIFF tags; returns the names written. Re-run with the
    same settings, it writes only the tiles missing (a killed run is completed)."""
    settings = {'n_tiles': n_tiles, 'size': size, 'seed': seed}
    check_folder_takes_them(out_dir, settings)  # before anything, the lock file too, is written there
    with writing_alone(out_dir, '--make_synthetic'):  # a second maker would delete this one's temp files
        for sub in ('images', 'gt'):
            make_writable_dir(os.path.join(out_dir, sub), 'folder for the synthetic tiles')
            remove_stale_temp_files(os.path.join(out_dir, sub))  # tiles a kill cut short
        write_json_atomic(os.path.join(out_dir, SETTINGS_FILE), settings)
        written = []
        for i, name in enumerate(tqdm(synthetic_tile_names(n_tiles), desc='synthetic tiles', disable=not progress)):
            image_path, mask_path = (os.path.join(out_dir, sub, f'{name}.tif') for sub in ('images', 'gt'))
            if os.path.exists(image_path) and os.path.exists(mask_path):  # written atomically: complete
                continue
            written.append(name)
            mask, image = synthetic_pair(size, tile_seed(seed, i))
            tags = geotiff_tags(i, size)
            with one_line_write_errors(image_path):
                write_tiff_atomic(image_path, image, photometric='rgb', extratags=tags)
            with one_line_write_errors(mask_path):
                write_tiff_atomic(mask_path, mask, photometric='minisblack', compression='lzw', extratags=tags)
    return written


def check_folder_takes_them(out_dir, settings):
    """A new or empty folder, or one make_synthetic_inria filled with the same settings (recorded in SETTINGS_FILE).
    The tiles have real Inria names: in a folder of real (or other synthetic) tiles they would replace some and
    mix with the rest."""
    record = os.path.join(out_dir, SETTINGS_FILE)
    if os.path.exists(record):
        previous = read_json(record, 'synthetic tile settings')
        if not isinstance(previous, dict):  # edited by hand: .get below would be an AttributeError traceback
            raise UserError(f'{record}: not a settings record (a JSON object); use a new folder')
        if previous != settings:
            changed = ', '.join(f'{SETTING_OPTIONS[key]} {previous.get(key)}, not {value}'
                                for key, value in settings.items() if previous.get(key) != value)
            raise UserError(f'{out_dir}: holds synthetic tiles made with other settings ({changed}); use a new folder')
    else:
        for sub in ('images', 'gt'):
            folder = os.path.join(out_dir, sub)
            if os.path.isdir(folder) and any(not name.startswith('.') for name in os.listdir(folder)):
                raise UserError(f'{folder}: already holds files; synthetic tiles (named as real Inria ones) go into '
                                f'a new or empty folder')
