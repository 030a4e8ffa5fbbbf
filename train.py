"""Train a pix2pix conditional GAN that turns building masks into aerial images.

    python train.py --dataroot data/inria286 --name inria_unet            # GPU if there is one
    python train.py --dataroot data/inria286 --name inria_unet --resume   # continue from runs/inria_unet/latest.pt
    torchrun --nproc_per_node 4 train.py --dataroot ... --batch_size 64   # data-parallel; --batch_size is global
    tensorboard --logdir runs

Run folder runs/<name>/: config.json (every option), TensorBoard events, latest.pt (every epoch, atomic),
epoch_<N>.pt (every --save_epoch_freq epochs), best.pt (best validation PSNR).
"""
import argparse
import contextlib
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import networks
from dataset import EpochPlan, batch_on_device, center_crop_batch, load_split
from utils import (CHECKPOINT_FORMAT, StopRequest, UserError, amp_enabled, image_metrics, load_checkpoint, pick_device, read_json,
                   remove_stale_temp_files, rng_states, run_cli, save_checkpoint, set_rng_states, write_json_atomic)

# Options that define the networks or the data they see: a resumed run must keep them.
ARCHITECTURE_OPTIONS = ('netG', 'netD', 'ngf', 'ndf', 'n_layers_D', 'norm', 'no_dropout', 'upsample', 'input_nc',
                        'output_nc', 'gan_mode', 'crop_size', 'init_type', 'init_gain', 'content_loss')
# Options that steer this invocation only: never taken from a saved config.
RUN_CONTROL_OPTIONS = ('resume', 'stop_epoch')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a('--dataroot', required=True, help='folder made by transform_dataset.py (holds train/ and val/)')
    a('--name', default='experiment', help='run name: outputs go to <runs_dir>/<name>/')
    a('--runs_dir', default='runs', help='parent folder of all runs (point TensorBoard here)')
    a('--netG', default='unet_256', choices=networks.GENERATORS, help='generator architecture')
    a('--netD', default='basic', choices=networks.DISCRIMINATORS, help='basic = 70×70 PatchGAN')
    a('--n_layers_D', type=int, default=3, help='conv layers of the n_layers discriminator')
    a('--ngf', type=int, default=64, help='generator filters in the first conv layer')
    a('--ndf', type=int, default=64, help='discriminator filters in the first conv layer')
    a('--norm', default='instance', choices=networks.NORMS,
      help='instance (default: it fixed the seed project\'s colour saturation), batch or none')
    a('--init_type', default='normal', choices=networks.INIT_TYPES, help='weight initialisation')
    a('--init_gain', type=float, default=0.02, help='scale of the initial weights')
    a('--no_dropout', action='store_true', help='no dropout in the U-Net decoder / ResNet blocks')
    a('--upsample', default='transpose', choices=networks.UPSAMPLES,
      help='transpose = official; resize = nearest upsample + conv, against checkerboard artefacts')
    a('--input_nc', type=int, default=None, help='mask channels (default: from the data, 1 for binary masks)')
    a('--output_nc', type=int, default=3, help='image channels')
    a('--gan_mode', default='vanilla', choices=networks.GAN_MODES, help='adversarial loss')
    a('--content_loss', default='l1', choices=('l1', 'vgg', 'l1+vgg'), help='reconstruction loss(es) for G')
    a('--lambda_L1', type=float, default=100.0, help='weight of L1 (100 beat 10 in the seed project)')
    a('--lambda_VGG', type=float, default=0.0, help='weight of the VGG perceptual loss (e.g. 10)')
    a('--vgg_weights', default=None, help='torchvision vgg19 state_dict file for the VGG loss (never downloaded)')
    a('--lr', type=float, default=2e-4, help='Adam learning rate (2e-3 collapsed to blank images in the seed)')
    a('--beta1', type=float, default=0.5, help='Adam beta1')
    a('--n_epochs', type=int, default=100, help='epochs at the initial learning rate')
    a('--n_epochs_decay', type=int, default=100, help='epochs of decay after that (linear/cosine)')
    a('--lr_policy', default='linear', choices=('linear', 'step', 'plateau', 'cosine'),
      help='plateau steps on validation PSNR')
    a('--lr_decay_iters', type=int, default=50, help='step policy: multiply lr by 0.1 every this many epochs')
    a('--batch_size', type=int, default=1, help='global batch size (split across processes under torchrun)')
    a('--crop_size', type=int, default=256, help='random crop side for training, centre crop for validation')
    a('--no_flip', action='store_true', help='no random horizontal flips')
    a('--rotate', action='store_true', help='also vertical flips and 90° turns (aerial images have no "up")')
    a('--seed', type=int, default=0, help='seed for weights, data order, augmentation and dropout')
    a('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='auto = cuda when available')
    a('--amp', default='auto', choices=('auto', 'on', 'off'), help='bf16 autocast; auto = on for CUDA')
    a('--channels_last', action='store_true', help='NHWC memory format (faster convs on GPU and some CPUs)')
    a('--compile', action='store_true', help='torch.compile G and D (slower start, faster steps)')
    a('--data_device', default='auto', choices=('auto', 'cpu', 'cuda'),
      help='where the uint8 training split lives; auto = on the GPU when it takes < 1/4 of its free memory, '
           'else in RAM with batches copied through pinned memory')
    a('--save_epoch_freq', type=int, default=5, help='keep epoch_<N>.pt every this many epochs')
    a('--val_freq', type=int, default=1, help='validate every this many epochs')
    a('--display_freq', type=int, default=1, help='TensorBoard image grid every this many validations')
    a('--n_display', type=int, default=4, help='validation samples in the image grid')
    a('--log_freq', type=int, default=50, help='iterations between loss logs (and NaN checks)')
    a('--psnr_drop_warn', type=float, default=3.0,
      help='warn when val PSNR falls this many dB below its best (the seed\'s collapse canary)')
    a('--resume', action='store_true', help='continue from <runs_dir>/<name>/latest.pt with the saved options')
    a('--stop_epoch', type=int, default=None,
      help='stop after this epoch (the lr schedule still plans all epochs); resume later with --resume')
    return p


# ---------------------------------------------------------------- options

def explicit_options(parser, argv):
    """Names of the options given on the command line (so --resume can tell them from defaults)."""
    given = set()
    for token in argv:
        action = parser._option_string_actions.get(token.split('=', 1)[0]) if token.startswith('--') else None
        if action is not None:
            given.add(action.dest)
    return given


def resolve_options(parser, argv):
    """Parse argv; with --resume, start from the saved config and allow only non-architecture overrides."""
    opt = parser.parse_args(argv)
    opt.dataroot = os.path.abspath(opt.dataroot)  # test.py reads it back from config.json, from anywhere
    run_dir = os.path.join(opt.runs_dir, opt.name)
    if not opt.resume:
        if os.path.exists(os.path.join(run_dir, 'latest.pt')):
            raise UserError(f'{run_dir} already holds a trained run; use --resume to continue it or a new --name')
        return opt
    saved = read_json(os.path.join(run_dir, 'config.json'), 'run config (nothing to --resume)')
    if not os.path.exists(os.path.join(run_dir, 'latest.pt')):
        raise UserError(f'{run_dir}/latest.pt: no checkpoint to --resume from')
    for key in explicit_options(parser, argv) - set(RUN_CONTROL_OPTIONS):
        if key in ARCHITECTURE_OPTIONS and getattr(opt, key) != saved.get(key):
            raise UserError(f'--resume: {run_dir} was trained with --{key} {saved.get(key)}, not '
                            f'{getattr(opt, key)}; start a new --name instead')
        saved[key] = getattr(opt, key)
    saved.update({key: getattr(opt, key) for key in RUN_CONTROL_OPTIONS})
    return argparse.Namespace(**{**vars(opt), **saved})


def check_options(opt):
    for key in ('batch_size', 'n_epochs', 'save_epoch_freq', 'val_freq', 'display_freq', 'log_freq', 'crop_size'):
        if getattr(opt, key) < 1:
            raise UserError(f'--{key} must be >= 1, got {getattr(opt, key)}')
    if opt.n_epochs_decay < 0:
        raise UserError(f'--n_epochs_decay must be >= 0, got {opt.n_epochs_decay}')
    if not math.isfinite(opt.lr) or opt.lr <= 0:
        raise UserError(f'--lr must be a positive number, got {opt.lr}')
    need = networks.unet_min_size(opt.netG)
    if opt.crop_size % need:
        raise UserError(f'--netG {opt.netG} needs --crop_size a multiple of {need}, got {opt.crop_size}'
                        + (' (use --netG unet_128 or a resnet for smaller crops)' if need > 4 else ''))
    if 'vgg' in opt.content_loss and opt.lambda_VGG <= 0:
        raise UserError(f'--content_loss {opt.content_loss} needs --lambda_VGG > 0 (e.g. 10)')
    if not os.path.isdir(opt.dataroot):
        raise UserError(f'{opt.dataroot}: --dataroot not found')
    for split in ('train', 'val'):
        if not os.path.isdir(os.path.join(opt.dataroot, split)):
            raise UserError(f'{opt.dataroot}: no {split}/ folder; make the dataset with transform_dataset.py')


# ---------------------------------------------------------------- setup

def setup_distributed():
    """(rank, world_size) under torchrun, (0, 1) otherwise."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    if world_size == 1:
        return 0, 1
    backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    dist.init_process_group(backend)
    return dist.get_rank(), world_size


def setup_device(opt):
    """The training device: under torchrun, each process takes its own GPU (LOCAL_RANK)."""
    if opt.device != 'cpu' and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    device = pick_device(opt.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def place_training_data(masks, images, opt, device):
    """Keep the uint8 split on the GPU when it fits; otherwise it stays in RAM and each batch's samples travel
    through pinned memory (dataset.batch_on_device). Augmentation runs on the GPU either way."""
    if device.type != 'cuda' or opt.data_device == 'cpu':
        return masks, images
    nbytes = masks.numel() + images.numel()
    if opt.data_device == 'cuda' or nbytes < torch.cuda.mem_get_info(device)[0] / 4:
        return masks.to(device), images.to(device)
    print(f'note: the {nbytes / 2**30:.1f} GiB training split stays in RAM; batches are copied through pinned memory')
    return masks, images


def memory_format(opt):
    return torch.channels_last if opt.channels_last else torch.contiguous_format


def build_models(opt, device, world_size):
    torch.manual_seed(opt.seed)  # identical initial weights on every rank and every run
    G = networks.define_G_from_config(vars(opt))
    D = networks.define_D(opt.netD, opt.input_nc + opt.output_nc, opt.ndf, opt.n_layers_D, opt.norm,
                          opt.init_type, opt.init_gain)
    if world_size > 1 and opt.norm == 'batch':
        if device.type == 'cuda':  # batch statistics over the global batch, as in one process
            G, D = (torch.nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (G, D))
        else:
            print('note: SyncBatchNorm needs CUDA; on CPU each process normalises over its own share of the batch')
    return G.to(device, memory_format=memory_format(opt)), D.to(device, memory_format=memory_format(opt))


def build_scheduler(opt, optimizer):
    total = opt.n_epochs + opt.n_epochs_decay
    if opt.lr_policy == 'linear':  # constant for n_epochs, then linearly to 0 (official pix2pix rule)
        rule = lambda epoch: 1.0 - max(0, epoch + 1 - opt.n_epochs) / float(opt.n_epochs_decay + 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, rule)
    if opt.lr_policy == 'step':
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=opt.lr_decay_iters, gamma=0.1)
    if opt.lr_policy == 'plateau':  # on validation PSNR: the seed's plateau on GAN losses drove lr to 0
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode='max', factor=0.5, threshold=0.01,
                                                          patience=5)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0)


def adam(params, opt):
    # fused: one kernel over all parameters, on CUDA and CPU alike; on 2 CPU cores it makes unet_256's Adam step
    # 5× faster than the default per-parameter loop (bench.py)
    return torch.optim.Adam(params, lr=opt.lr, betas=(opt.beta1, 0.999), fused=True)


# ---------------------------------------------------------------- checkpoints

class Trainer:
    """Models, optimisers, schedules and the bookkeeping that a checkpoint must restore."""

    def __init__(self, opt, device, rank, world_size):
        self.opt, self.device, self.rank, self.world_size = opt, device, rank, world_size
        self.G, self.D = build_models(opt, device, world_size)
        self.opt_G, self.opt_D = adam(self.G.parameters(), opt), adam(self.D.parameters(), opt)
        self.sched_G, self.sched_D = build_scheduler(opt, self.opt_G), build_scheduler(opt, self.opt_D)
        self.gan_loss = networks.GANLoss(opt.gan_mode).to(device)
        self.vgg_loss = networks.VGGLoss(opt.vgg_weights).to(device) if 'vgg' in opt.content_loss else None
        self.epoch, self.next_batch, self.iteration = 0, 0, 0
        self.best_psnr, self.best_epoch, self.history = -math.inf, -1, []
        self.amp = amp_enabled(opt.amp, device)
        self.G_run, self.D_run = self.G, self.D  # what the step calls: maybe DDP-wrapped and/or compiled
        if world_size > 1:
            ids = [device.index] if device.type == 'cuda' else None
            self.G_run = torch.nn.parallel.DistributedDataParallel(self.G, device_ids=ids)
            self.D_run = torch.nn.parallel.DistributedDataParallel(self.D, device_ids=ids)
        if opt.compile:
            self.G_run, self.D_run = torch.compile(self.G_run), torch.compile(self.D_run)
        # The G step calls the bare D: it is frozen there, so DDP must not wait for its gradients.
        self.D_frozen = torch.compile(self.D) if opt.compile else self.D

    def state(self):
        return {'format': CHECKPOINT_FORMAT, 'config': vars(self.opt), 'G': self.G.state_dict(),
                'D': self.D.state_dict(), 'opt_G': self.opt_G.state_dict(), 'opt_D': self.opt_D.state_dict(),
                'sched_G': self.sched_G.state_dict(), 'sched_D': self.sched_D.state_dict(),
                'epoch': self.epoch, 'next_batch': self.next_batch, 'iteration': self.iteration,
                'best_psnr': self.best_psnr, 'best_epoch': self.best_epoch, 'history': self.history,
                'rng': rng_states()}

    def restore(self, state):
        self.G.load_state_dict(state['G'])
        self.D.load_state_dict(state['D'])
        for name in ('opt_G', 'opt_D', 'sched_G', 'sched_D'):
            getattr(self, name).load_state_dict(state[name])
        self.epoch, self.next_batch, self.iteration = state['epoch'], state['next_batch'], state['iteration']
        self.best_psnr, self.best_epoch, self.history = state['best_psnr'], state['best_epoch'], state['history']
        set_rng_states(state['rng'])

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self, mask, real):
        """One D step on (mask, real) vs (mask, G(mask).detach()), then one G step with D frozen.
        Returns detached loss tensors: no host sync here."""
        with self.autocast():
            fake = self.G_run(mask)
            loss_D_fake = self.gan_loss(self.D_run(torch.cat((mask, fake.detach()), 1)), False)
            loss_D_real = self.gan_loss(self.D_run(torch.cat((mask, real), 1)), True)
            loss_D = 0.5 * (loss_D_fake + loss_D_real)
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()

        self.D.requires_grad_(False)
        with self.autocast():
            loss_G_GAN = self.gan_loss(self.D_frozen(torch.cat((mask, fake), 1)), True, for_discriminator=False)
            loss_G_L1 = torch.nn.functional.l1_loss(fake, real) if 'l1' in self.opt.content_loss else fake.new_zeros(())
            loss_G_VGG = self.vgg_loss(fake, real) if self.vgg_loss is not None else fake.new_zeros(())
            loss_G = loss_G_GAN + self.opt.lambda_L1 * loss_G_L1 + self.opt.lambda_VGG * loss_G_VGG
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        return torch.stack([loss_G_GAN, loss_G_L1, loss_G_VGG, loss_D_real, loss_D_fake]).detach().float()

    @torch.no_grad()
    def generate(self, mask):
        """G in eval mode (dropout off, batch-norm running statistics), then back to training."""
        self.G.eval()
        with self.autocast():
            fake = self.G(mask).float()
        self.G.train()
        return fake


LOSS_NAMES = ('G_GAN', 'G_L1', 'G_VGG', 'D_real', 'D_fake')


# ---------------------------------------------------------------- validation and logging

@torch.no_grad()
def validate(trainer, val_masks, val_images, batch_size):
    """Mean PSNR / SSIM / L1 over the centre-cropped val split (sharded across ranks, then summed)."""
    device = trainer.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # PSNR, SSIM, L1 sums and count
    for start in range(trainer.rank * batch_size, len(val_masks), batch_size * trainer.world_size):
        mask, real = center_crop_batch(val_masks, val_images, start, start + batch_size, trainer.opt.crop_size, device)
        metrics = image_metrics(trainer.generate(mask), real)
        totals += torch.stack([metrics['PSNR'].sum(), metrics['SSIM'].sum(), metrics['L1'].sum(),
                               torch.tensor(float(len(mask)), device=device)]).double()
    if trainer.world_size > 1:
        dist.all_reduce(totals)
    psnr, ssim, l1, count = totals.tolist()
    return {'PSNR': psnr / count, 'SSIM': ssim / count, 'L1': l1 / count}


def image_grid(trainer, val_masks, val_images, n):
    """mask | generated | real rows for fixed val samples, as one 3×H×W image in [0, 1]."""
    mask, real = center_crop_batch(val_masks, val_images, 0, n, trainer.opt.crop_size, trainer.device)
    fake = trainer.generate(mask)
    mask3 = mask.expand(-1, 3, -1, -1) if mask.shape[1] == 1 else mask[:, :3]
    rows = torch.cat([torch.cat((m, f, r), 2) for m, f, r in zip(mask3, fake, real)], 1)
    return ((rows + 1) / 2).clamp(0, 1).cpu()


def open_run_dir(run_dir, opt, iteration):
    """Create the run folder, write config.json, open TensorBoard; unwritable -> one clear error."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        remove_stale_temp_files(run_dir)  # checkpoint writes cut short by a kill
        write_json_atomic(os.path.join(run_dir, 'config.json'), vars(opt))
    except OSError as err:
        raise UserError(f'{run_dir}: cannot write the run folder ({err.strerror or err})') from None
    from torch.utils.tensorboard import SummaryWriter
    # purge_step hides the events a killed run logged after its last checkpoint, which are redone now
    return SummaryWriter(run_dir, purge_step=iteration if opt.resume else None)


def log_epoch(writer, trainer, metrics, seconds, images_per_s, data_share):
    epoch = trainer.epoch + 1
    writer.add_scalar('lr', trainer.opt_G.param_groups[0]['lr'], epoch)
    writer.add_scalar('time/epoch_seconds', seconds, epoch)
    writer.add_scalar('time/images_per_second', images_per_s, epoch)
    writer.add_scalar('time/data_share', data_share, epoch)
    for key, value in (metrics or {}).items():
        writer.add_scalar(f'val/{key}', value, epoch)


def check_collapse(trainer, metrics, opt):
    if metrics['PSNR'] > trainer.best_psnr:
        return
    drop = trainer.best_psnr - metrics['PSNR']
    if drop > opt.psnr_drop_warn:
        print(f'warning: val PSNR {metrics["PSNR"]:.2f} dB is {drop:.1f} dB below its best '
              f'({trainer.best_psnr:.2f} at epoch {trainer.best_epoch}); the run may be collapsing '
              f'(the seed saw this with --lr 2e-3): consider a lower --lr', file=sys.stderr)


def raise_if_not_finite(losses, trainer):
    if not torch.isfinite(losses).all():
        bad = ', '.join(n for n, v in zip(LOSS_NAMES, losses.tolist()) if not math.isfinite(v))
        raise UserError(f'training diverged at epoch {trainer.epoch + 1}, iteration {trainer.iteration}: '
                        f'{bad} became NaN/inf. Lower --lr (2e-4 works), try --gan_mode lsgan, or resume '
                        f'from an earlier epoch_<N>.pt; latest.pt holds the last finite state')


# ---------------------------------------------------------------- main loop

def train(opt, stop):
    rank, world_size = setup_distributed()
    device = setup_device(opt)
    train_masks, train_images, _ = load_split(opt.dataroot, 'train')
    val_masks, val_images, _ = load_split(opt.dataroot, 'val')
    opt.input_nc = opt.input_nc or train_masks.shape[1]
    if opt.input_nc != train_masks.shape[1]:
        raise UserError(f'--input_nc {opt.input_nc} but the masks in {opt.dataroot} have {train_masks.shape[1]} channels')
    size = train_masks.shape[-1]
    if opt.crop_size > size:
        raise UserError(f'--crop_size {opt.crop_size} is larger than the {size}² arrays in {opt.dataroot}')
    if opt.batch_size > len(train_masks):
        raise UserError(f'--batch_size {opt.batch_size} is larger than the {len(train_masks)} training samples')
    if opt.batch_size % world_size:
        raise UserError(f'--batch_size {opt.batch_size} must be divisible by the {world_size} processes')
    run_dir = os.path.join(opt.runs_dir, opt.name)
    trainer = Trainer(opt, device, rank, world_size)
    if opt.resume:
        state = load_checkpoint(os.path.join(run_dir, 'latest.pt'))
        trainer.restore(state)
        print(f'resumed from {run_dir}/latest.pt: epoch {trainer.epoch + 1}, batch {trainer.next_batch}')
    else:
        torch.manual_seed(opt.seed + 1 + rank)  # dropout noise; weights were drawn from opt.seed
    writer = None
    if rank == 0:
        writer = open_run_dir(run_dir, opt, trainer.iteration)
    train_masks, train_images = place_training_data(train_masks, train_images, opt, device)
    total_epochs = opt.n_epochs + opt.n_epochs_decay
    last_epoch = min(total_epochs, opt.stop_epoch or total_epochs)
    n_batches = len(train_masks) // opt.batch_size
    layout = memory_format(opt)
    metrics = None
    while trainer.epoch < last_epoch:
        plan = EpochPlan(len(train_masks), size, opt.crop_size, opt.seed, trainer.epoch, not opt.no_flip,
                         opt.rotate).to(device)
        running, running_n = torch.zeros(len(LOSS_NAMES), device=device), 0
        started, data_seconds, images = time.perf_counter(), 0.0, 0
        bar = tqdm(range(trainer.next_batch, n_batches), desc=f'epoch {trainer.epoch + 1}/{total_epochs}',
                   disable=rank != 0, leave=False)
        for batch in bar:
            data_start = time.perf_counter()
            mask, real = batch_on_device(train_masks, train_images, plan, batch, opt.batch_size, opt.crop_size,
                                         rank, world_size)
            mask, real = mask.contiguous(memory_format=layout), real.contiguous(memory_format=layout)
            data_seconds += time.perf_counter() - data_start
            running += trainer.train_step(mask, real)
            running_n += 1
            trainer.iteration += 1
            trainer.next_batch = batch + 1
            images += opt.batch_size
            if trainer.iteration % opt.log_freq == 0:
                means = running / running_n  # the one host sync per log interval
                if world_size > 1:  # log the global batch's losses, not rank 0's shard
                    dist.all_reduce(means)
                    means /= world_size
                raise_if_not_finite(means, trainer)
                if writer:
                    for name, value in zip(LOSS_NAMES, means.tolist()):
                        writer.add_scalar(f'loss/{name}', value, trainer.iteration)
                    bar.set_postfix({n: f'{v:.3f}' for n, v in zip(LOSS_NAMES, means.tolist())})
                running.zero_()
                running_n = 0
            if stop.signal is not None:
                break
        if stop.signal is not None and trainer.next_batch < n_batches:
            if rank == 0:
                save_checkpoint(os.path.join(run_dir, 'latest.pt'), trainer.state())
                print(f'saved {run_dir}/latest.pt (epoch {trainer.epoch + 1}, batch {trainer.next_batch}); '
                      f'continue with --resume')
            return 0 if stop.signal == signal.SIGTERM else 130
        if running_n:
            raise_if_not_finite(running / running_n, trainer)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        validated = (trainer.epoch + 1) % opt.val_freq == 0 or trainer.epoch + 1 == last_epoch
        if validated:
            metrics = validate(trainer, val_masks, val_images, max(opt.batch_size, 8))
            check_collapse(trainer, metrics, opt)
        if opt.lr_policy == 'plateau':
            if validated:
                trainer.sched_G.step(metrics['PSNR'])
                trainer.sched_D.step(metrics['PSNR'])
        else:
            trainer.sched_G.step()
            trainer.sched_D.step()
        is_best = validated and metrics['PSNR'] > trainer.best_psnr
        if is_best:
            trainer.best_psnr, trainer.best_epoch = metrics['PSNR'], trainer.epoch + 1
        if writer:
            log_epoch(writer, trainer, metrics if validated else None, seconds, images / max(seconds, 1e-9),
                      data_seconds / max(seconds, 1e-9))
            if validated and ((trainer.epoch + 1) // opt.val_freq) % opt.display_freq == 0:
                writer.add_image('val/mask|generated|real', image_grid(trainer, val_masks, val_images, opt.n_display),
                                 trainer.epoch + 1)
            writer.flush()
        summary = f'epoch {trainer.epoch + 1}/{total_epochs}: {seconds:.1f} s, {images / max(seconds, 1e-9):.1f} img/s'
        if validated:
            summary += f', val PSNR {metrics["PSNR"]:.2f} dB SSIM {metrics["SSIM"]:.3f} L1 {metrics["L1"]:.4f}'
            trainer.history.append({'epoch': trainer.epoch + 1, **metrics})
        trainer.epoch, trainer.next_batch = trainer.epoch + 1, 0
        if rank == 0:
            print(summary)
            state = trainer.state()
            if trainer.epoch % opt.save_epoch_freq == 0:
                save_checkpoint(os.path.join(run_dir, f'epoch_{trainer.epoch}.pt'), state)
            if is_best:
                save_checkpoint(os.path.join(run_dir, 'best.pt'), state)
            # latest last: a kill before it redoes this epoch (bit-identically) and rewrites the others
            save_checkpoint(os.path.join(run_dir, 'latest.pt'), state)
        if stop.signal is not None:
            return 0 if stop.signal == signal.SIGTERM else 130
    if writer:
        final = trainer.history[-1] if trainer.history else {}
        hparams = {k: v for k, v in vars(opt).items() if isinstance(v, (int, float, str, bool))}
        writer.add_hparams(hparams, {f'hparam/{k}': v for k, v in final.items() if k != 'epoch'}, run_name='hparams')
        writer.close()
        print(f'done: {run_dir} (best val PSNR {trainer.best_psnr:.2f} dB at epoch {trainer.best_epoch}); '
              f'tensorboard --logdir {opt.runs_dir}')
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    opt = resolve_options(parser, argv)
    check_options(opt)
    try:
        with StopRequest() as stop:
            return train(opt, stop)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(run_cli(main))
