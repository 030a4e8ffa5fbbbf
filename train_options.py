"""train.py's options: the parser (names follow the official pix2pix repo where they overlap), what --resume may
and may not change, and the checks that turn a bad combination into one clear line before anything is built.
"""
import argparse
import hashlib
import json
import os
import sys

import torch

import networks
from dataset import check_crop_and_batch_fit, check_seed, check_val_fits, missing_split_hint
from utils import ArgumentParser, UserError, check_counts, check_positive, counted, read_json, saved_checkpoints

# Options that define the networks, the shape of the data they take or the losses they train on: a resumed run must
# keep them.
ARCHITECTURE_OPTIONS = ('netG', 'netD', 'ngf', 'ndf', 'n_layers_D', 'norm', 'no_dropout', 'upsample', 'input_nc',
                        'output_nc', 'gan_mode', 'crop_size', 'init_type', 'init_gain', 'content_loss')
# The options that shape G's and D's weights: named when the weights of an --init_from checkpoint do not fit.
WEIGHT_SHAPE_OPTIONS = ('netG', 'netD', 'ngf', 'ndf', 'n_layers_D', 'norm', 'upsample', 'input_nc', 'output_nc')
# Options that define the optimiser and lr-schedule state a checkpoint restores (Adam's lr and betas, the
# scheduler's base rate, step size and policy): new values given with --resume would be overridden by that state.
SCHEDULE_OPTIONS = ('lr', 'beta1', 'lr_policy', 'lr_decay_iters')
# Why a resumed run must keep each of those options.
FIXED_ON_RESUME = {**dict.fromkeys(ARCHITECTURE_OPTIONS, 'the networks continue from the checkpoint'),
                   **dict.fromkeys(SCHEDULE_OPTIONS, 'the optimiser and lr schedule continue from the checkpoint'),
                   'best_metric': 'best.pt and the plateau schedule were chosen by it',
                   'init_from': 'the networks continue from the checkpoint'}
# The validation metrics --best_metric may name, each with the direction that is better.
BEST_METRICS = {'PSNR': 'max', 'SSIM': 'max', 'L1': 'min'}
# Options that steer this invocation only: never taken from a saved config.
RUN_CONTROL_OPTIONS = ('resume', 'stop_epoch')
# The content-loss weights and the --content_loss term each one scales.
LOSS_WEIGHTS = {'lambda_L1': 'l1', 'lambda_VGG': 'vgg'}


def build_parser(description=None):
    p = ArgumentParser(description)
    a = p.add_argument
    a('--dataroot', help='folder made by transform_dataset.py (holds train/ and val/); with --resume, the saved one')
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
    a('--vgg_weights', default=None, help='torchvision vgg19 state_dict file for the VGG loss (never downloaded; '
                                          'default: torchvision\'s cached vgg19-dcbb9e9d.pth in $TORCH_HOME if there)')
    a('--lr', type=float, default=2e-4, help='Adam learning rate (2e-3 collapsed to blank images in the seed)')
    a('--beta1', type=float, default=0.5, help='Adam beta1')
    a('--n_epochs', type=int, default=100,
      help='linear: epochs at the initial learning rate; cosine, step, plateau: only the total n_epochs + '
           'n_epochs_decay counts (epochs to train)')
    a('--n_epochs_decay', type=int, default=100,
      help='linear: epochs of linear decay towards 0 after --n_epochs; cosine: the cosine from --lr to 0 spans '
           'n_epochs + n_epochs_decay; step, plateau: more epochs on the same rule')
    a('--lr_policy', default='linear', choices=('linear', 'step', 'plateau', 'cosine'),
      help='linear: --lr for --n_epochs, then linearly towards 0 (the last epoch at lr/(n_epochs_decay + 1)); '
           'step: ×0.1 every --lr_decay_iters epochs; plateau: '
           'halved after 6 validations in a row without a >1 %% relative improvement of the val --best_metric; '
           'cosine: from --lr to 0 over all epochs')
    a('--lr_decay_iters', type=int, default=50, help='step policy: multiply lr by 0.1 every this many epochs')
    a('--batch_size', type=int, default=1, help='global batch size (split across processes under torchrun)')
    a('--crop_size', type=int, default=256, help='random crop side for training, centre crop for validation')
    a('--no_flip', action='store_true', help='no mirrored samples: no random horizontal flips (nor vertical ones '
                                             'with --rotate)')
    a('--rotate', action='store_true', help='also 90° turns and vertical flips (aerial images have no "up")')
    a('--seed', type=int, default=0, help='seed for weights, data order, augmentation and dropout')
    p.add_device_option()
    a('--amp', default='auto', choices=('auto', 'on', 'off'), help='bf16 autocast; auto = on for CUDA')
    a('--channels_last', action='store_true', help='NHWC memory format (faster convs on GPU and some CPUs)')
    a('--compile', action='store_true', help='torch.compile G and D (slower start, faster steps)')
    a('--compile_mode', default='default', choices=('default', 'reduce-overhead'),
      help="torch.compile's mode with --compile; reduce-overhead replays G's compiled graphs as CUDA graphs (fewer "
           'kernel launches and less host time per step; CUDA, one process)')
    a('--data_device', default='auto', choices=('auto', 'cpu', 'cuda'),
      help='where the uint8 training split lives; auto = on the GPU when it takes < 1/4 of its free memory, '
           'else in RAM with batches copied through pinned memory')
    a('--save_epoch_freq', type=int, default=5, help='keep epoch_<N>.pt every this many epochs')
    a('--val_freq', type=int, default=1, help='validate every this many epochs')
    a('--display_freq', type=int, default=1, help='TensorBoard image grid every this many validations')
    a('--n_display', type=int, default=4, help='validation samples in the image grid')
    a('--log_freq', type=int, default=50, help='iterations between loss logs (and NaN checks)')
    a('--best_metric', default='PSNR', choices=tuple(BEST_METRICS),
      help='validation metric that picks best.pt and that --lr_policy plateau watches: PSNR or SSIM (highest) or L1 '
           '(lowest). The seed found PSNR does not track visual quality')
    a('--psnr_drop_warn', type=float, default=3.0,
      help='warn when val PSNR falls this many dB below its best (the seed\'s collapse canary)')
    a('--resume', action='store_true',
      help='continue from <runs_dir>/<name>/latest.pt with the saved options (a run that saved nothing yet starts '
           'from epoch 1)')
    a('--init_from', default=None, metavar='CHECKPOINT',
      help='start a new run from the G and D weights of another run\'s checkpoint (fine-tuning, e.g. on a new city), '
           'with fresh optimisers, lr schedule and epoch count; its weights must fit the networks of this run')
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


def across_machines():
    """Whether torchrun runs more processes in all than on this machine."""
    return int(os.environ.get('WORLD_SIZE', 1)) > int(os.environ.get('LOCAL_WORLD_SIZE', 1))


def every_node_advice():
    """A not-found error's advice under torchrun across machines: every process reads the data, the run config and
    the checkpoints itself, at the paths its node's command names."""
    if not across_machines():
        return ''
    node = os.environ.get('GROUP_RANK', '?')
    return f' on node {node}: every node needs it at this path (a shared file system, or a copy)'


def resolve_options(parser, argv):
    """Parse argv; with --resume, start from the saved config and allow only overrides that the checkpoint does
    not fix (not the networks, optimiser or lr schedule)."""
    opt = parser.parse_args(argv)
    if opt.dataroot is None and not opt.resume:
        parser.error('the following arguments are required: --dataroot')
    if opt.dataroot is not None:
        opt.dataroot = os.path.abspath(opt.dataroot)  # test.py reads it back from config.json, from anywhere
    for path_option in ('init_from', 'vgg_weights'):  # a resume may start in another folder
        if getattr(opt, path_option) is not None:
            setattr(opt, path_option, os.path.abspath(getattr(opt, path_option)))
    run_dir = os.path.join(opt.runs_dir, opt.name)
    checkpoints = saved_checkpoints(run_dir)
    if not opt.resume:
        if checkpoints:
            raise UserError(f'{run_dir} already holds a trained run; use --resume to continue it or a new --name')
        return opt
    if not checkpoints:
        return start_instead_of_resuming(parser, argv, opt, run_dir)
    config_path = os.path.join(run_dir, 'config.json')
    if 'latest.pt' not in checkpoints:  # deleted by hand: starting afresh would overwrite best.pt and the others
        raise UserError(f'{run_dir}/latest.pt: no checkpoint to --resume from, but the run holds {checkpoints[0]}: '
                        f'copy the checkpoint to continue from to latest.pt{every_node_advice()}')
    if not os.path.exists(config_path):
        raise UserError(f'{config_path}: run config not found beside latest.pt; --resume needs both (restore it, or '
                        f'start a new --name){every_node_advice()}')
    saved = load_saved_config(parser, config_path)
    resumed = dict(saved)
    for key in explicit_options(parser, argv) - set(RUN_CONTROL_OPTIONS):
        was = saved[key]
        if key in FIXED_ON_RESUME and getattr(opt, key) != was:
            raise UserError(f'--resume: {run_dir} was trained with --{key} {was}, not {getattr(opt, key)}; '
                            f'{FIXED_ON_RESUME[key]}: start a new --name instead')
        resumed[key] = getattr(opt, key)
    check_cosine_length(run_dir, saved, resumed)
    resumed.update({key: getattr(opt, key) for key in RUN_CONTROL_OPTIONS})
    return argparse.Namespace(**{**vars(opt), **resumed})


def start_instead_of_resuming(parser, argv, opt, run_dir):
    """--resume of a run that saved nothing yet (killed before its first checkpoint, or a requeued job's first start)
    starts it from epoch 1: with its config.json's options, where an attempt wrote one, and the command's on top.
    Within one machine only: there, every process sees the same run folder."""
    config_path = os.path.join(run_dir, 'config.json')
    if across_machines():  # across machines, a node that cannot see the run's files would start while others resume
        if not os.path.exists(config_path):
            raise UserError(f'{config_path}: run config not found (nothing to --resume){every_node_advice()}')
        raise UserError(f'{run_dir}/latest.pt: no checkpoint to --resume from{every_node_advice()}')
    if os.path.exists(config_path):
        saved = load_saved_config(parser, config_path)
        given = explicit_options(parser, argv) | set(RUN_CONTROL_OPTIONS)
        opt = argparse.Namespace(**{**vars(opt), **saved, **{key: getattr(opt, key) for key in given}})
    elif opt.dataroot is None:
        raise UserError(f'{config_path}: run config not found (nothing to --resume, and no --dataroot to start the '
                        f'run with){every_node_advice()}')
    if int(os.environ.get('RANK', 0)) == 0:
        print(f'note: {run_dir} holds no checkpoint yet (never started, or stopped before its first save): --resume '
              f'starts it from epoch 1')
    opt.resume = False
    return opt


def load_saved_config(parser, config_path):
    saved = read_json(config_path, 'run config')
    check_saved_config(parser, saved, config_path)
    return with_defaults(parser, saved)


def saved_value_fits(action, value):
    """Whether a config.json value is one the command line could have given this option."""
    if value is None:
        return action.default is None  # --stop_epoch, --vgg_weights, ...: unset
    if isinstance(action, argparse._StoreTrueAction):
        return isinstance(value, bool)
    if action.type in (int, float):
        numeric = (int,) if action.type is int else (int, float)
        fits = isinstance(value, numeric) and not isinstance(value, bool)
    else:
        fits = isinstance(value, str)
    return fits and (action.choices is None or value in action.choices)


def check_saved_config(parser, saved, path):
    """A config.json edited by hand is checked option by option as the command line is (check_options then checks
    the ranges): a string where a number belongs crashed deep in training, with a traceback."""
    if not isinstance(saved, dict):
        raise UserError(f'{path}: not a run config (a JSON object of options)')
    for action in parser._actions:
        if action.dest in saved and not saved_value_fits(action, saved[action.dest]):
            raise UserError(f'{path}: "{action.dest}": {json.dumps(saved[action.dest])} is not a value --{action.dest} '
                            f'takes; fix the file or start a new --name')


def check_checkpoint_is_this_runs(state, opt, path):
    """A latest.pt copied in from another run (or a config.json edited): the weights would not fit the networks
    config.json describes (a traceback of size mismatches), or would fit and silently continue another schedule."""
    saved = state.get('config')
    if not isinstance(saved, dict):
        raise UserError(f'{path}: holds no run config; not a checkpoint train.py wrote')
    theirs, ours = differing_options(saved, opt, FIXED_ON_RESUME)
    if theirs:
        raise UserError(f'{path}: saved with {theirs}, but config.json beside it says {ours}: one of them comes from '
                        f'another run or was edited')


def with_defaults(parser, saved):
    """A saved run config with every option: one newer than the run (or deleted from its config) took its default."""
    return {**{action.dest: action.default for action in parser._actions if action.dest != 'help'}, **saved}


def differing_options(saved, opt, keys):
    """('--a 1, --b 2', '--a 3, --b 4'): the keys whose value in a saved run config differs from opt's, as each
    side has them ('' when none does)."""
    saved = with_defaults(build_parser(), saved)
    differ = [key for key in keys if saved[key] != getattr(opt, key)]
    return (', '.join(f'--{key} {saved[key]}' for key in differ),
            ', '.join(f'--{key} {getattr(opt, key)}' for key in differ))


def check_mid_epoch_resume(state, opt, run_dir):
    """A checkpoint saved mid-epoch counts the batches done in batches of its own size, in the order its --seed
    shuffled: another --batch_size or --seed would skip or repeat samples of that epoch. (The global batch is the
    same for any number of processes.)"""
    if not state['next_batch']:
        return
    for key in ('batch_size', 'seed'):
        saved = state['config'][key]
        if getattr(opt, key) != saved:
            raise UserError(f'--{key} {getattr(opt, key)}: {run_dir}/latest.pt stopped mid-epoch after '
                            f'{counted(state["next_batch"], "batch", "batches")} of {state["config"]["batch_size"]}; '
                            f'finish that epoch with --{key} {saved} (--stop_epoch {state["epoch"] + 1}), then resume '
                            'with the new one')


def total_epochs(config):
    """The run's length in epochs, from its options (vars(opt)) or its saved config.json."""
    return config['n_epochs'] + config['n_epochs_decay']


def check_cosine_length(run_dir, saved, resumed):
    """The cosine scheduler keeps its period in the checkpoint, so a new total would be ignored and the rate would
    climb again after the old end. (linear recomputes its rule from the options each epoch, and step and plateau
    do not depend on the total: those runs may be extended.)"""
    if saved['lr_policy'] == 'cosine' and total_epochs(resumed) != total_epochs(saved):
        raise UserError(f'--resume: {run_dir} anneals with --lr_policy cosine over --n_epochs + --n_epochs_decay = '
                        f'{total_epochs(saved)} epochs, not {total_epochs(resumed)}; the lr schedule continues from '
                        f'the checkpoint: keep that total (--stop_epoch ends a job early) or start a new --name')


def check_options(opt):
    check_counts(opt, ('batch_size', 'n_epochs', 'save_epoch_freq', 'val_freq', 'display_freq', 'log_freq',
                       'crop_size', 'n_display', 'n_layers_D', 'lr_decay_iters', 'ngf', 'ndf'))
    if opt.n_epochs_decay < 0:
        raise UserError(f'--n_epochs_decay must be >= 0, got {opt.n_epochs_decay}')
    if opt.stop_epoch is not None and opt.stop_epoch < 1:  # 0 would train every epoch, -1 none
        raise UserError(f'--stop_epoch must be >= 1, got {opt.stop_epoch}')
    check_positive(opt, ('lr', 'init_gain'))
    if not 0 <= opt.beta1 < 1:
        raise UserError(f'--beta1 must be in [0, 1), got {opt.beta1}')
    for name in ('lambda_L1', 'lambda_VGG'):
        if not 0 <= getattr(opt, name) < float('inf'):  # nan and inf too: an infinite weight makes NaN weights
            raise UserError(f'--{name} must be a number >= 0, got {getattr(opt, name)}')
    if not opt.psnr_drop_warn >= 0:  # nan refused; inf turns the warning off
        raise UserError(f'--psnr_drop_warn must be >= 0, got {opt.psnr_drop_warn}')
    name = os.path.normpath(opt.name)
    if name in ('.', '..') or name.startswith('..' + os.sep) or os.path.isabs(name):
        raise UserError(f'--name {opt.name!r}: must name a folder inside --runs_dir')
    check_seed(opt.seed)
    problem = networks.generator_size_problem(opt.netG, opt.crop_size)
    if problem:
        raise UserError(f'--crop_size {opt.crop_size}: {problem}'
                        + (' (use --netG unet_128 or a resnet for smaller crops)' if opt.netG == 'unet_256' else ''))
    need = discriminator_min_size(opt)
    if opt.crop_size < need:
        layers = f' --n_layers_D {opt.n_layers_D}' if opt.netD == 'n_layers' else ''
        raise UserError(f'--crop_size {opt.crop_size} is too small for --netD {opt.netD}{layers} (--norm {opt.norm}): '
                        f'it needs at least {need}')
    if opt.compile_mode != 'default' and not opt.compile:
        raise UserError(f'--compile_mode {opt.compile_mode} needs --compile')
    if 'vgg' in opt.content_loss and opt.lambda_VGG <= 0:
        raise UserError(f'--content_loss {opt.content_loss} needs --lambda_VGG > 0 (e.g. 10)')
    if opt.dataroot is None:  # a --resume whose config.json lost it
        raise UserError(f'--resume: {opt.runs_dir}/{opt.name}/config.json names no --dataroot; give --dataroot')
    if not os.path.isdir(opt.dataroot):
        moved = ' (with --resume: the folder the run trained on; give --dataroot if it has moved)' if opt.resume else ''
        raise UserError(f'{opt.dataroot}: --dataroot not found{moved}{every_node_advice()}')
    for split in ('train', 'val'):
        if not os.path.isdir(os.path.join(opt.dataroot, split)):
            raise UserError(f'{opt.dataroot}: no {split}/ folder; {missing_split_hint(opt.dataroot, split)}')


def data_identity(dataroot):
    """A short digest of what a run trains and validates on, kept in config.json: both manifests' tiles (name,
    source, position, building fraction) and transform_dataset.py's settings but the input folder. The same arrays
    moved elsewhere keep it; other data changes it, even under the same tile names (--direction AtoB, not BtoA)."""
    parts = [read_json(os.path.join(dataroot, split, 'manifest.json'), 'manifest').get('tiles')
             for split in ('train', 'val')]
    settings_path = os.path.join(dataroot, 'transform.json')
    if os.path.exists(settings_path):
        parts.append({k: v for k, v in read_json(settings_path, 'transform config').items() if k != 'dataroot'})
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def check_same_data(opt, identity, run_dir):
    """A resumed run continues on the data it was trained on: with other data its validation history and best.pt
    would compare metrics of two datasets. Runs saved before the identity was kept are not checked."""
    saved = getattr(opt, 'data_identity', None)
    if opt.resume and saved is not None and saved != identity:
        raise UserError(f'--resume: {opt.dataroot} holds other data than {run_dir} was trained on (other tiles or '
                        f'transform settings); its validation history and best.pt would mix two datasets: start a new '
                        f'--name')
    opt.data_identity = identity


def check_options_fit(opt, train_masks, train_images, val_masks, device, world_size):
    """The options against the training data, the device and the number of processes (--input_nc defaults to
    the masks' channels)."""
    opt.input_nc = opt.input_nc or train_masks.shape[1]
    if opt.input_nc != train_masks.shape[1]:
        raise UserError(f'--input_nc {opt.input_nc} but the masks in {opt.dataroot} have {train_masks.shape[1]} '
                        f'channels')
    if opt.output_nc != train_images.shape[1]:
        raise UserError(f'--output_nc {opt.output_nc} but the images in {opt.dataroot} have {train_images.shape[1]} '
                        f'channels')
    check_crop_and_batch_fit(train_masks, opt)
    check_val_fits(val_masks, train_masks, opt)
    if opt.batch_size % world_size:
        raise UserError(f'--batch_size {opt.batch_size} must be divisible by the {world_size} processes')
    if opt.data_device == 'cuda' and device.type != 'cuda':
        raise UserError('--data_device cuda needs a CUDA training device (this run trains on the CPU)')
    if opt.compile_mode == 'reduce-overhead' and (device.type != 'cuda' or world_size > 1):
        # CUDA graphs exist on CUDA only; with DistributedDataParallel's gradient hooks they are untested here
        raise UserError('--compile_mode reduce-overhead (CUDA graphs) needs a CUDA training device and one process'
                        + (f', not {world_size} under torchrun' if world_size > 1 else ' (this run trains on the CPU)'))


def discriminator_min_size(opt):
    """The smallest crop side D can take: its strided 4×4 convs shrink the input, every norm layer needs more
    than one value per channel (a 1×1 map cannot be instance-normalised) and the last conv must leave a pixel.
    Walks D's layers backwards from that last pixel: in >= (out - 1) * stride + kernel - 2 * padding."""
    with torch.device('meta'):  # only the layer shapes are read: no memory, no draw from the seeded RNG
        D = networks.define_D(opt.netD, 2, 1, opt.n_layers_D, opt.norm)
    side = 1
    for layer in reversed(list(D.modules())):
        if isinstance(layer, torch.nn.Conv2d):
            side = (side - 1) * layer.stride[0] + layer.kernel_size[0] - 2 * layer.padding[0]
        elif isinstance(layer, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d)):
            side = max(side, 2)
    return max(side, 1)


def warn_unused_loss_weights(opt, given):
    """A weight (or the VGG weights file) given for a loss term that --content_loss leaves out would otherwise be
    ignored in silence."""
    for key, term in {**LOSS_WEIGHTS, 'vgg_weights': 'vgg'}.items():
        if key in given and term not in opt.content_loss.split('+'):
            print(f'warning: --{key} {getattr(opt, key)} is unused: --content_loss {opt.content_loss} has no '
                  f'{term} term', file=sys.stderr)


def parse_options(argv, description=None):
    """train.py's options from argv (and, with --resume, the run's saved config), checked."""
    parser = build_parser(description)
    opt = resolve_options(parser, argv)
    check_options(opt)
    warn_unused_loss_weights(opt, explicit_options(parser, argv))
    return opt
