"""Train a pix2pix conditional GAN that turns building masks into aerial images.

    python train.py --dataroot data/inria286 --name inria_unet            # GPU if there is one
    python train.py --dataroot data/inria286 --name inria_unet --resume   # continue from runs/inria_unet/latest.pt
    torchrun --nproc_per_node 4 train.py --dataroot ... --batch_size 64   # data-parallel; --batch_size is global
    tensorboard --logdir runs

Run folder runs/<name>/: config.json (every option), TensorBoard events, latest.pt (every epoch, atomic),
epoch_<N>.pt (every --save_epoch_freq epochs), best.pt (the best validation --best_metric, PSNR by default).
"""
import contextlib
import glob
import json
import math
import os
import platform
import signal
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from dataset import EpochPlan, batch_on_device, center_crop_batch, load_split, place_split, training_scale
from metrics import image_metrics
from pix2pix_model import (LOSS_NAMES, Trainer, in_layout, init_from_checkpoint, linear_factor, memory_format,
                           seed_dropout_noise)
from train_options import (BEST_METRICS, RUN_CONTROL_OPTIONS, across_machines, build_parser,
                           check_checkpoint_is_this_runs, check_mid_epoch_resume, check_options_fit, check_same_data,
                           data_identity, parse_options, total_epochs)
from utils import (StopRequest, UserError, counted, first_line, git_commit, load_checkpoint, pick_device, read_json,
                   remove_stale_temp_files, run_cli, save_checkpoint, write_json_atomic, write_text_atomic,
                   writing_alone)

# ---------------------------------------------------------------- setup

def setup_distributed(device, failed_here=None):
    """(rank, world_size) under torchrun, (0, 1) otherwise. NCCL only for GPU training: it takes no CPU tensors,
    so `--device cpu` on a GPU machine uses gloo. Every process then says whether its checks before this point
    failed (`failed_here`, a message), and all stop with the first such message: across machines a node that cannot
    see a path fails alone, and the others waited for it here, silently, for the whole timeout (10 min NCCL,
    30 min gloo)."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    if world_size == 1:
        return 0, 1
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    failures = [None] * world_size
    dist.all_gather_object(failures, failed_here)
    failed = [message for message in failures if message]
    if failed:
        raise UserError(failed[0])
    return dist.get_rank(), world_size


def stop_every_node(err, argv):
    """A check failed before the processes met (an option or path): within one machine every process sees the same
    files and fails alike; across machines this one joins the others to tell them, then stops."""
    if across_machines():
        device = setup_device(build_parser().parse_known_args(argv)[0])  # the device the others train on
        with contextlib.suppress(UserError):  # its own line, where several failed
            setup_distributed(device, failed_here=str(err))
    raise err


def setup_device(opt):
    """The training device: under torchrun, each process takes its own GPU (LOCAL_RANK)."""
    if opt.device != 'cpu' and torch.cuda.is_available():
        processes, gpus = int(os.environ.get('LOCAL_WORLD_SIZE', 1)), torch.cuda.device_count()
        if processes > gpus:  # two processes on one GPU: NCCL refuses them only later, with a traceback
            raise UserError(f'torchrun started {processes} processes on this machine, which shows {gpus} GPU(s): '
                            f'use --nproc_per_node {gpus}, or --device cpu')
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    device = pick_device(opt.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


# ---------------------------------------------------------------- validation and logging

@torch.no_grad()
def validate(trainer, val_masks, val_images, batch_size):
    """Mean PSNR / SSIM / L1 over the centre-cropped val split (sharded across ranks, then summed). A perfect
    copy's PSNR is inf: it is left out of the PSNR mean, as test.py leaves it out, instead of making the mean inf
    (best.pt frozen at that epoch for good, the collapse warning every epoch after)."""
    device = trainer.device
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # PSNR sum and count, SSIM and L1 sums, count
    for start in range(trainer.rank * batch_size, len(val_masks), batch_size * trainer.world_size):
        mask, real = center_crop_batch(val_masks, val_images, start, start + batch_size, trainer.opt.crop_size, device)
        metrics = image_metrics(trainer.generate(mask), real)
        finite = torch.isfinite(metrics['PSNR'])
        totals += torch.stack([metrics['PSNR'].where(finite, 0).sum(), finite.sum(), metrics['SSIM'].sum(),
                               metrics['L1'].sum(), torch.tensor(len(mask), device=device)]).double()
    if trainer.world_size > 1:
        dist.all_reduce(totals)
    psnr, psnr_count, ssim, l1, count = totals.tolist()
    return {'PSNR': psnr / psnr_count if psnr_count else math.inf, 'SSIM': ssim / count, 'L1': l1 / count}


def image_grid(trainer, val_masks, val_images, n):
    """mask | generated | real rows for fixed val samples, as one 3×H×W image in [0, 1]."""
    mask, real = center_crop_batch(val_masks, val_images, 0, n, trainer.opt.crop_size, trainer.device)
    fake = trainer.generate(mask)
    mask3 = mask.expand(-1, 3, -1, -1) if mask.shape[1] == 1 else mask[:, :3]
    rows = torch.cat([torch.cat((m, f, r), 2) for m, f, r in zip(mask3, fake, real)], 1)
    return ((rows + 1) / 2).clamp(0, 1).cpu()


def open_run_dir(run_dir, opt, trainer, command, held):
    """Create and lock the run folder (for as long as `held` is), write config.json and this start's run_log.jsonl
    entry, open TensorBoard; unwritable -> one clear error."""
    held.enter_context(writing_alone(run_dir, '--runs_dir or --name'))
    config_path = os.path.join(run_dir, 'config.json')
    before = read_json(config_path, 'run config') if opt.resume else {}  # checked by resolve_options
    changed = {key: [before[key], value] for key, value in vars(opt).items()
               if key in before and before[key] != value and key not in RUN_CONTROL_OPTIONS}
    entry = run_log_entry(opt, trainer, command, changed)
    try:
        remove_stale_temp_files(run_dir)  # checkpoint writes cut short by a kill
        write_json_atomic(config_path, vars(opt))
        append_line(os.path.join(run_dir, 'run_log.jsonl'), json.dumps(entry))
    except OSError as err:
        raise UserError(f'{run_dir}: cannot write the run folder ({err.strerror or err})') from None
    if changed:
        changes = ', '.join(f'--{key} {old} → {new}' for key, (old, new) in changed.items())
        print(f'note: --resume changes {changes} from epoch {trainer.epoch + 1} on; config.json holds the new '
              f'values, run_log.jsonl every start\'s')
    from torch.utils.tensorboard import SummaryWriter
    # TensorBoard drops the events of earlier files from purge_step on (the files stay). Resumed: those a killed run
    # logged after its checkpoint at `iteration`, which are redone now; the checkpoint's own step stays. Fresh: all
    # of them, left by an attempt that crashed before its first checkpoint.
    writer = SummaryWriter(run_dir, purge_step=trainer.iteration + 1 if opt.resume else 0)
    writer.add_text('run_log', f'```\n{json.dumps(entry, indent=2)}\n```', trainer.iteration)
    return writer


def append_line(path, line):
    """Append by rewriting the whole file atomically: a kill mid-write leaves the earlier lines as they were."""
    earlier = ''
    if os.path.exists(path):
        with open(path) as f:
            earlier = f.read()
    write_text_atomic(path, earlier + line + '\n')


def transform_settings(dataroot):
    """transform_dataset.py's options for this data, readable (config.json holds only a digest of them)."""
    path = os.path.join(dataroot, 'transform.json')
    return read_json(path, 'transform config') if os.path.exists(path) else None


def run_log_entry(opt, trainer, command, changed):
    """What a researcher needs to tell this start of the run from others: when, how it was started, where it picks
    up, what the resume changed, and the software and hardware it ran on (config.json keeps only the options)."""
    device = trainer.device
    return {'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'command': ['train.py', *command],
            'epoch': trainer.epoch + 1, 'batch': trainer.next_batch, 'iteration': trainer.iteration,
            'changed_options': changed,
            'device': f'cuda ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else device.type,
            'processes': trainer.world_size, 'bf16_autocast': trainer.amp,
            'python': platform.python_version(), 'torch': torch.__version__, 'git_commit': git_commit(),
            'transform': transform_settings(opt.dataroot)}


def log_epoch(writer, trainer, lr, metrics, seconds, images_per_s, data_share):
    """Per-epoch scalars at the global iteration, the x-axis of the loss curves too: one axis for every tag, and
    the one purge_step counts in. `lr` is the rate the epoch trained at."""
    step = trainer.iteration
    writer.add_scalar('lr', lr, step)
    writer.add_scalar('time/epoch_seconds', seconds, step)
    writer.add_scalar('time/images_per_second', images_per_s, step)
    writer.add_scalar('time/data_share', data_share, step)
    for key, value in (metrics or {}).items():
        writer.add_scalar(f'val/{key}', value, step)


def best_validation(history, metric):
    """The history entry with the best `metric` (the earliest of equals: a tie does not replace best.pt); None
    before the first validation."""
    sign = -1 if BEST_METRICS[metric] == 'min' else 1
    return max(history, key=lambda entry: sign * entry[metric], default=None)


def describe_best(trainer):
    best = best_validation(trainer.history, trainer.opt.best_metric)
    if best is None:  # stopped (--stop_epoch) before the first --val_freq epoch
        return 'no scheduled validation yet'
    return f'best val {trainer.opt.best_metric} {best[trainer.opt.best_metric]:.4g} at epoch {best["epoch"]}'


def hparam_metrics(trainer):
    """The final epoch's metrics and those of best.pt's epoch: runs are compared by the checkpoint one would use."""
    final = trainer.history[-1]  # the last epoch was validated
    best = best_validation(trainer.history, trainer.opt.best_metric)
    metrics = {f'hparam/{k}': v for k, v in final.items() if k != 'epoch'}
    return metrics | {f'hparam/best_{k}': v for k, v in best.items()}


def write_hparams(writer, trainer, run_dir):
    """The run's options and final metrics for TensorBoard's HParams table, in `<run>/hparams/`. TensorBoard keeps
    the first hparams it reads in a folder, so an extended run would be listed with its first finish's options
    beside its new metrics: the earlier file goes once the new one is written."""
    earlier = glob.glob(os.path.join(glob.escape(run_dir), 'hparams', 'events.out.tfevents.*'))
    hparams = {k: v for k, v in vars(trainer.opt).items() if isinstance(v, (int, float, str, bool))}
    writer.add_hparams(hparams, hparam_metrics(trainer), run_name='hparams')  # written and closed on return
    for path in earlier:
        os.remove(path)


def check_collapse(trainer, metrics):
    """PSNR whatever --best_metric is: its fall off a cliff was the seed's collapse canary."""
    best = best_validation(trainer.history, 'PSNR')
    drop = best['PSNR'] - metrics['PSNR'] if best else 0.0
    if drop > trainer.opt.psnr_drop_warn:
        print(f'warning: val PSNR {metrics["PSNR"]:.2f} dB is {drop:.1f} dB below its best '
              f'({best["PSNR"]:.2f} at epoch {best["epoch"]}); the run may be collapsing '
              f'(the seed saw this with --lr 2e-3): consider a lower --lr', file=sys.stderr)


def global_mean_losses(running, count, world_size):
    """The mean losses of the global batch, not this rank's shard: what is logged, and the same on every rank, so
    a NaN stops all processes together instead of leaving the others waiting in their next collective."""
    means = running / count
    if world_size > 1:
        dist.all_reduce(means)
        means /= world_size
    return means


def diverged(trainer, what):
    """The error for NaN/inf in training. Every checkpoint is saved after raise_if_diverged passed, so latest.pt,
    when there is one, holds finite weights."""
    latest = os.path.join(trainer.opt.runs_dir, trainer.opt.name, 'latest.pt')
    saved = 'latest.pt holds the last finite state' if os.path.exists(latest) else 'no checkpoint was saved yet'
    return UserError(f'training diverged at epoch {trainer.epoch + 1}, iteration {trainer.iteration}: {what} became '
                     f'NaN/inf. Start a new --name with a lower --lr (2e-4 works) or --gan_mode lsgan, or copy an '
                     f'earlier epoch_<N>.pt over latest.pt and --resume; {saved}')


def raise_if_not_finite(losses, trainer):
    if not torch.isfinite(losses).all():
        raise diverged(trainer, ', '.join(n for n, v in zip(LOSS_NAMES, losses.tolist()) if not math.isfinite(v)))


def raise_if_diverged(trainer, losses):
    """Before anything is saved: the losses since the last log step, and the weights themselves (an inf gradient
    in an epoch's last step leaves NaN weights behind losses that were still finite)."""
    losses.check_finite(trainer)
    bad = trainer.nonfinite_models()
    if bad:
        raise diverged(trainer, f'the weights of {" and ".join(bad)}')


def stop_everywhere(stop, world_size, device):
    """Whether any process was asked to stop. Under torchrun a signal can reach the processes steps apart, and one
    that stops alone leaves the others waiting forever in their next collective: so all agree (a sync, which the
    loop only asks for where it syncs anyway, at log steps and epoch ends)."""
    asked = stop.signal is not None
    if world_size == 1:
        return asked
    flag = torch.tensor([float(asked)], device=device)
    dist.all_reduce(flag)
    return flag.item() > 0


def nothing_to_train(trainer, total, last_epoch, run_dir):
    trained, into_next = trainer.epoch, trainer.next_batch  # a stop mid-epoch: batches of the epoch after
    if trained + bool(into_next) > total:  # a schedule shorter than what was trained: a mistyped --n_epochs
        done = (f'{trained} and {counted(into_next, "batch", "batches")} of epoch {trained + 1}' if into_next
                else trained)
        raise UserError(f'--resume: --n_epochs + --n_epochs_decay make {counted(total, "epoch")}, but {run_dir} has '
                        f'trained {done}; a run cannot be shortened: give at least {trained + bool(into_next)} in all')
    if trained == total:
        return (f'nothing to train: {run_dir} has finished its {counted(trained, "epoch")}; to extend it, resume with '
                f'more --n_epochs or --n_epochs_decay')
    return (f'nothing to train: {run_dir} has already trained {counted(trained, "epoch")} (--stop_epoch '
            f'{last_epoch}); resume with a later --stop_epoch, or none')


def saved_for_resume(run_dir, trainer):
    where = (f'epoch {trainer.epoch + 1}, batch {trainer.next_batch}' if trainer.next_batch
             else f'end of epoch {trainer.epoch}')
    return f'saved {run_dir}/latest.pt ({where}); continue with --resume'


def stop_exit_status(stop):
    return 130 if stop.signal == signal.SIGINT else 0  # Ctrl-C as a shell reports it; SIGTERM is a clean stop


# ---------------------------------------------------------------- main loop

class RunningLosses:
    """Loss sums since the last log step: a log interval may span epochs (after a resume, it starts at the resume).
    They stay on the device: the only host sync is at a log step."""

    def __init__(self, device, world_size):
        self.sums, self.count, self.world_size = torch.zeros(len(LOSS_NAMES), device=device), 0, world_size

    def add(self, losses):
        self.sums += losses
        self.count += 1

    def log(self, trainer, writer, bar):
        means = global_mean_losses(self.sums, self.count, self.world_size)  # the one host sync per log interval
        raise_if_not_finite(means, trainer)
        if writer:
            used = {name: value for name, value in zip(LOSS_NAMES, means.tolist())
                    if name != 'G_VGG' or 'vgg' in trainer.opt.content_loss}  # no flat line of zeros
            for name, value in used.items():
                writer.add_scalar(f'loss/{name}', value, trainer.iteration)
            if bar is not None:
                bar.set_postfix({name: f'{value:.3f}' for name, value in used.items()})
        self.sums.zero_()
        self.count = 0

    def check_finite(self, trainer):
        """At an epoch's end: the steps since the last log step must not hide a NaN until the next one."""
        if self.count:
            raise_if_not_finite(global_mean_losses(self.sums, self.count, self.world_size), trainer)


def train_epoch(trainer, split, losses, writer, stop):
    """The epoch's batches from trainer.next_batch on. Returns (stopping, images trained, seconds making batches);
    a stop ends the epoch early, after the step in flight (under torchrun, at a log step, where all agree)."""
    opt, device, world_size = trainer.opt, trainer.device, trainer.world_size
    masks, images = split
    plan = EpochPlan(len(masks), masks.shape[-1], opt.crop_size, opt.seed, trainer.epoch, not opt.no_flip,
                     opt.rotate).to(device)
    trained, data_seconds = 0, 0.0
    bar = tqdm(range(trainer.next_batch, len(masks) // opt.batch_size), leave=False, disable=trainer.rank != 0,
               desc=f'epoch {trainer.epoch + 1}/{total_epochs(vars(opt))}')
    for batch in bar:
        data_start = time.perf_counter()
        mask, real = batch_on_device(masks, images, plan, batch, opt.batch_size, opt.crop_size, trainer.rank,
                                     world_size, memory_format(opt))
        mask, real = in_layout(mask, opt), in_layout(real, opt)
        data_seconds += time.perf_counter() - data_start
        losses.add(trainer.train_step(mask, real))
        trainer.iteration += 1
        trainer.next_batch = batch + 1
        trained += opt.batch_size
        at_log_step = trainer.iteration % opt.log_freq == 0
        if at_log_step:
            losses.log(trainer, writer, bar)
        if (at_log_step or world_size == 1) and stop_everywhere(stop, world_size, device):
            return True, trained, data_seconds
    return False, trained, data_seconds


def validate_epoch(trainer, val, epoch, last_epoch):
    """(metrics or None, validated, report_only, is_best) of the epoch that has just trained. A job ended by
    --stop_epoch between validations reports one, kept out of the history, best.pt and the plateau schedule: those
    see the validations of the uninterrupted run."""
    opt = trainer.opt
    validated = epoch % opt.val_freq == 0 or epoch == total_epochs(vars(opt))
    report_only = not validated and epoch == last_epoch
    metrics = validate(trainer, *val, max(opt.batch_size, 8)) if validated or report_only else None
    is_best = False
    if validated:
        check_collapse(trainer, metrics)
        trainer.history.append({'epoch': epoch, **metrics})
        is_best = best_validation(trainer.history, opt.best_metric) is trainer.history[-1]
    return metrics, validated, report_only, is_best


def save_epoch_checkpoints(trainer, writer, run_dir, state, is_best):
    """Rank 0's files of the epoch: epoch_<N>.pt, best.pt, the hparams at the run's end, then latest.pt."""
    opt, epoch = trainer.opt, trainer.epoch
    if epoch % opt.save_epoch_freq == 0:
        save_checkpoint(os.path.join(run_dir, f'epoch_{epoch}.pt'), state)
    if is_best:
        save_checkpoint(os.path.join(run_dir, 'best.pt'), state)
    if epoch == total_epochs(vars(opt)):
        write_hparams(writer, trainer, run_dir)
    # latest last: a kill before it redoes this epoch (bit-identically) and rewrites the others
    save_checkpoint(os.path.join(run_dir, 'latest.pt'), state)


def end_epoch(trainer, val, writer, run_dir, timing, last_epoch, losses):
    """Validation, the lr schedules, TensorBoard, the epoch's line, then the checkpoints (latest.pt last). The job's
    last epoch also logs the losses since the last log step and, at the run's end, the hparams: before latest.pt,
    since a kill after it leaves a resume nothing to train, and so nothing that would write them."""
    opt, epoch = trainer.opt, trainer.epoch + 1  # the epoch that has just trained
    total = total_epochs(vars(opt))
    seconds, trained, data_seconds = timing
    images_per_s = trained / max(seconds, 1e-9)
    trained_lr = trainer.opt_G.param_groups[0]['lr']  # before the scheduler moves it on to the next epoch's
    metrics, validated, report_only, is_best = validate_epoch(trainer, val, epoch, last_epoch)
    counted_metrics = metrics if validated else None  # a report-only validation moves neither plateau nor curves
    trainer.step_schedulers(counted_metrics)
    if epoch == last_epoch and losses.count:  # the curves reach the job's last iteration (on every rank: a collective)
        losses.log(trainer, writer, None)
    if writer:
        log_epoch(writer, trainer, trained_lr, counted_metrics, seconds, images_per_s,
                  data_seconds / max(seconds, 1e-9))
        if validated and ((epoch // opt.val_freq) % opt.display_freq == 0
                          or epoch == total):  # the final model's grid, whatever the freq
            writer.add_image('val/mask|generated|real', image_grid(trainer, *val, opt.n_display), trainer.iteration)
        writer.flush()
    summary = f'epoch {epoch}/{total}: {seconds:.1f} s, {images_per_s:.1f} img/s'
    if metrics:
        summary += f', val PSNR {metrics["PSNR"]:.2f} dB SSIM {metrics["SSIM"]:.3f} L1 {metrics["L1"]:.4f}'
    if report_only:
        summary += f' (reported only: the history, best.pt and plateau keep to --val_freq {opt.val_freq})'
    trainer.epoch, trainer.next_batch = epoch, 0
    state = trainer.state()  # on every rank: it gathers their RNG states
    if trainer.rank == 0:
        print(summary)
        save_epoch_checkpoints(trainer, writer, run_dir, state, is_best)


def finish_run(writer, trainer, run_dir, last_epoch):
    opt = trainer.opt
    total = total_epochs(vars(opt))
    writer.close()
    if last_epoch < total:
        print(f'stopped after epoch {last_epoch} of {total} (--stop_epoch): continue with --resume; '
              f'{describe_best(trainer)} so far')
    else:
        print(f'done: {run_dir} ({describe_best(trainer)}); tensorboard --logdir {opt.runs_dir}')


def resume_from(trainer, path):
    state = load_checkpoint(path)
    check_checkpoint_is_this_runs(state, trainer.opt, path)
    try:
        check_mid_epoch_resume(state, trainer.opt, os.path.dirname(path))
        trainer.restore(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # a checkpoint edited or cut by hand
        if isinstance(err, RuntimeError) and 'state_dict' not in str(err):  # e.g. out of memory: not the file's fault
            raise
        problem = f'no {err}' if isinstance(err, KeyError) else first_line(err)
        raise UserError(f'{path}: cannot resume from it ({problem}); resume from a copy of an epoch_<N>.pt or '
                        f'best.pt saved as latest.pt') from None
    if trainer.rank == 0:
        note_a_rising_linear_rate(trainer, state['config'])


def note_a_rising_linear_rate(trainer, saved):
    """A longer --n_epochs or --n_epochs_decay redraws the linear schedule as if planned from the start: a run far
    into its decay can go back up (2+2 epochs extended to 4+2: 6.7e-5 at epoch 4, then 1.3e-4)."""
    opt, epoch = trainer.opt, trainer.epoch
    last_trained = epoch if trainer.next_batch else epoch - 1  # mid-epoch, the epoch goes on at the new rate
    if opt.lr_policy != 'linear' or last_trained < 0 or epoch >= total_epochs(vars(opt)):
        return
    last, next_ = opt.lr * linear_factor(saved, last_trained), opt.lr * linear_factor(vars(opt), epoch)
    if next_ > last:
        print(f'note: the linear lr schedule is redrawn for --n_epochs {opt.n_epochs} --n_epochs_decay '
              f'{opt.n_epochs_decay} as if planned from the start: epoch {epoch + 1} trains at {next_:.3g}, up from '
              f'{last:.3g} at epoch {last_trained + 1}')


def train(opt, stop, held, command=()):
    device = setup_device(opt)  # first: each process must be on its own GPU before NCCL starts
    rank, world_size = setup_distributed(device)
    train_masks, train_images, _ = load_split(opt.dataroot, 'train')
    val = load_split(opt.dataroot, 'val')[:2]
    run_dir = os.path.join(opt.runs_dir, opt.name)
    check_same_data(opt, data_identity(opt.dataroot), run_dir)
    check_options_fit(opt, train_masks, train_images, val[0], device, world_size)
    total = total_epochs(vars(opt))
    last_epoch = min(total, opt.stop_epoch or total)
    trainer = Trainer(opt, device, rank, world_size)
    trainer.data_scale = training_scale(opt.dataroot)  # from the data, not a resumed checkpoint: it may be older
    if opt.resume:
        resume_from(trainer, os.path.join(run_dir, 'latest.pt'))
        if trainer.epoch >= last_epoch:  # before the run folder is touched: nothing in it changes
            message = nothing_to_train(trainer, total, last_epoch, run_dir)  # or an error, on every rank
            if rank == 0:
                print(message)
            return 0
    else:
        if opt.init_from:
            init_from_checkpoint(trainer, opt.init_from)
        seed_dropout_noise(opt, rank)
    writer = None
    if rank == 0:
        writer = open_run_dir(run_dir, opt, trainer, command, held)  # locked: another process may be training
        if opt.resume:
            print(f'resumed from {run_dir}/latest.pt: epoch {trainer.epoch + 1}, batch {trainer.next_batch}')
    split = place_split(train_masks, train_images, device, opt.data_device)
    n_batches = len(train_masks) // opt.batch_size
    losses = RunningLosses(device, world_size)
    while trainer.epoch < last_epoch:
        started = time.perf_counter()
        stopping, trained, data_seconds = train_epoch(trainer, split, losses, writer, stop)
        raise_if_diverged(trainer, losses)
        if stopping and trainer.next_batch < n_batches:
            state = trainer.state()
            if rank == 0:
                save_checkpoint(os.path.join(run_dir, 'latest.pt'), state)
                print(saved_for_resume(run_dir, trainer))
            return stop_exit_status(stop)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        end_epoch(trainer, val, writer, run_dir, (time.perf_counter() - started, trained, data_seconds), last_epoch,
                  losses)
        # a stop during the last epoch's end finishes the run: the hparams and the end message are its last steps
        if trainer.epoch < last_epoch and (stopping or stop_everywhere(stop, world_size, device)):
            if rank == 0:
                print(saved_for_resume(run_dir, trainer))
            return stop_exit_status(stop)
    if writer:
        finish_run(writer, trainer, run_dir, last_epoch)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            opt = parse_options(argv, description=__doc__)
        except UserError as err:
            stop_every_node(err, argv)
        with StopRequest() as stop, contextlib.ExitStack() as held:
            return train(opt, stop, held, argv)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(run_cli(main))
