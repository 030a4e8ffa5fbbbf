"""Paired mask/image arrays made by transform_dataset.py, and their augmentation.

The whole split is small (uint8, 286² per sample), so it is loaded once into one tensor, on the GPU when
it fits. Augmentation (random crop, flips, 90° rotations) is drawn per epoch from (seed, epoch) alone and
applied per batch on whatever device holds the data; the same code serves the torch Dataset below.
"""
import os

import numpy as np
import torch

from utils import UserError, counted, first_line, read_json


def load_split(root, split):
    """(masks N×Cm×H×W uint8, images N×3×H×W uint8, names) for one split, from its manifest."""
    split_dir = os.path.join(root, split)
    manifest_path = os.path.join(split_dir, 'manifest.json')
    if not os.path.isdir(split_dir):
        raise UserError(f'{split_dir}: split folder not found; {missing_split_hint(root, split)}')
    if not os.path.exists(manifest_path):
        if os.path.exists(os.path.join(root, 'transform.json')):  # manifests come last: the transform stopped
            raise UserError(f'{manifest_path}: not found: transform_dataset.py has not finished {split}/ here; run '
                            f'it again with the same options (it keeps the finished sources)')
        raise UserError(f'{manifest_path}: not found: --dataroot takes the --out folder of transform_dataset.py, '
                        f'not the images themselves')
    manifest = read_json(manifest_path, 'manifest')
    tiles = manifest.get('tiles') if isinstance(manifest, dict) else None
    names = [t.get('name') for t in tiles if isinstance(t, dict)] if isinstance(tiles, list) else []
    if not isinstance(tiles, list) or len(names) != len(tiles) or not all(isinstance(n, str) for n in names):
        # each re-run of the transform rewrites the manifests
        raise UserError(f'{manifest_path}: malformed manifest (not a list of tiles with names); re-run '
                        f'transform_dataset.py with the same options')
    if not names:
        raise UserError(f'{manifest_path}: the {split} split holds no samples')
    masks, images = [], []
    for name in names:
        masks.append(_load_array(os.path.join(split_dir, 'masks', name + '.npy')))
        images.append(_load_array(os.path.join(split_dir, 'images', name + '.npy')))
    masks = [m[..., None] if m.ndim == 2 else m for m in masks]
    for name, mask in zip(names, masks):
        check_building_mask(mask, os.path.join(split_dir, 'masks', name + '.npy'))
    for kind, arrays in (('masks', masks), ('images', images)):
        for name, array in zip(names, arrays):
            if array.shape != arrays[0].shape:  # hand-mixed folders: transform_dataset.py makes one size
                raise UserError(f'{split_dir}/{kind}/{name}.npy: shape {array.shape}, but {names[0]}.npy is '
                                f'{arrays[0].shape}; re-run transform_dataset.py into a new --out')
    masks, images = np.stack(masks), np.stack(images)
    if masks.ndim != 4 or images.ndim != 4 or masks.shape[1:3] != images.shape[1:3] or images.shape[3] != 3:
        raise UserError(f'{split_dir}: masks {masks.shape[1:]} and images {images.shape[1:]} do not pair up')
    if masks.shape[3] not in (1, 3):
        raise UserError(f'{split_dir}/masks: {masks.shape[3]} channels; masks are building masks (1 channel) or '
                        f'label maps (3), as transform_dataset.py writes them')
    to_nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
    return to_nchw(masks), to_nchw(images), names


def missing_split_hint(root, split):
    if os.path.exists(os.path.join(root, 'manifest.json')):
        return f'{root} is itself a split: give its parent, {os.path.dirname(os.path.abspath(root))}'
    made = [name + '/' for name in ('train', 'val') if os.path.isdir(os.path.join(root, name, 'masks'))]
    if made and split not in ('train', 'val'):  # e.g. --split test for facades, whose test/ the transform took as val/
        return f'transform_dataset.py makes train/ and val/ only; {root} holds {" and ".join(made)}'
    if os.path.isdir(os.path.join(root, 'gt')) or os.path.isdir(os.path.join(root, 'images')):
        return ('raw Inria-layout images: transform them with transform_dataset.py (or give test.py the mask files '
                'with --masks)')
    return f'run transform_dataset.py to make {split}/'


def check_building_mask(mask, path):
    """A one-channel mask is a building mask of 0/255, as transform_dataset.py writes it: a hand-made 0/1 one would
    train and generate as an empty mask, silently (label maps, 3 channels, may hold any colour)."""
    if mask.ndim == 3 and mask.shape[2] == 1 and not ((mask == 0) | (mask == 255)).all():
        raise UserError(f'{path}: a building mask must hold 0 and 255 only, got values {np.unique(mask)[:4].tolist()}; '
                        f're-run transform_dataset.py')


def training_scale(root):
    """The factor transform_dataset.py resized the training tiles' source pieces by (286/2500 for 5000² tiles at
    --size 286 --split 2), for test.py --scale train. None when the manifest does not record it (data transformed
    before it did) or it differs by more than 2 % between tiles or axes (sources of different sizes or shapes):
    sliding generation resamples by one factor."""
    tiles = read_json(os.path.join(root, 'train', 'manifest.json'), 'manifest')['tiles']  # checked by load_split
    factors = []
    for tile in tiles:
        scale = tile.get('scale')
        if not (isinstance(scale, list) and scale and all(isinstance(f, (int, float)) and f > 0 for f in scale)):
            return None  # transformed before tiles recorded it, or edited by hand
        factors += scale
    if max(factors) > 1.02 * min(factors):
        return None
    return round(sum(factors) / len(factors), 6)


def square_side(masks, split_dir):
    """The side of a split's square arrays: random crops are drawn from squares (transform_dataset.py makes them)."""
    height, width = masks.shape[-2:]
    if height != width:
        raise UserError(f'{split_dir}: {height}×{width} arrays, but training crops from square ones; re-run '
                        f'transform_dataset.py into a new --out')
    return width


def check_crop_and_batch_fit(train_masks, opt):
    """--crop_size and --batch_size that the training split (from --dataroot) can give."""
    size = square_side(train_masks, os.path.join(opt.dataroot, 'train'))
    if opt.crop_size > size:
        raise UserError(f'--crop_size {opt.crop_size} is larger than the {size}² arrays in {opt.dataroot}')
    if opt.batch_size > len(train_masks):
        raise UserError(f'--batch_size {opt.batch_size} is larger than the {len(train_masks)} training samples')


def check_val_fits(val_masks, train_masks, opt):
    """Hand-made val arrays that the model cannot take would fail only in the first validation, an epoch in
    (load_split has paired each split's masks with its images)."""
    where = os.path.join(opt.dataroot, 'val', 'masks')
    if val_masks.shape[1] != train_masks.shape[1]:
        raise UserError(f'{where}: {counted(val_masks.shape[1], "channel")}, but the train masks have '
                        f'{train_masks.shape[1]}; re-run transform_dataset.py into a new --out')
    height, width = val_masks.shape[-2:]
    if min(height, width) < opt.crop_size:
        raise UserError(f'{where}: {height}×{width} arrays, smaller than --crop_size {opt.crop_size} (validation '
                        f'uses centre crops of that size); re-run transform_dataset.py into a new --out')


def _load_array(path):
    if not os.path.exists(path):
        raise UserError(f'{path}: listed in the manifest but missing; re-run transform_dataset.py')
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        # transform_dataset.py redoes a source whose tiles are missing, not one whose tile is damaged
        raise UserError(f'{path}: unreadable array ({first_line(err)}); delete it and re-run transform_dataset.py '
                        'with the same options') from None
    if array.dtype != np.uint8:
        raise UserError(f'{path}: expected uint8 array, got {array.dtype}')
    return array


def to_unit_range(x_uint8):
    """uint8 [0, 255] -> float [-1, 1], the range the tanh generator produces."""
    return x_uint8.float().div_(127.5).sub_(1.0)


def check_seed(seed):
    """EpochPlan seeds a torch generator with seed * 1_000_003 + epoch, which must fit in 64 bits."""
    if not abs(seed) < 2 ** 40:
        raise UserError(f'--seed must be within ±2**40, got {seed}')


class EpochPlan:
    """Order and augmentation of one epoch, a pure function of (seed, epoch): resume needs no RNG state."""

    def __init__(self, n, size, crop, seed, epoch, flip=True, rotate=False):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        self.rotate = rotate
        self.order = torch.randperm(n, generator=g)
        self.top = torch.randint(0, size - crop + 1, (n,), generator=g)
        self.left = torch.randint(0, size - crop + 1, (n,), generator=g)
        self.hflip = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
        # Aerial images have no "up": vertical flips and 90° turns are label-preserving augmentations. Without
        # horizontal flips, no vertical ones either: a vertical flip is a horizontal one turned by 180°.
        self.vflip = torch.rand(n, generator=g) < 0.5 if rotate and flip else torch.zeros(n, dtype=torch.bool)
        self.quarter_turns = torch.randint(0, 4, (n,), generator=g) if rotate else torch.zeros(n, dtype=torch.long)
        self.host_order = self.order  # stays in RAM: picks samples from a split kept there (batch_on_device)

    @property
    def device(self):
        """Where the plan lives, with its index as a tensor reports it ('cuda' moved to reads cuda:0), so that it
        compares equal to the data's device."""
        return self.order.device

    def to(self, device):
        """Move the plan next to the data once per epoch: per-batch copies to a GPU would each wait for it."""
        for name in ('order', 'top', 'left', 'hflip', 'vflip', 'quarter_turns'):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def batch(self, index, batch_size, rank=0, world_size=1, device=None):
        """Sample positions (into `order`) of global batch `index`, this rank's share of it (on the plan's device
        unless told otherwise)."""
        positions = torch.arange(index * batch_size, (index + 1) * batch_size, device=device or self.device)
        return positions[rank::world_size]


def crop_and_flip(x, top, left, crop, hflip, vflip, quarter_turns=None, memory_format=torch.contiguous_format):
    """Per-sample crop/flip/rotate of a batch N×C×H×W on x's device, by gather indexing (no Python loop over
    pixels, and no host sync: the parameters live on the same device); the same parameters applied to mask and
    image keep them aligned. Flips come first, then quarter_turns (None: no turns) of torch.rot90 over (H, W).
    The result is laid out in memory_format."""
    if quarter_turns is not None:
        # torch.rot90 by k is a flip of W then a transpose (k=1), both flips (k=2), a flip of H then a transpose
        # (k=3): the flips join the gather's reversed indices for free; only the transpose moves pixels.
        hflip = hflip ^ ((quarter_turns == 1) | (quarter_turns == 2))
        vflip = vflip ^ (quarter_turns >= 2)
    n = x.shape[0]
    steps = torch.arange(crop, device=x.device)
    rows = top[:, None] + steps  # N×crop
    cols = left[:, None] + steps
    rows = torch.where(vflip[:, None], rows.flip(1), rows)
    cols = torch.where(hflip[:, None], cols.flip(1), cols)
    batch_idx = torch.arange(n, device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch_idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # NHWC memory
    if quarter_turns is not None:  # a select rather than indexing by nonzero(), whose data-dependent size would sync
        out = torch.where((quarter_turns % 2 == 1)[:, None, None, None], out.transpose(2, 3), out)
    # The gather writes NHWC: a channels_last batch is made here without the two copies (to NCHW in uint8, then
    # back in float) that converting it later took.
    return out.contiguous(memory_format=memory_format)


def augmented_batch(masks, images, plan, positions, crop, memory_format=torch.contiguous_format):
    """Float [-1, 1] (mask, image) batch for sample positions of an EpochPlan on the data's device."""
    idx = plan.order[positions]
    return augment_samples(masks[idx], images[idx], plan, idx, crop, memory_format)


def augment_samples(masks, images, plan, idx, crop, memory_format=torch.contiguous_format):
    """Crop/flip/rotate whole uint8 samples (already gathered, in the order of idx) with plan's draws for idx."""
    params = (plan.top[idx], plan.left[idx], crop, plan.hflip[idx], plan.vflip[idx],
              plan.quarter_turns[idx] if plan.rotate else None, memory_format)
    return to_unit_range(crop_and_flip(masks, *params)), to_unit_range(crop_and_flip(images, *params))


def place_split(masks, images, device, where='auto'):
    """Keep the uint8 split on the GPU when it fits (`where` 'auto': under a quarter of free memory, or 'cuda');
    otherwise it stays in RAM and each batch's samples travel through pinned memory (batch_on_device).
    Augmentation runs on the GPU either way."""
    if device.type != 'cuda' or where == 'cpu':
        return masks, images
    nbytes = masks.numel() + images.numel()
    if where == 'cuda' or nbytes < torch.cuda.mem_get_info(device)[0] / 4:
        return masks.to(device), images.to(device)
    print(f'note: the {nbytes / 2**30:.1f} GiB training split stays in RAM; batches are copied through pinned memory')
    return masks, images


def batch_on_device(masks, images, plan, index, batch_size, crop, rank=0, world_size=1,
                    memory_format=torch.contiguous_format):
    """This rank's share of global batch `index`, augmented, on plan's device (the training device).

    A split that lives there is gathered and augmented there. A split left in RAM (too big for the GPU) has
    only this batch's whole uint8 samples gathered into pinned memory and copied without blocking the host;
    cropping, flipping and the float conversion then run on the device, so the host moves 1 byte per pixel
    and never waits for the GPU."""
    positions = plan.batch(index, batch_size, rank, world_size)
    if masks.device == plan.device:
        return augmented_batch(masks, images, plan, positions, crop, memory_format)
    host_idx = plan.host_order[plan.batch(index, batch_size, rank, world_size, device='cpu')]
    return augment_samples(copy_rows(masks, host_idx, plan.device), copy_rows(images, host_idx, plan.device),
                           plan, plan.order[positions], crop, memory_format)


def copy_rows(x, idx, device):
    """x[idx] on device, staged in pinned memory so that the copy is asynchronous."""
    staged = torch.empty((len(idx), *x.shape[1:]), dtype=x.dtype, pin_memory=device.type == 'cuda')
    torch.index_select(x, 0, idx, out=staged)
    # torch keeps a pinned block from reuse until the copy that reads it has finished
    return staged.to(device, non_blocking=True)


def center_crop(x, crop, axes=(-2, -1)):
    """The centre crop×crop of x (a tensor or an array) over its two spatial axes: the last two of N×C×H×W or
    C×H×W, (0, 1) of an H×W(×C) array."""
    index = [slice(None)] * x.ndim
    for axis in axes:
        start = (x.shape[axis] - crop) // 2
        index[axis] = slice(start, start + crop)
    return x[tuple(index)]


def center_crop_batch(masks, images, start, stop, crop, device):
    """Centre crops of samples [start, stop) as float [-1, 1] (mask, image) on device: validation batches."""
    return (to_unit_range(center_crop(masks[start:stop], crop).to(device)),
            to_unit_range(center_crop(images[start:stop], crop).to(device)))


class PairedDataset(torch.utils.data.Dataset):
    """Dataset over one split: train = random crop/flip (/rotate) per epoch, val = centre crop (or full size).

    Items are (mask 1×crop×crop or 3×…, image 3×crop×crop) floats in [-1, 1]. Call set_epoch(e) each epoch.
    """

    def __init__(self, root, split, crop=256, train=True, rotate=False, seed=0, full_size=False):
        self.masks, self.images, self.names = load_split(root, split)
        self.size = square_side(self.masks, os.path.join(root, split)) if train else min(self.masks.shape[-2:])
        if crop > self.size:
            raise UserError(f'{os.path.join(root, split)}: arrays are {self.size}² but the crop is {crop}; '
                            f'transform with --size >= {crop}')
        self.crop, self.train, self.rotate, self.seed, self.full_size = crop, train, rotate, seed, full_size
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.plan = EpochPlan(len(self), self.size, self.crop, self.seed, epoch, rotate=self.rotate)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        if self.train:
            # Index i means "i-th sample of this epoch's shuffled order" so a plain DataLoader follows the plan.
            mask, image = augmented_batch(self.masks, self.images, self.plan, torch.tensor([i]), self.crop)
            return mask[0], image[0]
        mask, image = self.masks[i], self.images[i]
        if not self.full_size:
            mask, image = center_crop(mask, self.crop), center_crop(image, self.crop)
        return to_unit_range(mask), to_unit_range(image)
