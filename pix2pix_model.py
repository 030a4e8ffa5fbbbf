"""The pix2pix model as train.py trains it: G and D, their Adam optimisers and schedules, the GAN + L1 (+ VGG) step,
and what a checkpoint saves and restores (the counterpart of the official repo's models/pix2pix_model.py).
"""
import contextlib
import os
import warnings

import torch
import torch.distributed as dist

import networks
from train_options import (BEST_METRICS, WEIGHT_SHAPE_OPTIONS, differing_options, every_node_advice,
                           total_epochs)
from utils import (CHECKPOINT_FORMAT, UserError, amp_enabled, load_checkpoint, load_error, rng_states, set_rng_states,
                   state_dict_mismatch)

# ---------------------------------------------------------------- building blocks

def memory_format(opt):
    return torch.channels_last if opt.channels_last else torch.contiguous_format


def in_layout(batch, opt):
    """A batch laid out as the models are. A 1-channel batch is contiguous in either layout, and the stride of its
    channel axis is free, but torch reads it as the layout: convolutions suggest their output's layout from it, and
    torch.cat its output's. So it is set here: NHWC strides let torch.cat write D's (mask, image) input in
    channels_last directly; NCHW strides keep G in NCHW without --channels_last (a mask cut from NHWC memory, as the
    batch gather makes it, ran G in channels_last)."""
    batch = batch.contiguous(memory_format=memory_format(opt))
    if batch.shape[1] == 1:
        _, _, height, width = batch.shape
        channel_stride = 1 if opt.channels_last else height * width
        batch = batch.as_strided(batch.shape, (height * width, channel_stride, width, 1))  # a view of the same memory
    return batch


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


class PairedD(torch.nn.Module):
    """D on (mask, image) pairs, with the concatenation inside the call: under torch.compile it fuses with
    autocast's cast, so D's input is written once, in bf16 and D's layout (torch.cat of a bf16 fake and an fp32 real
    wrote an fp32 pair, which the first conv then cast again). Given several images (fake and real), it judges all
    their pairs in one call on the stacked batch and returns one chunk of logits per image."""

    def __init__(self, D, memory_format):
        super().__init__()
        self.D, self.memory_format = D, memory_format

    def forward(self, mask, *images):
        masks = torch.cat((mask,) * len(images)) if len(images) > 1 else mask
        stacked = torch.cat(images) if len(images) > 1 else images[0]
        pairs = torch.cat((masks, stacked), 1).contiguous(memory_format=self.memory_format)  # a no-op from in_layout
        return self.D(pairs).chunk(len(images))


def build_scheduler(opt, optimizer):
    if opt.lr_policy == 'linear':
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: linear_factor(vars(opt), epoch))
    if opt.lr_policy == 'step':
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=opt.lr_decay_iters, gamma=0.1)
    if opt.lr_policy == 'plateau':  # on a validation metric: the seed's plateau on GAN losses drove lr to 0
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=BEST_METRICS[opt.best_metric], factor=0.5,
                                                          threshold=0.01, patience=5)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_epochs(vars(opt)), eta_min=0)


def linear_factor(config, epoch):
    """Constant for n_epochs, then linearly towards 0 over n_epochs_decay (0-based epoch): the official formula,
    stepped one epoch later than the official code steps it (README: "Where results can differ")."""
    return 1.0 - max(0, epoch + 1 - config['n_epochs']) / float(config['n_epochs_decay'] + 1)


def apply_linear_rule(sched):
    """The current epoch's rate from the rule built from this run's options. The linear rule reads --n_epochs and
    --n_epochs_decay, which a resume may extend; the restored optimiser holds the rate of the saved rule. (The
    same options give the same float: a plain resume stays bit-identical.)"""
    for group, base_lr, rule in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group['lr'] = base_lr * rule(sched.last_epoch)


def build_vgg_loss(opt):
    """The VGG perceptual loss; a missing or unusable weights file is the user's to fix: one line, no traceback."""
    try:
        return networks.VGGLoss(opt.vgg_weights)
    except Exception as err:  # torch.load of a damaged or foreign file raises many types
        message = load_error(err)
        if opt.vgg_weights and opt.vgg_weights not in message:  # torch's own errors do not name the file
            message = f'{opt.vgg_weights}: {message}'
        raise UserError(('--vgg_weights: ' if opt.vgg_weights else '') + message) from None


def seed_dropout_noise(opt, rank):
    torch.manual_seed(opt.seed + 1 + rank)  # each process its own noise; the weights were drawn from opt.seed


def adam(params, opt):
    # fused: one kernel over all parameters, on CUDA and CPU alike (bench.py's "+ fused Adam" row: 1.06-1.13× on
    # a whole training step on 2 CPU cores)
    return torch.optim.Adam(params, lr=opt.lr, betas=(opt.beta1, 0.999), fused=True)


def lay_out_state_like_params(optimizer):
    """A resume may switch --channels_last, and load_state_dict keeps the saved moments' memory layout: the fused
    Adam step would then pair each weight with another element's moments (CPU, silently) or refuse the mix (CUDA)."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param).copy_(value)


# ---------------------------------------------------------------- the trainer

class Trainer:
    """Models, optimisers, schedules and the bookkeeping that a checkpoint must restore."""

    def __init__(self, opt, device, rank, world_size):
        self.opt, self.device, self.rank, self.world_size = opt, device, rank, world_size
        self.G, self.D = build_models(opt, device, world_size)
        self.opt_G, self.opt_D = adam(self.G.parameters(), opt), adam(self.D.parameters(), opt)
        self.sched_G, self.sched_D = build_scheduler(opt, self.opt_G), build_scheduler(opt, self.opt_D)
        self.gan_loss = networks.GANLoss(opt.gan_mode).to(device)
        self.vgg_loss = build_vgg_loss(opt).to(device) if 'vgg' in opt.content_loss else None
        self.epoch, self.next_batch, self.iteration = 0, 0, 0
        self.history = []  # {'epoch', 'PSNR', 'SSIM', 'L1'} per validation: the best ones are read from it
        self.data_scale = None  # dataset.training_scale of the data, set by train.py: for test.py --scale train
        self.amp = amp_enabled(opt.amp, device)
        paired_D = PairedD(self.D, memory_format(opt))
        self.G_run, self.D_run = self.G, paired_D  # what the step calls: maybe DDP-wrapped and/or compiled
        if world_size > 1:
            # A 1-channel input's first conv: its grad is laid out [N, 1, k, k] with strides DDP's bucket does not
            # expect, though the memory order is the same (the odd stride is on a size-1 axis); a harmless copy.
            warnings.filterwarnings('ignore', r'(?s)Grad strides do not match bucket view strides.*'
                                              r'grad\.sizes\(\) = \[\d+, 1, ', UserWarning)
            ids = [device.index] if device.type == 'cuda' else None
            self.G_run = torch.nn.parallel.DistributedDataParallel(self.G, device_ids=ids)
            self.D_run = torch.nn.parallel.DistributedDataParallel(paired_D, device_ids=ids)
        # The G step calls D without DDP: it is frozen there, so DDP must not wait for its gradients.
        self.D_frozen = paired_D
        if opt.compile:
            # CUDA graphs (--compile_mode reduce-overhead) for G alone. torch's CUDA graph trees take a forward that
            # follows a backward for the start of a new step, and reuse the memory of the last step's outputs; the D
            # step's backward comes between G's forward and G's backward, which still needs G's output and activations
            self.G_run = torch.compile(self.G_run, mode=opt.compile_mode)
            self.D_run, self.D_frozen = torch.compile(self.D_run), torch.compile(paired_D)

    def state(self):
        """What a checkpoint holds. Every rank must call it: it gathers their RNG states."""
        return {'format': CHECKPOINT_FORMAT, 'config': vars(self.opt), 'G': self.G.state_dict(),
                'D': self.D.state_dict(), 'opt_G': self.opt_G.state_dict(), 'opt_D': self.opt_D.state_dict(),
                'sched_G': self.sched_G.state_dict(), 'sched_D': self.sched_D.state_dict(),
                'epoch': self.epoch, 'next_batch': self.next_batch, 'iteration': self.iteration,
                'history': self.history, 'data_scale': self.data_scale,
                'rng': self.rng_states_of_all_ranks()}

    def rng_states_of_all_ranks(self):
        """One RNG state per rank, in rank order: under torchrun every process draws its own dropout noise."""
        if self.world_size == 1:
            return [rng_states(self.device)]
        states = [None] * self.world_size
        dist.all_gather_object(states, rng_states(self.device))
        return states

    def restore(self, state):
        self.G.load_state_dict(state['G'])
        self.D.load_state_dict(state['D'])
        for name in ('opt_G', 'opt_D', 'sched_G', 'sched_D'):
            getattr(self, name).load_state_dict(state[name])
        for optimizer in (self.opt_G, self.opt_D):
            lay_out_state_like_params(optimizer)
        self.epoch, self.next_batch, self.iteration = state['epoch'], state['next_batch'], state['iteration']
        self.history = state['history']
        if self.opt.lr_policy == 'linear':
            for sched in (self.sched_G, self.sched_D):
                apply_linear_rule(sched)
        self.restore_rng(state['rng'])

    def restore_rng(self, saved):
        """Each rank continues its own noise stream. Saved by another number of processes, the ranks that have no
        state (and all but rank 0 for a checkpoint older than per-rank states) start a fresh stream as a new run
        does; such a run goes on correctly but is not bit-identical to an uninterrupted one."""
        states = saved if isinstance(saved, list) else [saved]  # older checkpoints: rank 0's state only
        if self.rank < len(states):
            set_rng_states(states[self.rank], self.device)
        else:
            seed_dropout_noise(self.opt, self.rank)
        if len(states) != self.world_size and self.rank == 0:
            print(f'note: the checkpoint holds the RNG states of {len(states)} process(es), this run has '
                  f'{self.world_size}: dropout noise goes on from them where it can, so this run will not equal '
                  f'an uninterrupted one bit for bit')

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def judge_fake_and_real(self, mask, fake, real):
        """D's logits on (mask, fake) and on (mask, real). With per-sample normalisation (instance, none) one call on
        both halves computes what two calls do, with half the kernel launches and twice the rows per convolution;
        batch norm would share its statistics between the halves, so it keeps the official repo's two calls."""
        if self.opt.norm == 'batch':
            return self.D_run(mask, fake)[0], self.D_run(mask, real)[0]
        return self.D_run(mask, fake, real)

    def train_step(self, mask, real):
        """One D step on (mask, real) vs (mask, G(mask).detach()), then one G step with D frozen.
        Returns detached loss tensors: no host sync here."""
        with self.autocast():
            fake = self.G_run(mask)
            judged_fake, judged_real = self.judge_fake_and_real(mask, fake.detach(), real)
            loss_D_fake = self.gan_loss(judged_fake, False)
            loss_D_real = self.gan_loss(judged_real, True)
            loss_D = 0.5 * (loss_D_fake + loss_D_real)
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()

        self.D.requires_grad_(False)
        with self.autocast():
            loss_G_GAN = self.gan_loss(self.D_frozen(mask, fake)[0], True, for_discriminator=False)
            train_l1 = 'l1' in self.opt.content_loss
            # logged without L1 in the loss too (detached): a flat 0 on its curve read as a perfect reconstruction
            loss_G_L1 = torch.nn.functional.l1_loss(fake if train_l1 else fake.detach(), real)
            loss_G_VGG = self.vgg_loss(fake, real) if self.vgg_loss is not None else fake.new_zeros(())
            l1_term = self.opt.lambda_L1 * loss_G_L1 if train_l1 else 0.0
            loss_G = loss_G_GAN + l1_term + self.opt.lambda_VGG * loss_G_VGG
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        return torch.stack([loss_G_GAN, loss_G_L1, loss_G_VGG, loss_D_real, loss_D_fake]).detach().float()

    def step_schedulers(self, val_metrics):
        """After each epoch; plateau only after a validation that counts (val_metrics, else None)."""
        if self.opt.lr_policy != 'plateau':
            self.sched_G.step()
            self.sched_D.step()
        elif val_metrics is not None:
            self.sched_G.step(val_metrics[self.opt.best_metric])
            self.sched_D.step(val_metrics[self.opt.best_metric])

    def nonfinite_models(self):
        """['G'], ['D'], both or none: the models whose weights or buffers (batch-norm statistics) hold NaN/inf
        (one host sync)."""
        models = (self.G, self.D)
        finite = [torch.stack([torch.isfinite(t).all() for t in (*model.parameters(), *model.buffers())]).all()
                  for model in models]
        return [name for name, ok in zip(('G', 'D'), torch.stack(finite).tolist()) if not ok]

    @torch.no_grad()
    def generate(self, mask):
        """G in eval mode (dropout off, batch-norm running statistics), then back to training. The mask in the
        models' layout: a centre crop of a 1-channel mask has NHWC strides, and validation ran G in channels_last
        where test.py's crop mode runs it NCHW (16.79 against 17.06 dB on one run: see in_layout)."""
        self.G.eval()
        with self.autocast():
            fake = self.G(in_layout(mask, self.opt)).float()
        self.G.train()
        return fake


LOSS_NAMES = ('G_GAN', 'G_L1', 'G_VGG', 'D_real', 'D_fake')


def init_from_checkpoint(trainer, path):
    """--init_from: G and D start from another run's weights; the optimisers, schedule, epochs and validation history
    start fresh (every process loads the same file: the replicas stay identical)."""
    if not os.path.isfile(path):
        raise UserError(f'{path}: --init_from checkpoint not found{every_node_advice()}')
    state = load_checkpoint(path)
    saved = state.get('config')
    if state.get('role', 'generator') != 'generator' or not isinstance(saved, dict) or not {'G', 'D'} <= state.keys():
        raise UserError(f'{path}: not a checkpoint of train.py (latest.pt, best.pt or epoch_<N>.pt of a run)')
    for name in ('G', 'D'):
        weights = state[name]
        mismatch = state_dict_mismatch(getattr(trainer, name).state_dict(), weights) if isinstance(weights, dict) \
            else 'not a state_dict'
        if mismatch:  # options that shape the weights (and --no_dropout, which renumbers a ResNet's layers)
            theirs, ours = differing_options(saved, trainer.opt, (*WEIGHT_SHAPE_OPTIONS, 'no_dropout'))
            why = f'trained with {theirs}, not {ours}' if theirs else 'its config does not describe its weights'
            raise UserError(f'{path}: {why}; --init_from needs networks whose weights fit ({name}: {mismatch})')
    trainer.G.load_state_dict(state['G'])
    trainer.D.load_state_dict(state['D'])
