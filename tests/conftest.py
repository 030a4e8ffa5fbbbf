import contextlib
import glob
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time

# The test models are tiny: one thread each is fastest, and it avoids OpenMP spin-wait storms when the test's
# subprocesses (inheriting this) share the CI machine's 2 cores. Set before anything imports torch.
os.environ.setdefault('OMP_NUM_THREADS', '1')
# The suite runs on the CPU, GPU machine or not: its exact-equality checks need CPU determinism, and its torchrun
# tests start two processes on one machine. tests/test_gpu.py is the GPU check: PIX2PIX_TEST_GPU=1 keeps the GPUs.
if os.environ.get('PIX2PIX_TEST_GPU') != '1':
    os.environ['CUDA_VISIBLE_DEVICES'] = ''

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, 'tests', 'data')
sys.path.insert(0, REPO)

import train  # noqa: E402
import transform_dataset  # noqa: E402
from synthetic_inria import make_synthetic_inria  # noqa: E402
import utils  # noqa: E402


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """A small Inria-layout dataset of TIFFs (LZW masks), made once per test session."""
    root = tmp_path_factory.mktemp('synthetic_inria')
    make_synthetic_inria(str(root), n_tiles=10, size=240, seed=1, progress=False)
    return str(root)


@pytest.fixture(scope='session')
def transformed_root(synthetic_root, tmp_path_factory):
    """The synthetic dataset transformed to 72² arrays (train crops 64²)."""
    out = tmp_path_factory.mktemp('transformed')
    transform_dataset.main(['--dataroot', synthetic_root, '--out', str(out), '--size', '72', '--crop_size', '64',
                            '--workers', '1'])
    return str(out)


@pytest.fixture(scope='session')
def many_tiles_root(synthetic_root, tmp_path_factory):
    """45 training tiles (3×3 split of 5 sources) so one epoch has a few dozen iterations."""
    out = tmp_path_factory.mktemp('tiles3')
    transform_dataset.main(['--dataroot', synthetic_root, '--out', str(out), '--size', '72', '--split', '3',
                            '--crop_size', '64', '--workers', '1'])
    return str(out)


WINDOW = 64  # run_dir's --crop_size: test.py's full mode outputs this size, and it is the sliding window


@pytest.fixture(scope='session')
def run_dir(transformed_root, tmp_path_factory):
    """One tiny run (ResNet, ngf 8, 64² crops, 1 epoch) for test.py's tests, trained once per test session: they
    only read its folder (copies go to tmp_path), so test_test_script.py and test_test_script_errors.py share it."""
    runs = tmp_path_factory.mktemp('runs')
    train.main(['--dataroot', transformed_root, '--name', 'tiny', '--runs_dir', str(runs), '--netG', 'resnet_6blocks',
                '--ngf', '8', '--ndf', '8', '--crop_size', str(WINDOW), '--n_epochs', '1', '--n_epochs_decay', '0',
                '--batch_size', '2', '--log_freq', '1', '--save_epoch_freq', '1'])
    return str(runs / 'tiny')


def assert_same_weights(a, b):
    """Two state_dicts hold the same tensors, bit for bit (the failing key is named)."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def tiny(root, runs, name, *extra):
    """train.py arguments for a small, fast CPU configuration: ResNet G at 64² crops, 8 filters."""
    return ['--dataroot', str(root), '--runs_dir', str(runs), '--name', name, '--netG', 'resnet_6blocks',
            '--ngf', '8', '--ndf', '8', '--crop_size', '64', '--log_freq', '1', *extra]


def write_array_dataset(root, split, masks, images):
    """Write a transformed-layout split directly from arrays (for tests that need exact contents)."""
    for sub in ('masks', 'images'):
        os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    tiles = []
    for i, (m, im) in enumerate(zip(masks, images)):
        name = f's{i}'
        np.save(os.path.join(root, split, 'masks', name + '.npy'), m)
        np.save(os.path.join(root, split, 'images', name + '.npy'), im)
        tiles.append({'name': name, 'source': name, 'tile': [0, 0], 'building_fraction': None})
    utils.write_json_atomic(os.path.join(root, split, 'manifest.json'), {'split': split, 'tiles': tiles})


@contextlib.contextmanager
def another_process_writing(folder):
    """A second process holding `folder` as train.py, transform_dataset.py or test.py do while they write there;
    yields its pid. It is killed with -9 at the end: the OS must drop the lock with it."""
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from utils import writing_alone
        with writing_alone(sys.argv[1], '--out'):
            print('holding', flush=True)
            time.sleep(600)
        """), str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'holding\n'
        yield holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def cli_error(args, capsys):
    """Run train.py's command line on args; assert exit status 2 and one line on stderr, and return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(lambda: train.main(args))
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith('error: '), lines
    return lines[0]


def run_files(run_dir):
    """{name: bytes} of the files in a run folder: what a refused command must leave as it was."""
    return {os.path.basename(p): open(p, 'rb').read() for p in glob.glob(os.path.join(run_dir, '*.*'))}


def ramp_mask(height, width, seed, count=150):
    """Buildings ever denser towards the bottom-right: the tiles of a grid differ in density, so tiles mode
    normalises each differently (instance norm) and its borders show, though the density changes gradually."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(count):
        y, x = rng.integers(0, height - 6), rng.integers(0, width - 6)
        if rng.random() < ((y / height + x / width) / 2) ** 3:
            mask[y:y + rng.integers(4, 10), x:x + rng.integers(4, 10)] = 255
    return mask


class SmoothNorm(torch.nn.Module):
    """A smooth stand-in for an instance-norm generator: a window's output level depends on its own building
    density, as in a trained model, without a 1-epoch model's noise hiding the seams."""

    def forward(self, x):
        x = torch.nn.functional.avg_pool2d(x, 9, 1, 4, count_include_pad=False)
        return torch.tanh(0.5 * torch.nn.functional.instance_norm(x)).expand(-1, 3, -1, -1)


def wait_for(predicate, timeout, step=0.0005):
    """Polls predicate until it is true (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def count_calls(monkeypatch, owner, name):
    """Wraps owner.name (a function, also one torch.compile traces) so that each call appends to the returned list,
    then runs the original: which form a layer took."""
    calls, real = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *args: calls.append(1) or real(*args))
    return calls


def script_module(script):
    """A top-level script of the repo as a module, loaded by its path: `import test` may find the standard library's
    `test` package instead of the repo's test.py."""
    spec = importlib.util.spec_from_file_location(script.removesuffix('.py') + '_script', os.path.join(REPO, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
