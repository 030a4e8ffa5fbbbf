"""Benchmarks: training throughput per optimisation, sliding-window generation, pre-transform. Reports, never asserts.

    python bench.py                                  # everything, on the GPU if there is one
    python bench.py --only train --batches 1 4       # CPU: the batch sizes the CPU target names
    python bench.py --only generate --mask_size 5000
    python bench.py --only train --batches 64 --rows 1 5 6   # plain, every default optimisation, + CUDA graphs
    python bench.py --only data --batches 64         # the augmented batch alone, per layout, with and without --rotate
    python bench.py --only convs --batches 64        # each convolution alone; few-channel layers reformulated too

Training rows add one optimisation at a time to the plain fp32 eager NCHW loop with torch's default Adam
(pix2pix_model.Trainer, the one train.py runs, so the numbers are the real loop's): fused Adam, bf16 autocast,
torch.compile, channels_last, then (GPU only) CUDA graphs for G (--compile_mode reduce-overhead). Steps run back to
back as in train.py: the host never waits for the GPU between them.
Data share = the time making the same augmented batches takes alone, as a share of the step's (the uint8 split lives
on the training device; --data_in_ram leaves it in RAM). MFU = achieved FLOP/s ÷ the device's bf16 peak
(--peak_tflops; known for H100/H200), with FLOPs counted by torch's FlopCounterMode on one step. Peak MB = on a GPU,
torch.cuda.max_memory_allocated over the timed steps plus what the row's CUDA graphs' private pools hold (which it
reads as free); on the CPU, the process's peak RSS during the row's timed steps (on Linux).
"""
import contextlib
import os
import resource
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import generation
import networks
import pix2pix_model
import train
import transform_dataset
from dataset import EpochPlan, augmented_batch, batch_on_device
from image_io import read_image_file
from synthetic_inria import make_synthetic_inria, synthetic_pair
from train_options import build_parser
from utils import ArgumentParser, UserError, check_counts, check_positive, run_cli

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets, half their "with sparsity"
# figures; matched against torch.cuda.get_device_name, most specific name first. Issue 5 planned with ~790.
BF16_PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H200 NVL', 835.0), ('H100', 989.4), ('H200', 989.4))
STEPS = (('plain: eager fp32 NCHW, default Adam', {'default_adam': True}), ('+ fused Adam', {'default_adam': False}),
         ('+ bf16 autocast', {'amp': 'on'}), ('+ torch.compile', {'compile': True}),
         ('+ channels_last', {'channels_last': True}), ('+ CUDA graphs for G', {'compile_mode': 'reduce-overhead'}))


def parse_args(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument('--only', choices=('train', 'data', 'convs', 'generate', 'transform'), help='run one part only')
    p.add_device_option()
    p.add_argument('--batches', type=int, nargs='+', default=None, help='default: 1 16 64 on GPU, 1 4 on CPU')
    p.add_argument('--iters', type=int, default=None, help='timed iterations per row (default 30 GPU, 6 CPU)')
    p.add_argument('--warmup', type=int, default=None,
                   help='untimed iterations first, compilation included (default 10 GPU, 3 CPU)')
    p.add_argument('--rows', type=int, nargs='+', default=None, metavar='N',
                   help=f'which of the {len(STEPS)} cumulative rows to run, 1 = plain (default: all; row 6, CUDA '
                        f'graphs, on CUDA only); "1 5 6" = plain, every default optimisation and CUDA graphs')
    p.add_argument('--data_in_ram', action='store_true',
                   help='leave the uint8 split in RAM (batches copied through pinned memory), as train.py does '
                        'when it does not fit on the GPU')
    p.add_argument('--profile', action='store_true',
                   help="after the table, each row's torch.profiler table (what takes the device's or CPU's time), "
                        'its convolutions by shape and its copies by what made them')
    p.add_argument('--d_first_conv', choices=('space_to_depth', 'pad'), default='space_to_depth',
                   help="D's first conv on CUDA in channels_last: over 2×2 blocks as 16 channels (what training "
                        'uses, networks.InputConv2d.space_to_depth), or its 4 channels zero-padded to 8 (an A/B, '
                        'the same sums; compare the channels_last rows of both)')
    p.add_argument('--last_convs', choices=('per_tap', 'torch'), default='per_tap',
                   help="D's last conv and G's last layer (a U-Net's), compiled, on CUDA in channels_last: one 1×1 "
                        "conv over every weight tap's products, then their sums (what training uses, "
                        "networks.OutputConv2d.per_tap and OutputConvTranspose2d.per_tap), or torch's convs (an A/B, "
                        'the same sums; compare the compiled channels_last rows)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--peak_tflops', type=float, default=None, help='device bf16 peak for MFU (else from a table)')
    p.add_argument('--mask_size', type=int, default=5000, help='side of the mask for the generation benchmark')
    p.add_argument('--gen_batch', type=int, default=16, help='windows per batch in sliding generation')
    p.add_argument('--gen_overlap', type=float, default=0.5, help='window overlap in sliding generation')
    p.add_argument('--gen_amp', action='store_true', help='bf16 autocast for generation (test.py --amp on)')
    return p.parse_args(argv)


def needs_cuda(change):
    return change.get('compile_mode') == 'reduce-overhead'  # CUDA graphs


def card_peak_tflops(name):
    """The dense bf16 peak of a card by its name; None for an unknown card or a MIG slice (a share of one)."""
    if 'MIG' in name:
        return None
    return next((tflops for model, tflops in BF16_PEAK_TFLOPS if model in name), None)


def reset_peak_memory(device):
    """Start the peak again from what is in use now: each row's own peak, not the highest of every row before it
    (ru_maxrss never goes down). On the CPU, Linux resets the process's peak RSS (VmHWM) on this write."""
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, ValueError):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):  # kB, since the last reset_peak_memory
                    return int(line.split()[1]) / 1024
    # elsewhere the process's peak so far (macOS counts bytes, Linux kB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == 'darwin' else 1024)


def private_pools(device):
    """{pool id: bytes} of the CUDA graphs' private memory pools. Once a graph is recorded, the memory it holds
    reads as unallocated to max_memory_allocated (pytorch/pytorch#121932), though nothing else can use it."""
    pools = {}
    if device.type == 'cuda':
        for segment in torch.cuda.memory_snapshot():
            pool = tuple(segment['segment_pool_id'])
            if pool != (0, 0):  # (0, 0): the allocator's shared pool
                pools[pool] = pools.get(pool, 0) + segment['total_size']
    return pools


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_trainer(device, overrides):
    argv = ['--dataroot', '.', '--netG', 'unet_256', '--netD', 'basic', '--amp', 'off',
            '--device', device.type]
    opt = build_parser().parse_args(argv)
    for key, value in overrides.items():
        setattr(opt, key, value)
    opt.input_nc = 1
    trainer = pix2pix_model.Trainer(opt, device, rank=0, world_size=1)
    if overrides.get('default_adam'):  # the official repo's optimiser: torch's default Adam implementation
        trainer.opt_G = torch.optim.Adam(trainer.G.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
        trainer.opt_D = torch.optim.Adam(trainer.D.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
    return trainer


def flops_per_image(trainer, masks, images, plan, crop):
    """FLOPs of one full training step (G forward, D steps, G step, backward passes) per image."""
    mask, real = augmented_batch(masks, images, plan, torch.arange(1), crop)
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(mask, real)
    return counter.get_total_flops()


def batch_maker(masks, images, device, layout, batch, rotate=False):
    """make_batch(i): a batch as train.py hands it to the step: augmented on the device, in the layout of
    layout.channels_last (the trainer's options)."""
    plan = EpochPlan(len(masks), masks.shape[-1], 256, seed=0, epoch=0, rotate=rotate).to(device)
    n_batches = len(masks) // batch

    def make_batch(i):
        mask, real = batch_on_device(masks, images, plan, i % n_batches, batch, 256,
                                     memory_format=pix2pix_model.memory_format(layout))
        return pix2pix_model.in_layout(mask, layout), pix2pix_model.in_layout(real, layout)
    return make_batch


def looped(step):
    """run(n): step(0), step(1), ..., step(n - 1), for seconds_of."""
    def run(n):
        for i in range(n):
            step(i)
    return run


def bench_train_row(device, overrides, batch, iters, warmup, data, with_profile=False):
    masks, images = data
    # A fresh compile cache per row: a shared one would turn the batch dimension dynamic from the second batch size
    # on, which is not the static-shape graph train.py compiles.
    torch._dynamo.reset()
    pools_before = private_pools(device)  # an earlier row's CUDA graphs may not be freed yet
    trainer = make_trainer(device, overrides)
    make_batch = batch_maker(masks, images, device, trainer.opt, batch)
    train_steps = looped(lambda i: trainer.train_step(*make_batch(i)))
    make_batches = looped(make_batch)
    seconds_of(train_steps, warmup, device)  # cuDNN's autotuning and compilation
    reset_peak_memory(device)  # the steady step's memory
    seconds = seconds_of(train_steps, iters, device)
    graphs_mb = sum(size for pool, size in private_pools(device).items() if pool not in pools_before) / 2**20
    row = {'ms_per_iter': 1000 * seconds / iters, 'images_per_s': batch * iters / seconds,
           'peak_mb': peak_memory_mb(device) + graphs_mb}
    row['data_share'] = seconds_of(make_batches, iters, device) / seconds
    if with_profile:
        row['profile'] = profile_table(train_steps, min(iters, 5), device)
    return row


def seconds_of(run, n, device):
    """Wall time of run(n), n steps back to back as train.py runs them: the host queues work while the GPU
    computes, and waits for it only at the end."""
    sync(device)
    t0 = time.perf_counter()
    run(n)
    sync(device)
    return time.perf_counter() - t0


def profile_table(train_steps, n, device):
    """torch.profiler's table of n steps, the ops and kernels that take the most device (or CPU) time first, then the
    convolutions by shape and the copies by where they come from."""
    gpu = device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities, record_shapes=True) as prof:
        seconds = seconds_of(train_steps, n, device)
    sort = 'self_device_time_total' if gpu else 'self_cpu_time_total'
    events = prof.events()
    return (f"{n} step{'s' * (n != 1)}, {1000 * seconds / n:.1f} ms per step under the profiler\n"
            + prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=70)
            + convolutions_table(events, n, gpu) + '\n' + copies_table(events, n, gpu))


# What copy_ runs inside: the op that asked for the copy is the first ancestor that is none of these.
COPY_WRAPPERS = {'aten::copy_', 'aten::_to_copy', 'aten::to', 'aten::clone', 'aten::contiguous'}
SHORT_DTYPES = {'c10::BFloat16': 'bf16', 'float': 'fp32', 'c10::Half': 'fp16', 'double': 'fp64'}


def copies_table(events, n, gpu, rows=15):
    """aten::copy_ per step, grouped by the op that asked for it, the shape and the dtype and layout it converts:
    the op table counts copies; this says where they come from (layouts need a torch that records strides)."""
    def key_of(event):
        if event.name != 'aten::copy_' or len(event.input_shapes or ()) < 2:
            return None
        return copy_maker(event), shape_text(event.input_shapes[0]), copy_conversion(event)
    return grouped_table(f"Copies (aten::copy_) per step by what made them, {'device' if gpu else 'CPU'} time, most "
                         f"first:", ('made by', 'shape', 'to ← from'), events, key_of, n, gpu, rows)


def convolutions_table(events, n, gpu, rows=15):
    """Convolutions per step by their input and weight shapes, forward (transposed ones too) and backward, each with
    what it runs inside it (cuDNN's layout and padding kernels, copies): which layers take the time. Kernels replayed
    from a CUDA graph belong to no op and are not in it."""
    def key_of(event):
        shapes = event.input_shapes or ()
        if event.name == 'aten::convolution' and len(shapes) >= 2:
            return 'forward', shape_text(shapes[0]), shape_text(shapes[1])
        if event.name == 'aten::convolution_backward' and len(shapes) >= 3:
            return 'backward', shape_text(shapes[1]), shape_text(shapes[2])
        return None
    return grouped_table(f"Convolutions per step by shape, {'device' if gpu else 'CPU'} time, most first:",
                         ('pass', 'input', 'weight'), events, key_of, n, gpu, rows)


def grouped_table(title, columns, events, key_of, n, gpu, rows):
    """A table of the events that key_of gives a key (a tuple of texts, one per column) to, one row per key with its
    calls and device (or CPU) time per step, most time first."""
    groups = {}
    for event in events:
        key = key_of(event)
        if key is not None:
            calls, microseconds = groups.get(key, (0, 0.0))
            groups[key] = calls + 1, microseconds + (event.device_time_total if gpu else event.cpu_time_total)
    lines = [f'\n{title}', '| ' + ' | '.join(('calls', 'ms', *columns)) + ' |',
             '| ---: | ---: |' + ' --- |' * len(columns)]
    for key, (calls, microseconds) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:rows]:
        lines.append(f'| {calls / n:g} | {microseconds / 1000 / n:.3f} | ' + ' | '.join(key) + ' |')
    if len(groups) > rows:
        lines.append(f'({len(groups) - rows} smaller groups left out)')
    return '\n'.join(lines)


def shape_text(shape):
    return '×'.join(map(str, shape))


def copy_conversion(event):
    """'bf16 NHWC ← fp32 NCHW': the dtype and layout a copy writes and reads."""
    dtypes = getattr(event, 'input_dtypes', None)
    strides = getattr(event, 'structured_input_strides', None)
    if not dtypes or not strides:
        return 'not recorded by this torch'
    to, source = (f'{SHORT_DTYPES.get(dtypes[i], dtypes[i])} {layout_of(event.input_shapes[i], strides[i])}'
                  for i in (0, 1))
    return f'{to} ← {source}'


def copy_maker(event):
    """The nearest ancestor op that is not a copy wrapper, with its parent: 'aten::cat < CompiledFunction'."""
    names, parent = [], event.cpu_parent
    while parent is not None and len(names) < 2:
        if parent.name not in COPY_WRAPPERS:
            names.append(parent.name.replace('autograd::engine::evaluate_function: ', 'backward: ')[:60])
        parent = parent.cpu_parent
    return ' < '.join(names) or 'Python code (no op above it)'


def layout_of(shape, strides):
    """'NCHW', 'NHWC' or 'strided' for a 4-D tensor ('' for other ranks or unknown strides); the strides of size-1
    axes do not count."""
    if len(shape) != 4 or not strides or len(strides) != 4:
        return ''
    _, c, h, w = shape
    for name, expected in (('NCHW', (c * h * w, h * w, w, 1)), ('NHWC', (h * w * c, 1, w * c, c))):
        if all(size == 1 or stride == want for size, stride, want in zip(shape, strides, expected)):
            return name
    return 'strided'


def training_settings(opt, device):
    """(batches, timed iterations, warm-up iterations) for the training and data benchmarks."""
    gpu = device.type == 'cuda'
    batches = opt.batches or ([1, 16, 64] if gpu else [1, 4])
    iters = opt.iters if opt.iters is not None else (30 if gpu else 6)
    warmup = opt.warmup if opt.warmup is not None else (10 if gpu else 3)
    return batches, iters, warmup


def uint8_split(batches, device, data_in_ram):
    """A random uint8 training split of 286² samples, enough for two of the largest batch, on device (or in RAM)."""
    n = max(max(batches) * 2, 64)
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(n, 1, 286, 286, generator=gen) > 0.7).to(torch.uint8).mul_(255)
    images = torch.randint(0, 256, (n, 3, 286, 286), dtype=torch.uint8, generator=gen)
    if not data_in_ram:
        masks, images = masks.to(device), images.to(device)
    return masks, images


def bench_train(opt, device):
    gpu = device.type == 'cuda'
    batches, iters, warmup = training_settings(opt, device)
    masks, images = uint8_split(batches, device, opt.data_in_ram)
    n = len(masks)
    name = torch.cuda.get_device_name(device) if gpu else 'CPU'
    peak = opt.peak_tflops or card_peak_tflops(name)
    flops = flops_per_image(make_trainer(device, {}), masks.to(device), images.to(device),
                            EpochPlan(n, 286, 256, 0, 0).to(device), 256)
    print(f'\n## Training, unet_256 + basic PatchGAN, 256² crops, {name}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} CPU threads, uint8 split {"in RAM" if opt.data_in_ram else "on the device"}')
    print(f'one training step = {flops / 1e9:.1f} GFLOP per image (FlopCounterMode); MFU against a bf16 peak of '
          + (f'{peak:.0f} TFLOP/s' if peak else 'n/a (give --peak_tflops)'))
    if gpu:
        print('the plain row runs as the official repo does: cudnn.benchmark on, cuDNN convolutions in TF32; '
              f"in channels_last D's first conv: {opt.d_first_conv}, the last convs: {opt.last_convs}")
    print()
    print('| batch | configuration | ms/iter | images/s | speed-up | data share | peak MB | TFLOP/s | MFU |')
    print('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    profiles = []
    for batch in batches:
        overrides, baseline = {}, None
        for position, (label, change) in enumerate(STEPS, 1):
            overrides = {**overrides, **change}  # cumulative: a row has every change above it
            if opt.rows and position not in opt.rows:
                continue
            if overrides.get('amp') == 'on' and not gpu and not torch.backends.mkldnn.is_available():
                continue
            if needs_cuda(change) and not gpu:
                continue
            row = bench_train_row(device, overrides, batch, iters, warmup, (masks, images), opt.profile)
            baseline = row['images_per_s'] if position == 1 else baseline
            speedup = f"{row['images_per_s'] / baseline:.2f}×" if baseline else 'n/a'  # only against the plain row
            tflops = flops * row['images_per_s'] / 1e12
            mfu = f'{100 * tflops / peak:.1f} %' if peak else 'n/a'
            print(f"| {batch} | {label} | {row['ms_per_iter']:.1f} | {row['images_per_s']:.2f} | {speedup} | "
                  f"{100 * row['data_share']:.1f} % | {row['peak_mb']:.0f} | {tflops:.3f} | {mfu} |", flush=True)
            if opt.profile:  # after the table, which it would break
                profiles.append(f"\n### Profile, batch {batch}, {label}: {row['profile']}")
    print(*profiles, sep='\n')


def bench_data(opt, device):
    """The augmented batch alone (train.py's batch path: gather, crop, flips, turns with --rotate, float, layout),
    without training: its own cost, where the train table's data share is a share of the step."""
    batches, iters, warmup = training_settings(opt, device)
    masks, images = uint8_split(batches, device, opt.data_in_ram)
    print(f'\n## Augmented batches alone, 286² uint8 samples -> 256² crops, {device}, split '
          f'{"in RAM" if opt.data_in_ram else "on the device"}')
    print('| batch | layout | --rotate | ms/batch | batches/s |')
    print('| ---: | --- | --- | ---: | ---: |')
    for batch in batches:
        for channels_last in (False, True):
            for rotate in (False, True):
                layout = SimpleNamespace(channels_last=channels_last)
                make_batches = looped(batch_maker(masks, images, device, layout, batch, rotate))
                seconds_of(make_batches, warmup, device)
                seconds = seconds_of(make_batches, iters, device)
                print(f"| {batch} | {'channels_last' if channels_last else 'NCHW'} | {'on' if rotate else 'off'} | "
                      f'{1000 * seconds / iters:.2f} | {iters / seconds:.1f} |', flush=True)


def conv_calls(G, D, batch, device, amp):
    """[(name, module, input shape)] of every convolution, in call order ('G 16: ConvTranspose2d 128→3'): one
    forward of G at batch, one of D at twice the batch (the D step judges fake and real in one call)."""
    calls = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for model_name, model, inputs in (('G', G, (batch, 1, 256, 256)), ('D', D, (2 * batch, 4, 256, 256))):
            def record(conv, args, model_name=model_name):
                name = f'{model_name} {sum(call[0][0] == model_name for call in calls) + 1}: ' \
                       f'{type(conv).__name__} {conv.in_channels}→{conv.out_channels}'
                calls.append((name, conv, args[0].shape))
            hooks = [module.register_forward_pre_hook(record) for module in model.modules()
                     if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
            model(torch.randn(inputs, device=device).contiguous(memory_format=torch.channels_last))
            for hook in hooks:
                hook.remove()
    return calls


def outputs_zero_padded(conv, x, multiple=8):
    """conv(x) with the output channels zero-padded to a multiple (zero weights and bias), the extra ones sliced off."""
    extra = -conv.out_channels % multiple
    transposed = isinstance(conv, torch.nn.ConvTranspose2d)  # its weight is in × out, a Conv2d's out × in
    weight = F.pad(conv.weight, (0, 0, 0, 0) + ((0, extra) if transposed else (0, 0, 0, extra)))
    bias = None if conv.bias is None else F.pad(conv.bias, (0, extra))
    if transposed:
        y = F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups,
                               conv.dilation)
    else:
        y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y[:, :conv.out_channels]


def conv_formulations(conv, shape):
    """{name: forward} for one layer on inputs of this shape: torch's, and for a layer with few channels (cuDNN's
    slow case) other formulations of the same sums."""
    torch_class = torch.nn.Conv2d if isinstance(conv, torch.nn.Conv2d) else torch.nn.ConvTranspose2d
    forms = {'torch': lambda x: torch_class.forward(conv, x)}  # whatever the layer's own forward would take
    if conv.in_channels % 8 and not isinstance(conv, torch.nn.ConvTranspose2d):
        forms['inputs zero-padded to 8k'] = lambda x: networks.conv_over_zero_padded_channels(conv, x)
    if isinstance(conv, networks.InputConv2d) and conv.fits_space_to_depth(shape[-2:]):
        forms['over 2×2 blocks (space to depth)'] = conv.space_to_depth_forward
    if conv.out_channels % 8:
        forms['outputs zero-padded to 8k'] = lambda x: outputs_zero_padded(conv, x)
    if isinstance(conv, networks.OutputConvTranspose2d):
        forms['per-tap 1×1 conv, then fold'] = lambda x: networks.conv_transpose_as_folded_taps(conv, x)
    if isinstance(conv, networks.OutputConv2d):
        forms['per-tap 1×1 conv, then shifted sums'] = lambda x: networks.conv_as_shifted_tap_sums(conv, x)
    return forms


def bench_convs(opt, device):
    """Each convolution of G and D alone, forward and backward (input and weight gradients), in the training layout
    (channels_last) and dtype (bf16 on a GPU): how well each layer uses the device, and whether its few-channel
    layers gain from another formulation of the same sums (max |diff| against torch's output says they are)."""
    _, iters, warmup = training_settings(opt, device)
    amp = device.type == 'cuda'  # as train.py's --amp auto
    trainer = make_trainer(device, {'channels_last': True})
    print(f'\n## Convolutions alone, forward + backward, channels_last, {"bf16" if amp else "fp32"}, {device}')
    print('| batch | layer | input | weight | formulation | ms | TFLOP/s | max \\|diff\\| |')
    print('| ---: | --- | --- | --- | --- | ---: | ---: | ---: |')
    for batch in opt.batches or ([64] if device.type == 'cuda' else [2]):
        for name, conv, shape in conv_calls(trainer.G, trainer.D, batch, device, amp):
            x = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()

            def run(forward):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    y = forward(x)
                y.float().sum().backward()
                conv.zero_grad(set_to_none=True)
                x.grad = None
                return y.detach()
            forms = conv_formulations(conv, shape)
            counter = FlopCounterMode(display=False)
            with counter:
                reference = run(forms['torch'])
            for form, forward in forms.items():
                steps = looped(lambda _: run(forward))
                seconds_of(steps, warmup, device)
                seconds = seconds_of(steps, iters, device) / iters
                diff = (run(forward).float() - reference.float()).abs().max().item()
                print(f'| {batch} | {name} | {shape_text(shape)} | {shape_text(conv.weight.shape)} | {form} | '
                      f'{1000 * seconds:.3f} | {counter.get_total_flops() / seconds / 1e12:.3g} | {diff:.2g} |',
                      flush=True)


def bench_generate(opt, device):
    """Sliding-window generation of one opt.mask_size² mask with an untrained unet_256 (speed is weight-independent)."""
    G = make_trainer(device, {}).G.eval()
    mask, _ = synthetic_pair(opt.mask_size, seed=0)
    torch.backends.cudnn.benchmark = False  # as test.py runs: no autotuning (train.setup_device turned it on)
    print(f'\n## Sliding-window generation, {opt.mask_size}×{opt.mask_size} mask, 256² windows, overlap '
          f'{opt.gen_overlap}, batch {opt.gen_batch}, {"bf16" if opt.gen_amp else "fp32"}, {device}')
    # A GPU's first call also loads kernels and sets up cuDNN, which one test.py run pays and a pipeline calling
    # generate_sliding for many masks pays once. A CPU has no such cost, and one call takes minutes.
    calls = ('first call', 'second call') if device.type == 'cuda' else ('one call',)
    for call in calls:
        reset_peak_memory(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opt.gen_amp):
            out = generation.generate_sliding(G, mask, 256, opt.gen_overlap, opt.gen_batch, device)
        sync(device)
        seconds = time.perf_counter() - t0
        assert out.shape[:2] == mask.shape
        print(f'{call}: {seconds:.2f} s, {opt.mask_size ** 2 / seconds / 1e6:.2f} megapixels/s, peak memory '
              f'{peak_memory_mb(device):.0f} MB ({"GPU allocated" if device.type == "cuda" else "process RSS"})')


def seed_project_transform(image, mask, size, split):
    """The seed project's per-tile path: PIL bicubic resize, then ToTensor + Normalize to float32."""
    from PIL import Image
    from torchvision import transforms
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    step = image.shape[0] // split
    for row in range(split):
        for col in range(split):
            window = (slice(row * step, (row + 1) * step), slice(col * step, (col + 1) * step))
            tile = Image.fromarray(image[window]).resize((size, size), Image.BICUBIC)
            tile_mask = Image.fromarray(np.stack([mask[window]] * 3, -1)).resize((size, size), Image.BICUBIC)
            to_tensor(tile), to_tensor(tile_mask)


def bench_transform():
    """Seconds per 5000² Inria-format tile (RGB TIFF + LZW mask): decode, cut, resize, save."""
    print('\n## Pre-transform of one 5000×5000 tile (uncompressed RGB TIFF + LZW mask), 1 process')
    print('| split | ours: decode + resize + save uint8 .npy | seed path: decode + PIL bicubic + ToTensor/Normalize |')
    print('| ---: | ---: | ---: |')
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_inria(os.path.join(tmp, 'in'), n_tiles=1, size=5000, progress=False)
        for split in (1, 5):
            args = transform_dataset.parse_args(['--dataroot', os.path.join(tmp, 'in'), '--out',
                                                 os.path.join(tmp, f'out{split}'), '--split', str(split)])
            source = transform_dataset.find_inria_sources(args)[0]
            transform_dataset.prepare_output(args)
            t0 = time.perf_counter()
            transform_dataset.transform_source(source, args)
            ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            image, mask = read_image_file(source[1]), read_image_file(source[2])
            seed_project_transform(image, mask, 286, split)
            seed = time.perf_counter() - t0
            print(f'| {split}×{split} | {ours:.2f} s | {seed:.2f} s |', flush=True)


def main(argv=None):
    opt = parse_args(argv)
    check_counts(opt, [key for key in ('gen_batch', 'mask_size', 'threads', 'iters') if getattr(opt, key) is not None])
    if opt.warmup is not None and opt.warmup < 0:
        raise UserError(f'--warmup must be >= 0, got {opt.warmup}')
    if opt.peak_tflops is not None:
        check_positive(opt, ('peak_tflops',))
    if not 0 <= opt.gen_overlap < 1:
        raise UserError(f'--gen_overlap {opt.gen_overlap}: must be a fraction in [0, 1)')
    if opt.batches and min(opt.batches) < 1:
        raise UserError(f'--batches must all be >= 1, got {opt.batches}')
    if opt.rows and not set(opt.rows) <= set(range(1, len(STEPS) + 1)):
        raise UserError(f'--rows must be between 1 and {len(STEPS)}, got {opt.rows}')
    if opt.threads is not None:
        torch.set_num_threads(opt.threads)
    networks.InputConv2d.space_to_depth = opt.d_first_conv == 'space_to_depth'
    networks.OutputConv2d.per_tap = networks.OutputConvTranspose2d.per_tap = opt.last_convs == 'per_tap'
    device = train.setup_device(opt)
    cuda_rows = [position for position, (_, change) in enumerate(STEPS, 1) if needs_cuda(change)]
    if device.type != 'cuda' and set(opt.rows or ()) & set(cuda_rows):
        raise UserError(f'--rows {cuda_rows[0]} (CUDA graphs) needs a CUDA device')
    if opt.only in (None, 'train'):
        bench_train(opt, device)
    if opt.only in (None, 'data'):
        bench_data(opt, device)
    if opt.only in (None, 'convs'):
        bench_convs(opt, device)
    if opt.only in (None, 'generate'):
        bench_generate(opt, device)
    if opt.only in (None, 'transform'):
        bench_transform()


if __name__ == '__main__':
    run_cli(main)
