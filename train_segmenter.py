"""Train a small building segmenter on the real aerial images: the judge of "mask fidelity".

    python train_segmenter.py --dataroot data/inria286                       # -> runs/segmenter/segmenter.pt
    python train_segmenter.py --dataroot data/inria286 --n_epochs 200 --out runs/seg200.pt

The pix2pix paper scores generated images by how well a segmenter trained on real photos recovers the input
labels from them (the "FCN-score"). Here the segmenter is one of our own generators run backwards
(image -> mask, networks.define_G with input_nc 3 and output_nc 1), trained from scratch, so nothing is
downloaded. Its tanh output y is read as the building probability p = (y + 1) / 2.

At the end it prints IoU / F1 on the real validation images (centre crops): the upper bound that the same
scores on generated images should be compared with. The checkpoint holds the generator's usual config keys,
so test.py loads it like any generator; 'role' is 'segmenter' and 'val_real' holds those scores.
"""
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import networks
from dataset import (EpochPlan, batch_on_device, center_crop_batch, check_crop_and_batch_fit, check_seed,
                     check_val_fits, load_split, place_split, training_scale)
from metrics import building_scores
from utils import (CHECKPOINT_FORMAT, ArgumentParser, UserError, check_counts, check_positive, load_checkpoint,
                   make_writable_dir, pick_device, remove_stale_temp_files, run_cli, save_checkpoint)


def build_parser():
    p = ArgumentParser(__doc__)
    a = p.add_argument
    a('--dataroot', required=True, help='folder made by transform_dataset.py (holds train/ and val/)')
    a('--out', default=os.path.join('runs', 'segmenter', 'segmenter.pt'), help='checkpoint to write (replaced)')
    a('--netG', default='resnet_6blocks', choices=networks.GENERATORS, help='segmenter architecture')
    a('--ngf', type=int, default=16, help='filters in the first conv layer')
    a('--crop_size', type=int, default=256, help='random crop side for training, centre crop for validation')
    a('--batch_size', type=int, default=8, help='images per step')
    a('--n_epochs', type=int, default=100, help='epochs (the lr follows a cosine down to 0 over them)')
    a('--lr', type=float, default=2e-4, help='Adam learning rate')
    a('--seed', type=int, default=0, help='seed for weights, data order and augmentation')
    p.add_device_option()
    return p


def check_options(opt):
    check_counts(opt, ('batch_size', 'n_epochs', 'ngf', 'crop_size'))
    check_positive(opt, ('lr',))
    check_seed(opt.seed)
    problem = networks.generator_size_problem(opt.netG, opt.crop_size)
    if problem:
        raise UserError(f'--crop_size {opt.crop_size}: {problem}')
    if not os.path.isdir(opt.dataroot):
        raise UserError(f'{opt.dataroot}: --dataroot not found')
    # each found only when the checkpoint is saved, after training, otherwise
    if not opt.out:
        raise UserError("--out '': give the checkpoint file name, e.g. runs/segmenter/segmenter.pt")
    if os.path.isdir(opt.out) or opt.out.endswith(os.sep):
        raise UserError(f'{opt.out}: --out is a folder; give the checkpoint file name, e.g. {opt.out}/segmenter.pt')
    if os.path.exists(opt.out) and not is_segmenter_checkpoint(opt.out):  # e.g. a run's latest.pt, mistyped
        raise UserError(f'{opt.out}: exists and is not a segmenter checkpoint; train_segmenter.py replaces only its '
                        f'own: choose another --out')


def is_segmenter_checkpoint(path):
    try:
        return load_checkpoint(path).get('role') == 'segmenter'
    except UserError:  # not a checkpoint of ours, or none at all
        return False


def load_data(opt):
    """Train and val splits as uint8 tensors, checked to suit a binary segmenter at this crop size."""
    train_masks, train_images, _ = load_split(opt.dataroot, 'train')
    val_masks, val_images, _ = load_split(opt.dataroot, 'val')
    if train_masks.shape[1] != 1:
        raise UserError(f'{opt.dataroot}: masks have {train_masks.shape[1]} channels; the segmenter needs binary '
                        f'building masks (1 channel)')
    check_crop_and_batch_fit(train_masks, opt)
    check_val_fits(val_masks, train_masks, opt)
    return train_masks, train_images, val_masks, val_images


def segmenter_config(opt):
    """The keys train.py's generator checkpoints carry (so one loader builds either), plus provenance."""
    return {'netG': opt.netG, 'input_nc': 3, 'output_nc': 1, 'ngf': opt.ngf, 'norm': 'instance',
            'no_dropout': True, 'init_type': 'normal', 'init_gain': 0.02, 'upsample': 'transpose',
            'crop_size': opt.crop_size, 'dataroot': os.path.abspath(opt.dataroot),
            'batch_size': opt.batch_size, 'n_epochs': opt.n_epochs, 'lr': opt.lr, 'seed': opt.seed}


def catch_tanh_input(model):
    """Record the input z of the model's final Tanh on every forward pass; returns the dict it lands in.

    p = (tanh(z) + 1) / 2 is exactly sigmoid(2z), so BCE-with-logits on 2z is BCE on p, computed stably:
    BCE on p itself needs log(0) guards and loses its gradient wherever float32 tanh rounds to ±1.
    """
    caught = {}
    tanh = [m for m in model.modules() if isinstance(m, torch.nn.Tanh)][-1]
    tanh.register_forward_hook(lambda module, inputs, output: caught.__setitem__('z', inputs[0]))
    return caught


def segmentation_loss(tanh_input, mask):
    """BCE of p = (tanh(z) + 1) / 2 against the building mask (building where mask > 0), as BCE-with-logits on 2z."""
    return F.binary_cross_entropy_with_logits(2 * tanh_input, (mask > 0).float())


@torch.no_grad()
def evaluate(model, masks, images, crop, device, batch_size=8):
    """Mean per-image IoU / F1 on centre crops of real images, and those of predicting building everywhere."""
    model.eval()
    scores, trivial = {'IoU': [], 'F1': []}, {'IoU': [], 'F1': []}
    for start in range(0, len(masks), batch_size):
        mask, image = center_crop_batch(masks, images, start, start + batch_size, crop, device)
        prob = (model(image) + 1) / 2
        for key, value in building_scores(prob, mask).items():
            scores[key].append(value.cpu())
        for key, value in building_scores(torch.ones_like(prob), mask).items():
            trivial[key].append(value.cpu())
    model.train()
    mean = lambda d: {key: torch.cat(values).mean().item() for key, values in d.items()}
    return mean(scores), mean(trivial)


def train(opt):
    device = pick_device(opt.device)
    torch.backends.cudnn.benchmark = True  # fixed crop size: cuDNN picks its fastest kernels once
    train_masks, train_images, val_masks, val_images = load_data(opt)
    out_dir = os.path.dirname(opt.out) or '.'
    make_writable_dir(out_dir, '--out')  # fail on an unwritable --out before training
    remove_stale_temp_files(out_dir, os.path.basename(opt.out))  # a save cut short by a kill
    config = segmenter_config(opt)
    torch.manual_seed(opt.seed)  # the same initial weights every run
    model = networks.define_G_from_config(config).to(device)
    caught = catch_tanh_input(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.n_epochs, eta_min=0)
    train_masks, train_images = place_split(train_masks, train_images, device)
    size, n_batches = train_masks.shape[-1], len(train_masks) // opt.batch_size
    for epoch in range(opt.n_epochs):
        # Aerial images have no "up": flips and 90° turns are free extra data.
        plan = EpochPlan(len(train_masks), size, opt.crop_size, opt.seed, epoch, flip=True,
                         rotate=True).to(device)
        loss_sum, started = torch.zeros((), device=device), time.perf_counter()
        for batch in tqdm(range(n_batches), desc=f'epoch {epoch + 1}/{opt.n_epochs}', leave=False):
            mask, image = batch_on_device(train_masks, train_images, plan, batch, opt.batch_size, opt.crop_size)
            model(image)
            loss = segmentation_loss(caught['z'], mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        scheduler.step()
        mean_loss = loss_sum.item() / n_batches  # the one host sync per epoch
        if not math.isfinite(mean_loss):
            raise UserError(f'segmenter training diverged at epoch {epoch + 1} (loss {mean_loss}); lower --lr')
        print(f'epoch {epoch + 1}/{opt.n_epochs}: BCE {mean_loss:.4f}, {time.perf_counter() - started:.1f} s')
    scores, trivial = evaluate(model, val_masks, val_images, opt.crop_size, device, max(opt.batch_size, 8))
    save_checkpoint(opt.out, {'format': CHECKPOINT_FORMAT, 'role': 'segmenter', 'config': config,
                              'G': model.state_dict(), 'epoch': opt.n_epochs, 'val_real': scores,
                              'data_scale': training_scale(opt.dataroot)})  # test.py compares the generator's
    print(f'val, real images ({len(val_masks)} centre {opt.crop_size}² crops): IoU {scores["IoU"]:.3f} '
          f'F1 {scores["F1"]:.3f} (predicting building everywhere: IoU {trivial["IoU"]:.3f} '
          f'F1 {trivial["F1"]:.3f})')
    print(f'saved {opt.out}')
    return scores


def main(argv=None):
    opt = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    check_options(opt)
    train(opt)
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main, stopped='nothing was saved: the segmenter is saved once it has trained every epoch'))
