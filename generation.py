"""Masks in, aerial images out: load a trained generator and run it on a mask of any size.

test.py is the command line over these; they are also the Python API for growing a dataset from forged masks:

    import torch
    from generation import generate_sliding, load_generator
    from image_io import read_mask, resize_image, resize_mask
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    G, cfg, state = load_generator('runs/inria_2x2/best.pt', device)
    mask = read_mask('forged/austin1.tif', cfg['input_nc'])  # H×W uint8 0/255 (a label map for facades models)
    height, width = mask.shape[:2]
    scale = state.get('data_scale')  # what the training tiles were resized by: 286/2500 for 2×2 tiles of 5000²
    small = resize_mask(mask, (round(height * scale), round(width * scale)))  # to the resolution G was trained at
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda'):
        image = generate_sliding(G, small, cfg['crop_size'], overlap=0.5, batch_size=16, device=device)
    image = resize_image(image, (height, width))

`image` is H×W×3 uint8, exactly the mask's size (image_io.save_png writes it atomically; image_io.save_geotiff(
'out.tif', image, 'forged/austin1.tif') also copies the mask's georeferencing): test.py --mode sliding --scale train
--batch_size 16 makes the same pixels. The scaling is for masks at the source data's resolution
(a forged 5000² Inria tile); without it the buildings come out at a scale the model never saw. Masks already at
the model's resolution skip it. Runs trained before checkpoints recorded the factor give None: compute it as
transform_dataset.py's --size / the side of the source pieces.
"""
import contextlib
import math
import os

import numpy as np
import torch
from tqdm import tqdm

import networks
from dataset import to_unit_range
from image_io import resize_image, resize_mask, tile_bounds
from utils import UserError, load_checkpoint, state_dict_mismatch, to_uint8_hwc

WINDOW_FLOOR = 0.01  # minimum blending weight, so every pixel has a non-zero weight sum


def load_generator(path, device, role='generator'):
    """(network in eval mode on device, its training config, the checkpoint) from train.py's checkpoints, or
    train_segmenter.py's (role 'segmenter': the same generator architectures, run image -> mask)."""
    state = load_checkpoint(path)
    if state.get('role', 'generator') != role:
        raise UserError(f'{path}: a {state.get("role", "generator")} checkpoint, not a {role}')
    cfg, weights = state.get('config'), state.get('G')
    if not isinstance(cfg, dict) or not isinstance(weights, dict):
        raise UserError(f'{path}: checkpoint holds no generator config and weights')
    try:
        G = networks.define_G_from_config(cfg)
    except KeyError as err:
        raise UserError(f'{path}: checkpoint config lacks {err}') from None
    except (ValueError, TypeError) as err:
        raise UserError(f'{path}: checkpoint config does not describe a generator ({err})') from None
    mismatch = state_dict_mismatch(G.state_dict(), weights)
    if mismatch:
        raise UserError(f'{path}: checkpoint does not match --netG {cfg["netG"]} --ngf {cfg["ngf"]} --norm '
                        f'{cfg["norm"]} --upsample {cfg["upsample"]} of its config ({mismatch})')
    G.load_state_dict(weights)
    return G.to(device).eval(), cfg, state


@torch.no_grad()
def run_generator(G, masks, device):
    """uint8 B×H×W(×C) masks -> float B×C×H×W generator output in [-1, 1] on device (in the caller's autocast)."""
    masks = np.asarray(masks)
    if masks.dtype != np.uint8:  # float or bool 0/1 inputs would run, silently, as near-black masks
        raise ValueError(f'run_generator takes uint8 arrays (0/255 masks, 0-255 images), got {masks.dtype}')
    x = torch.tensor(masks)  # a copy: the caller's array may be read-only (from_numpy would warn)
    # NCHW, the layout of the loaded weights: a convolution takes its layout from its input's strides, and the
    # permuted HWC label maps' strides would run G in channels_last
    x = to_unit_range((x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()).to(device))
    return G(x).float()


def generate_full(G, mask, size, device):
    """The seed's "fullsize" mode: the whole mask resized to the model size, one H×W×3 uint8 image of size²."""
    mask = checked_mask(G, mask)
    return to_uint8_hwc(run_generator(G, resize_mask(mask, size)[None], device)[0])


def generate_tiles(G, mask, n, size, batch_size, device):
    """The seed's N×N mode: every tile resized to the model size alone, so neighbours disagree at the seams."""
    mask = checked_mask(G, mask)
    check_batch_size(batch_size)
    if not 1 <= n <= min(mask.shape[:2]):
        raise ValueError(f'n must be between 1 and the mask\'s shorter side {min(mask.shape[:2])}, got {n}')
    height, width = mask.shape[:2]
    ys, xs = tile_bounds(height, n), tile_bounds(width, n)
    boxes = [(ys[r], ys[r + 1], xs[c], xs[c + 1]) for r in range(n) for c in range(n)]
    out = None
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        fake = run_generator(G, np.stack([resize_mask(mask[t:b, l:r], size) for t, b, l, r in chunk]), device)
        for (t, b, l, r), tile in zip(chunk, fake):
            tile = to_uint8_hwc(tile)
            if out is None:
                out = np.empty((height, width) + tile.shape[2:], np.uint8)
            out[t:b, l:r] = resize_image(tile, (b - t, r - l))
    return out


def checked_mask(G, mask):
    """The Python API's input, checked as test.py checks files: a uint8 H×W (or H×W×1) building mask of 0/255, or
    an H×W×C label map or image for a C-channel G. A 0/1, bool or float mask would run, silently, as an empty one.
    Returns the mask as H×W when it has one channel."""
    if not isinstance(mask, np.ndarray) or mask.ndim not in (2, 3) or not mask.size:
        shape = getattr(mask, 'shape', None)
        raise ValueError(f'mask must be a non-empty H×W or H×W×C numpy array, got {type(mask).__name__} {shape}')
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    check_input_channels(G, mask)
    if mask.dtype != np.uint8 or (mask.ndim == 2 and not ((mask == 0) | (mask == 255)).all()):  # 6 ms at 5000²
        got = mask.dtype if mask.dtype != np.uint8 else f'values {np.unique(mask)[:4].tolist()}'
        raise ValueError(f'mask must be a uint8 array of 0/255 (image_io.read_mask reads one), got {got}')
    return mask


def check_batch_size(batch_size):
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f'batch_size must be an int >= 1, got {batch_size!r}')


def check_input_channels(G, mask):
    """An RGB-read building mask into a 1-channel G is torch's 'expected input to have 1 channels' deep inside the
    first convolution; say it in the caller's terms."""
    modules = G.modules() if isinstance(G, torch.nn.Module) else ()  # a plain function may stand in for G
    takes = next((m.in_channels for m in modules if isinstance(m, torch.nn.Conv2d)), None)
    has = 1 if mask.ndim == 2 else mask.shape[2]
    if takes is not None and has != takes:
        raise ValueError(f'the generator takes {takes}-channel input (image_io.read_mask(path, {takes}) reads a file '
                         f'as one), got an array of shape {mask.shape}')


def window_weights(size):
    """1-D Hann taper sampled at pixel centres, lifted by a floor: smooth blending, never a zero weight."""
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * (torch.arange(size, dtype=torch.float32) + 0.5) / size)
    return WINDOW_FLOOR + (1 - WINDOW_FLOOR) * hann


def sliding_plan(length, window, overlap):
    """(pad before, pad after, window starts) along one axis. The padding is one overlap wide on both sides, so
    the image's own border pixels are blended from several windows like interior ones, not just a window edge."""
    stride = max(1, round(window * (1 - overlap)))
    before = window - stride
    count = max(1, math.ceil((2 * before + length - window) / stride) + 1)
    total = (count - 1) * stride + window
    return before, total - before - length, [i * stride for i in range(count)]


def window_edges(length, window, overlap):
    """Where generate_sliding's windows begin and end inside an axis of `length` pixels: where its seams would be
    if blending failed to hide them (test.py scores seams there)."""
    before, _, starts = sliding_plan(length, window, overlap)
    edges = {start - before for start in starts} | {start + window - before for start in starts}
    return sorted(edge for edge in edges if 0 < edge < length)


@torch.no_grad()
def generate_sliding(G, mask, window, overlap, batch_size, device, output_nc=3, progress=True):
    """Full-resolution output, exactly mask's size, from overlapping windows blended by window_weights (a tqdm bar
    from 64 windows on, unless progress is False: a pipeline over many masks draws its own).

    Windows run row by row in batches. Only a band of `window` rows is kept in float: once the windows reach
    row y, padded rows above y get no more contributions, so they are normalised, cropped and written into the
    uint8 output. The weights form a full separable grid, so the weight sum is row_sum[y] · col_sum[x]."""
    mask = checked_mask(G, mask)
    check_batch_size(batch_size)
    if not 0 <= overlap < 1:  # 1 would be a stride of one pixel: a window per pixel
        raise ValueError(f'overlap must be a fraction in [0, 1), got {overlap}')
    height, width = mask.shape[:2]
    top, bottom, ys = sliding_plan(height, window, overlap)
    left, right, xs = sliding_plan(width, window, overlap)
    # reflect: the generator sees plausible context (mirrored buildings) instead of an empty margin
    padded = np.pad(mask, ((top, bottom), (left, right)) + ((0, 0),) * (mask.ndim - 2), mode='reflect')
    taper = window_weights(window).to(device)
    row_sum = torch.zeros(padded.shape[0], device=device)
    col_sum = torch.zeros(padded.shape[1], device=device)
    for y in ys:
        row_sum[y:y + window] += taper
    for x in xs:
        col_sum[x:x + window] += taper
    weight = taper[:, None] * taper[None, :]
    out = np.empty((height, width, output_nc) if output_nc > 1 else (height, width), np.uint8)
    band = torch.zeros(output_nc, window, padded.shape[1], device=device)
    band_top = 0

    def flush(rows):  # padded rows [band_top, band_top + rows) are final
        lo, hi = max(band_top, top), min(band_top + rows, top + height)
        if hi > lo:
            block = band[:, lo - band_top:hi - band_top, left:left + width]
            block = block / (row_sum[lo:hi, None] * col_sum[None, left:left + width])
            out[lo - top:hi - top] = to_uint8_hwc(block)

    positions = [(y, x) for y in ys for x in xs]
    bar = tqdm(total=len(positions), desc='windows', unit='window', leave=False,
               disable=not progress or len(positions) < 64)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        fake = run_generator(G, np.stack([padded[y:y + window, x:x + window] for y, x in chunk]), device)
        for (y, x), tile in zip(chunk, fake * weight):
            if y > band_top:  # a new row of windows (stride <= window, so at most the whole band is done)
                done = y - band_top
                flush(done)
                band = torch.cat([band[:, done:], band.new_zeros(output_nc, done, band.shape[2])], 1)
                band_top = y
            band[:, :, x:x + window] += tile
        bar.update(len(chunk))
    bar.close()
    flush(window)
    return out


# ---------------------------------------------------------------- memory of one window

def peak_window_bytes(G, input_nc, size, device):
    """Peak bytes of activations for one window inside G, measured on one window.

    At every layer, the tensors alive are the inputs still held by all enclosing modules (U-Net skips, residual
    inputs: PyTorch keeps a module's arguments until it returns) plus the layer's output; storages are counted
    once, so in-place ReLUs are free. A 1.8× margin covers tensors made outside modules (torch.cat) and the
    kernels' workspace: on a CPU, a forward pass of 4-32 windows grew the process by 1.57-1.73× this count."""
    stack, peak = [], [0]

    def pre(module, args):
        stack.append([a for a in args if torch.is_tensor(a)])

    def post(module, args, output):
        tensors = [t for group in stack for t in group] + ([output] if torch.is_tensor(output) else [])
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        peak[0] = max(peak[0], sum(storages.values()))
        stack.pop()

    handles = [m.register_forward_pre_hook(pre) for m in G.modules()]
    handles += [m.register_forward_hook(post) for m in G.modules()]
    try:
        with torch.no_grad():
            G(torch.zeros(1, input_nc, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if device.type == 'cuda':
        torch.cuda.empty_cache()  # or the probe's cached blocks would count as used by available_bytes()
    return int(peak[0] * 1.8)


def available_bytes(device):
    """Free GPU memory, or the RAM this process may still take: the machine's, or less where its memory cgroup (a
    container's or a SLURM job's limit) would have the kernel kill it first."""
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    room = cgroup_room_bytes()
    return host_available_bytes() if room is None else min(host_available_bytes(), room)


def host_available_bytes():
    with contextlib.suppress(OSError, ValueError):
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')  # macOS counts no available pages: all of RAM


# (folder under /sys/fs/cgroup, limit, usage, the reclaimable page cache in memory.stat) for cgroup v2 and v1
CGROUP_MEMORY_FILES = {'v2': ('', 'memory.max', 'memory.current', 'inactive_file'),
                       'v1': ('memory', 'memory.limit_in_bytes', 'memory.usage_in_bytes', 'total_inactive_file')}


def cgroup_room_bytes(proc_cgroup='/proc/self/cgroup', root='/sys/fs/cgroup'):
    """limit - usage + inactive page cache, the least over this process's memory cgroup and those above it (a
    job's limit is often set on a parent); None where no limit is set or none can be read (not Linux)."""
    rooms = []
    with contextlib.suppress(OSError, ValueError):
        with open(proc_cgroup) as f:
            for line in f:
                _, controllers, path = line.rstrip('\n').split(':', 2)
                version = 'v2' if controllers == '' else 'v1' if 'memory' in controllers.split(',') else None
                if version:
                    rooms += cgroup_rooms(root, version, path)
    return min(rooms, default=None)


def cgroup_rooms(root, version, path):
    folder, limit_file, usage_file, cache_key = CGROUP_MEMORY_FILES[version]
    parts = [part for part in path.split('/') if part]
    rooms = []
    for depth in range(len(parts), -1, -1):  # the process's own cgroup, then each one above it
        where = os.path.join(root, folder, *parts[:depth])
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(where, limit_file)) as f:
                limit = f.read().strip()
            if limit == 'max' or int(limit) >= 2 ** 60:  # v2's and v1's "no limit"
                continue
            with open(os.path.join(where, usage_file)) as f:
                usage = int(f.read())
            with open(os.path.join(where, 'memory.stat')) as f:
                cache = next((int(line.split()[1]) for line in f if line.split()[:1] == [cache_key]), 0)
            rooms.append(max(0, int(limit) - usage + cache))
    return rooms
