"""Image metrics: PSNR/SSIM/L1 (train.py's validation, test.py), the seam score, the mask-fidelity IoU/F1 of a
building segmenter, and FID/KID from a local InceptionV3 file (never downloaded).
"""
import os
import warnings

import numpy as np

from image_io import tile_bounds
from utils import UserError, counted, load_error


def image_metrics(fake, real):
    """Per-image PSNR (dB), SSIM and L1 of generator outputs against targets, both in [-1, 1].

    Computed on [0, 1] images with data range 1 (the seed used [-1, 1] with peak 1: 6 dB off).
    SSIM is torchmetrics' Gaussian-window implementation, not a hand-rolled one. Always in float32: inside a
    caller's bf16 autocast (generation.py's example), SSIM's convolutions ran in bf16 and gave 0.09 for 0.24.
    """
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    with torch.autocast(fake.device.type, enabled=False):
        fake01 = ((fake.float() + 1) / 2).clamp(0, 1)
        real01 = ((real.float() + 1) / 2).clamp(0, 1)
        psnr = peak_signal_noise_ratio(fake01, real01, data_range=1.0, reduction='none', dim=(1, 2, 3))
        ssim = structural_similarity_index_measure(fake01, real01, data_range=1.0, reduction='none')
        l1 = (fake01 - real01).abs().mean(dim=(1, 2, 3))
    return {'PSNR': psnr, 'SSIM': ssim, 'L1': l1}


def building_scores(prob, mask, threshold=0.5):
    """Per-image IoU and F1 of the building class: a segmenter's probabilities against the true mask.

    prob: N×1×H×W building probabilities in [0, 1] (for our segmenters p = (G(image) + 1) / 2); a pixel is
    predicted building where prob > threshold. mask: N×1×H×W, building where mask > 0, so the repo's [-1, 1]
    masks, {0, 1} and uint8 {0, 255} masks all read the same. An image with no building in the mask and none
    predicted scores IoU = F1 = 1 (nothing to find, nothing wrongly found); buildings in only one of the two
    score 0. Returns {'IoU': N floats, 'F1': N floats}; average them over a split for the FCN-score.
    """
    import torch
    if prob.shape != mask.shape:
        raise ValueError(f'building_scores: prob {tuple(prob.shape)} and mask {tuple(mask.shape)} differ in shape')
    if prob.numel() and prob.min() < 0:  # the likeliest slip: passing the tanh output in [-1, 1] itself
        raise ValueError('building_scores: prob must be in [0, 1]; pass (G(image) + 1) / 2, not G(image)')
    pred, true = prob > threshold, mask > 0
    dims = tuple(range(1, pred.dim()))
    tp = (pred & true).sum(dims).double()
    wrong = (pred ^ true).sum(dims).double()  # false positives + false negatives
    iou = torch.where(tp + wrong > 0, tp / (tp + wrong).clamp(min=1), 1.0)
    f1 = torch.where(tp + wrong > 0, 2 * tp / (2 * tp + wrong).clamp(min=1), 1.0)
    return {'IoU': iou.float(), 'F1': f1.float()}


SEAM_REACH = 8  # seam_score_at compares each line with this many parallel lines either side
FID_RELIABLE_SAMPLES = 50


def seam_score(image, n):
    """seam_score_at the inner lines of an n×n grid (tile_bounds): where tiles mode stitches its tiles."""
    height, width = image.shape[:2]
    if n < 2 or n > min(height, width) - 1:
        return None
    return seam_score_at(image, tile_bounds(height, n)[1:-1], tile_bounds(width, n)[1:-1])


def seam_score_at(image, rows, cols):
    """Mean |difference| of neighbouring pixels across the given lines (a row y: between rows y - 1 and y) ÷ the
    same on the SEAM_REACH parallel lines either side. ≈1: the lines are invisible; > 1: seams. The reference is
    local so that texture varying across the image (dense city vs fields) does not read as a seam. None without
    lines, or without other lines near them. Rows are read in chunks: a 5000² image needs no full-size copy."""
    height, width = image.shape[:2]
    img = image.reshape(height, width, -1)
    row_diff = np.zeros(height)  # row_diff[y] = mean |img[y] - img[y - 1]|
    col_diff = np.zeros(width)  # col_diff[x] = mean |img[:, x] - img[:, x - 1]|
    for start in range(0, height, 256):
        chunk = img[max(start - 1, 0):start + 256].astype(np.int16)
        row_diff[max(start, 1):start + 256] = np.abs(np.diff(chunk, axis=0)).mean(axis=(1, 2))
        own_rows = chunk[1:] if start else chunk  # the chunk's first row belongs to the previous chunk
        col_diff[1:] += np.abs(np.diff(own_rows, axis=1)).sum(axis=(0, 2))
    col_diff /= height * img.shape[2]
    totals = np.zeros(4)  # pixel-weighted: seam sum, seam pixels, reference sum, reference pixels
    for diff, length, line_length, lines in ((row_diff, height, width, set(rows)),
                                             (col_diff, width, height, set(cols))):
        around = {b + d for b in lines for d in range(-SEAM_REACH, SEAM_REACH + 1)}
        near = [i for i in around - lines if 1 <= i < length]
        totals += line_length * np.array([diff[sorted(lines)].sum(), len(lines), diff[near].sum(), len(near)])
    if totals[1] == 0 or totals[3] == 0:
        return None
    seam, reference = totals[0] / totals[1], totals[2] / totals[3]
    if seam == 0 and reference == 0:
        return 1.0  # a flat image has no seams
    return float(seam / max(reference, 1e-3))


def make_fid_kid(path, device):
    """(FID, KID) torchmetrics objects sharing one InceptionV3 from `path`; UserError when it cannot be built.

    Stopping, not skipping: a run asked for FID/KID, and a missing metric found only after hours of generation
    (or one computed on random weights) is worse than a clear error at the start.
    """
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UserError(f'{path}: --inception_weights file not found (nothing is downloaded; pass the local '
                        "pt_inception-2015-12-05 weights file of torch-fidelity)")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        import torch
        # a pickle that would run code stops here, whatever torch-fidelity's own load asks for
        torch.load(path, map_location='cpu', weights_only=True)
        fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=path)
        with warnings.catch_warnings():  # KID warns that it keeps features in memory: 8 KB per image here
            warnings.simplefilter('ignore')
            kid = KernelInceptionDistance(feature=fid.inception, subsets=100, subset_size=1000)
    except ModuleNotFoundError:
        raise UserError(f'{path}: FID/KID need the torch-fidelity package for their InceptionV3 '
                        '(pip install torch-fidelity)') from None
    except Exception as err:  # a wrong or truncated weights file: torch-fidelity raises many types
        raise UserError(f'{path}: cannot load InceptionV3 weights for FID/KID ({load_error(err)})') from None
    return fid.to(device), kid.to(device)


def compute_fid_kid(fid_kid, count):
    if fid_kid is None:
        return {}
    if count < 2:
        print(f'FID/KID skipped: {counted(count, "image")} with ground truth; needs at least 2')
        return {}
    if count < FID_RELIABLE_SAMPLES:
        print(f'note: FID/KID on {count} images is unreliable (the seed saw noise on 5-20); use hundreds')
    fid, kid = fid_kid
    scores = {'FID': float(fid.compute())}
    subsets_differ = count > kid.subset_size
    kid.subset_size = min(kid.subset_size, count)
    kid_mean, kid_std = kid.compute()
    scores['KID'] = float(kid_mean)
    if subsets_differ:  # with fewer images every subset is the whole set, reordered: the spread would read ~0
        scores['KID_std'] = float(kid_std)
    return scores
