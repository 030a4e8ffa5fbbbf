"""The CUDA paths: bf16, compile, CUDA graphs, channels_last, the pinned-memory copy, no host syncs, the few-channel
layers' CUDA forms, GPU generation, bench.py.

Skipped without a GPU, which includes every plain `python -m pytest` (conftest.py hides GPUs from the suite). On a
GPU machine:  PIX2PIX_TEST_GPU=1 python -m pytest -q tests/test_gpu.py
"""
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import networks
import pix2pix_model
import train
from conftest import REPO, count_calls, tiny
from dataset import EpochPlan, batch_on_device, load_split
from generation import generate_sliding, load_generator
from synthetic_inria import synthetic_pair
from train_options import build_parser
from utils import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU: PIX2PIX_TEST_GPU=1 python -m pytest tests/test_gpu.py')
GPU_OPTIMISATIONS = ('--device', 'cuda', '--amp', 'on', '--compile', '--channels_last')


def gpu():
    return torch.device('cuda', torch.cuda.current_device())


@pytest.fixture(scope='module')
def gpu_run(transformed_root, tmp_path_factory):
    """Two epochs with every GPU optimisation, stopped after the first and resumed."""
    runs = tmp_path_factory.mktemp('gpu_runs')
    options = (*GPU_OPTIMISATIONS, '--n_epochs', '2', '--n_epochs_decay', '0', '--batch_size', '4')
    train.main(tiny(transformed_root, runs, 'gpu', *options, '--stop_epoch', '1'))
    train.main(tiny(transformed_root, runs, 'gpu', *options, '--resume'))
    return str(runs / 'gpu')


def test_training_with_every_gpu_optimisation_resumes_to_the_end(gpu_run):
    state = load_checkpoint(os.path.join(gpu_run, 'latest.pt'))
    assert state['epoch'] == 2
    assert all(torch.isfinite(w).all() for w in state['G'].values() if w.is_floating_point())
    assert [row['epoch'] for row in state['history']] == [1, 2]
    assert all(np.isfinite(row['PSNR']) for row in state['history'])
    assert len(state['rng']) == 1 and len(state['rng'][0]['cuda']) == 1  # the training GPU's state only


def test_pinned_memory_batches_equal_gpu_resident_batches(transformed_root):
    masks, images, _ = load_split(transformed_root, 'train')
    device = gpu()
    for plan_device in (device, 'cuda'):  # a device given without its index is the same device
        plan = EpochPlan(len(masks), masks.shape[-1], 64, seed=3, epoch=1, rotate=True).to(plan_device)
        for index in range(len(masks) // 4):
            in_ram = batch_on_device(masks, images, plan, index, 4, 64)
            on_gpu = batch_on_device(masks.to(device), images.to(device), plan, index, 4, 64)
            for a, b in zip(in_ram, on_gpu):
                assert a.device == b.device == device and torch.equal(a, b)


def test_training_with_cuda_graphs_runs_to_the_end_and_resumes(transformed_root, tmp_path):
    """--compile_mode reduce-overhead: G's compiled graphs replay as CUDA graphs, their outputs in memory the next
    step's replay reuses; the D step, validation (eager G), the log steps and the checkpoints must not read stale
    ones (with D's graphs as CUDA graphs too, D's backward ended the step for torch, and the G step failed). A resume
    records the graphs afresh, after the restored weights and optimiser states."""
    options = (*GPU_OPTIMISATIONS, '--compile_mode', 'reduce-overhead', '--n_epochs', '3', '--n_epochs_decay', '0',
               '--batch_size', '4', '--log_freq', '2')
    torch._dynamo.reset()
    assert train.main(tiny(transformed_root, tmp_path, 'graphs', *options, '--stop_epoch', '2')) == 0
    torch._dynamo.reset()
    assert train.main(tiny(transformed_root, tmp_path, 'graphs', *options, '--resume')) == 0
    state = load_checkpoint(os.path.join(tmp_path, 'graphs', 'latest.pt'))
    assert [row['epoch'] for row in state['history']] == [1, 2, 3]
    assert all(np.isfinite(row['PSNR']) for row in state['history'])
    assert all(torch.isfinite(w).all() for w in state['G'].values() if w.is_floating_point())


@pytest.mark.parametrize('mode', ['default', 'reduce-overhead'])
@pytest.mark.parametrize('data_on_gpu', [True, False], ids=['split on the GPU', 'split in RAM'])
def test_training_steps_never_wait_for_the_gpu(transformed_root, tmp_path, data_on_gpu, mode):
    """Issue 5: no host sync in the hot loop (the batch, the step, the running losses; train.py syncs only at log
    steps and epoch ends). CUDA's sync debug mode turns any call that waits for the GPU into an error."""
    opt = build_parser().parse_args(tiny(transformed_root, tmp_path, 'sync', *GPU_OPTIMISATIONS, '--rotate',
                                         '--compile_mode', mode))
    opt.input_nc = 1
    torch._dynamo.reset()  # graphs for this batch size alone, as train.py has, not ones made dynamic by earlier tests
    device = gpu()
    trainer = pix2pix_model.Trainer(opt, device, rank=0, world_size=1)
    masks, images, _ = load_split(transformed_root, 'train')
    if data_on_gpu:
        masks, images = masks.to(device), images.to(device)
    plan = EpochPlan(len(masks), masks.shape[-1], 64, seed=0, epoch=0, rotate=True).to(device)
    running = torch.zeros(len(pix2pix_model.LOSS_NAMES), device=device)

    def step(index):
        mask, real = batch_on_device(masks, images, plan, index % (len(masks) // 2), 2, 64)
        return trainer.train_step(pix2pix_model.in_layout(mask, opt), pix2pix_model.in_layout(real, opt))
    for index in range(3):  # compilation and cuDNN's autotuning may sync: not the steady loop
        running += step(index)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for index in range(3, 9):
            running += step(index)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.isfinite(running).all()


# (layer, its class switches, its form in networks, the input shape): D's first conv at a 64² crop, D's last conv on
# its 31² map at 256², a U-Net's last layer at 128²
FEW_CHANNEL_LAYERS = {
    "D's first conv over 2×2 blocks (the default)": (lambda: networks.InputConv2d(4, 64, 4, 2, 1), {},
                                                     'InputConv2d.space_to_depth_forward', (2, 4, 64, 64)),
    "D's first conv zero-padded": (lambda: networks.InputConv2d(4, 64, 4, 2, 1), {'space_to_depth': False},
                                   'conv_over_zero_padded_channels', (2, 4, 64, 64)),
    "D's last conv per tap": (lambda: networks.OutputConv2d(512, 1, 4, 1, 1), {'per_tap': True},
                              'conv_as_shifted_tap_sums', (2, 512, 31, 31)),
    "G's last layer per tap": (lambda: networks.OutputConvTranspose2d(128, 3, 4, 2, 1), {'per_tap': True},
                               'conv_transpose_as_folded_taps', (2, 128, 64, 64)),
}


@contextlib.contextmanager
def fp32_without_tf32():
    """cuDNN and cuBLAS in true fp32 (train.py turns TF32 on for the whole process), through the legacy flags that
    train.py sets: torch.backends.cudnn.flags also writes the new fp32_precision flag, and some torch versions refuse
    to read TF32 flags set through both APIs (pytorch/pytorch#179445), inductor's compile included."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved


def relative_error(ours, theirs):
    return ((ours.float() - theirs.float()).norm() / theirs.float().norm()).item()


@pytest.mark.parametrize('amp', [False, True], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('case', FEW_CHANNEL_LAYERS)
def test_few_channel_layers_compiled_on_the_gpu_compute_torchs_conv(monkeypatch, case, amp):
    """The few-channel layers' CUDA forms, compiled as training compiles them, on a channels_last input: the output
    and the gradients of torch's conv on the same input (the tests on the CPU check the forms in fp64 eager, where
    inductor's GPU code never runs). fp32 with TF32 off differs by rounding only; bf16 autocast by bf16's (its
    products and, per tap, its partial sums are rounded to 8 bits). A wrong tap, block or border is off by tens of %."""
    make, switches, form, shape = FEW_CHANNEL_LAYERS[case]
    torch.manual_seed(0)
    layer = make().to(gpu())
    for name, value in switches.items():
        monkeypatch.setattr(type(layer), name, value)
    owner, _, attribute = form.rpartition('.')
    taken = count_calls(monkeypatch, getattr(networks, owner) if owner else networks, attribute)
    torch_forward = nn.ConvTranspose2d.forward if isinstance(layer, nn.ConvTranspose2d) else nn.Conv2d.forward
    x = torch.randn(shape, device=gpu()).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch._dynamo.reset()
    results = []
    with fp32_without_tf32(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        for forward in (torch.compile(layer), lambda x: torch_forward(layer, x)):
            out = forward(x)
            grad = torch.randn(out.shape, device=x.device, generator=torch.Generator(x.device).manual_seed(1))
            results.append((out, *torch.autograd.grad(out, (x, layer.weight, layer.bias), grad)))
    assert taken  # the compiled layer traced its form, not torch's conv
    for what, ours, theirs in zip(('output', 'input grad', 'weight grad', 'bias grad'), *results):
        assert ours.shape == theirs.shape
        assert relative_error(ours, theirs) < (1e-2 if amp else 1e-4), what


def test_sliding_generation_on_the_gpu_matches_the_cpu(gpu_run):
    # a mask half buildings: on empty windows this barely trained G is chaotic (weights moved by 1e-6 change the
    # mean by 3-4 levels on masks of 5-19 % buildings), which would test instance norm's rounding, not the windows
    mask, _ = synthetic_pair(300, seed=5)
    images = {}
    runs = (('cpu', torch.device('cpu'), False), ('gpu fp32', gpu(), False), ('gpu bf16', gpu(), True))
    for name, device, amp in runs:
        G, cfg, _ = load_generator(os.path.join(gpu_run, 'latest.pt'), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            images[name] = generate_sliding(G, mask, cfg['crop_size'], 0.5, 8, device).astype(np.int16)
    assert all(image.shape == (300, 300, 3) for image in images.values())
    # A barely trained G with many instance norms magnifies rounding: emulating TF32's 10-bit mantissa on the CPU
    # moved a few pixels by up to 40 levels (mean 0.2), and bf16 moved the mean by 0.5-2.4 across masks. A wrong
    # window, blend or layout moves the mean by tens, so the bounds are on means and shares, not on the maximum.
    tf32 = np.abs(images['gpu fp32'] - images['cpu'])  # cuDNN convolutions in TF32
    assert tf32.mean() < 1 and (tf32 > 8).mean() < 0.05
    assert np.abs(images['gpu bf16'] - images['gpu fp32']).mean() < 4  # bf16 keeps 8 bits of mantissa


def test_bench_runs_the_plain_and_the_optimised_row_on_the_gpu():
    # rows 1 and 5 only: each compiled row compiles unet_256 from cold, and .ci/gpu measures every row anyway
    train_rows = subprocess.run([sys.executable, 'bench.py', '--only', 'train', '--batches', '2', '--iters', '2',
                                 '--warmup', '2', '--rows', '1', '5'], cwd=REPO, capture_output=True, text=True,
                                timeout=900)
    assert train_rows.returncode == 0, train_rows.stderr[-2000:]
    rows = [line for line in train_rows.stdout.splitlines() if line.startswith('| 2 |')]
    assert len(rows) == 2 and all(row.rstrip(' |').endswith('%') for row in rows), train_rows.stdout  # MFU known
    generate = subprocess.run([sys.executable, 'bench.py', '--only', 'generate', '--mask_size', '1024', '--gen_amp'],
                              cwd=REPO, capture_output=True, text=True, timeout=900)
    assert generate.returncode == 0 and 'megapixels/s' in generate.stdout, generate.stderr[-2000:]


def test_more_torchrun_processes_than_gpus_is_refused(transformed_root, tmp_path):
    processes = torch.cuda.device_count() + 1
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                             f'--nproc_per_node={processes}', os.path.join(REPO, 'train.py'),
                             *tiny(transformed_root, tmp_path, 'x', '--n_epochs', '1')],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert f'torchrun started {processes} processes on this machine' in result.stderr
    assert not (tmp_path / 'x').exists()
