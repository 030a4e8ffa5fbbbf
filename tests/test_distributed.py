"""torchrun + DistributedDataParallel on CPU (gloo, 2 processes, eager and --compile) against one process with the
same global batch."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pix2pix_model
import train
from conftest import REPO, assert_same_weights, tiny, wait_for
from utils import UserError, rng_states

LR = 2e-4


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir), size_guidance={'scalars': 0})
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


# dropout draws per-process noise, so it is off for an exact comparison
OPTIONS = ('--n_epochs', '2', '--n_epochs_decay', '0', '--batch_size', '4', '--no_dropout', '--lr', str(LR))


def torchrun_command(root, runs, name, *extra, options=OPTIONS):
    # --standalone: torchrun binds its own free port (a port picked here could be taken before torchrun binds it)
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
            os.path.join(REPO, 'train.py'), *tiny(root, runs, name, *options, *extra)]


def run_torchrun(command, timeout=300):
    """subprocess.run of a torchrun command whose processes are all killed if it has not ended after timeout
    seconds (each run here takes seconds): a process that never exits fails its test instead of stalling CI."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f'torchrun had not ended after {timeout} s; its stderr ends: {stderr[-2000:]}')
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def torchrun_two_processes(root, runs, name, *extra, options=OPTIONS):
    two = run_torchrun(torchrun_command(root, runs, name, *extra, options=options))
    assert two.returncode == 0, two.stderr[-3000:]
    assert 'Grad strides do not match' not in two.stderr  # a 1-channel first conv's harmless layout warning
    return runs / name


@pytest.fixture(scope='module')
def one_and_two_processes(transformed_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp('ddp')
    one = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), *tiny(transformed_root, runs, 'one', *OPTIONS)],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    return runs / 'one', torchrun_two_processes(transformed_root, runs, 'two')


def assert_same_losses_and_psnr(one, two):
    for tag in ('loss/G_L1', 'loss/D_real', 'loss/D_fake'):
        a, b = scalars(one, tag), scalars(two, tag)
        assert len(a) == len(b) == 2  # 5 samples, global batch 4: 1 iteration per epoch
        # the first step sees identical weights and data: equal up to float rounding
        assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-6), tag
    assert scalars(one, 'val/PSNR') == pytest.approx(scalars(two, 'val/PSNR'), abs=0.05)


def test_losses_match_one_process(one_and_two_processes):
    assert_same_losses_and_psnr(*one_and_two_processes)


@pytest.mark.skipif(not shutil.which(os.environ.get('CXX', 'c++')), reason='torch.compile on CPU needs a C++ compiler')
def test_compiled_ddp_matches_one_eager_process(one_and_two_processes, transformed_root):
    one, two = one_and_two_processes
    compiled = torchrun_two_processes(transformed_root, two.parent, 'two_compiled', '--compile')
    # Weights are not compared with the eager run: compiled kernels round differently, and after 2 Adam steps
    # ~60 % of G's weights differ by more than 1e-6 (max ~4·lr) from eager ones, in one process as in two.
    # Compiled 2-process against compiled 1-process weights agree as closely as the eager pair does.
    assert_same_losses_and_psnr(one, compiled)


def test_weights_match_one_process(one_and_two_processes):
    one, two = one_and_two_processes
    a = torch.load(one / 'latest.pt', weights_only=True)['G']
    b = torch.load(two / 'latest.pt', weights_only=True)['G']
    diffs = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    # Adam's first steps move each weight by about ±lr whatever the gradient's size (at most 1.06·lr in step 2
    # with beta1 0.5), so a gradient that is ~0 in both runs may round to opposite signs: a few weights differ by
    # up to 2·lr per step, the rest agree to float rounding.
    assert diffs.max() <= 2 * LR * (1 + 1.06)
    print(f"{(diffs > 1e-6).float().mean():.4%} of weights differ by more than 1e-6, max {diffs.max():.2e}")
    assert (diffs > 1e-6).float().mean() < 0.02


def test_only_rank_0_writes(one_and_two_processes):
    _, two = one_and_two_processes
    assert len(glob.glob(str(two / 'events.out.*'))) == 1
    assert sorted(os.path.basename(p) for p in glob.glob(str(two / '*.pt'))) == ['best.pt', 'latest.pt']


def test_resume_with_dropout_equals_an_uninterrupted_run(transformed_root, tmp_path):
    # dropout on: each process draws its own noise, so each must get its own RNG state back
    options = ('--n_epochs', '2', '--n_epochs_decay', '0', '--batch_size', '4')
    straight = torchrun_two_processes(transformed_root, tmp_path, 'straight', options=options)
    torchrun_two_processes(transformed_root, tmp_path, 'split', '--stop_epoch', '1', options=options)
    assert len(torch.load(tmp_path / 'split' / 'latest.pt', weights_only=True)['rng']) == 2
    split = torchrun_two_processes(transformed_root, tmp_path, 'split', '--resume', options=options)
    assert_same_weights(torch.load(straight / 'latest.pt', weights_only=True)['G'],
                        torch.load(split / 'latest.pt', weights_only=True)['G'])


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    with pytest.raises(UserError, match=r'torchrun started 2 processes on this machine, which shows 1 GPU\(s\): '
                                        r'use --nproc_per_node 1, or --device cpu'):
        train.setup_device(SimpleNamespace(device='auto'))


def test_torchruns_summary_ends_with_the_processes_own_error_line(tmp_path):
    """The one-line error is the last thing torchrun prints, not "error_file: <N/A>" under its traceback."""
    missing = tmp_path / 'no_such_data'
    run = run_torchrun(torchrun_command(missing, tmp_path / 'runs', 'x'))
    assert run.returncode != 0
    root_cause = run.stderr.split('Root Cause (first observed failure):')[-1]
    assert f'traceback : error: {missing}: --dataroot not found' in root_cause, run.stderr[-3000:]


@pytest.mark.parametrize('nodes', [1, 2])
def test_a_path_missing_on_one_node_is_said_to_be_needed_on_every_node(transformed_root, tmp_path, monkeypatch, nodes):
    """Across machines every process reads the data, run config and checkpoints itself: a node without them (no
    shared file system) says which node, and why, in its one line. Within one machine the errors stay as they were."""
    monkeypatch.setenv('WORLD_SIZE', str(2 * nodes))
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    monkeypatch.setenv('GROUP_RANK', '1')
    joined = []  # across machines the failing process joins the others to tell them (the test below runs that)
    monkeypatch.setattr(train.dist, 'init_process_group', joined.append)
    monkeypatch.setattr(train.dist, 'all_gather_object', lambda gathered, mine: gathered.__setitem__(0, mine))
    hint = ' on node 1: every node needs it at this path (a shared file system, or a copy)' if nodes > 1 else ''
    nowhere = tmp_path / 'nowhere'
    with pytest.raises(UserError) as missing_data:
        train.main(tiny(nowhere, tmp_path / 'runs', 'fresh'))
    with pytest.raises(UserError) as missing_init:
        pix2pix_model.init_from_checkpoint(None, str(nowhere / 'best.pt'))  # read after the processes have met
    assert str(missing_data.value) == f'{nowhere}: --dataroot not found{hint}'
    assert str(missing_init.value) == f'{nowhere}/best.pt: --init_from checkpoint not found{hint}'
    assert joined == (['gloo'] if nodes > 1 else [])
    if nodes == 1:  # within one machine, --resume of a run that saved nothing starts it (test_train_options.py)
        return
    # across machines a node without the run's files must not start afresh while the others resume
    run_dir = tmp_path / 'runs' / 'copied'
    with pytest.raises(UserError) as missing_config:
        train.main(tiny(transformed_root, tmp_path / 'runs', 'copied', '--resume'))
    run_dir.mkdir(parents=True)
    (run_dir / 'config.json').write_text(json.dumps({'dataroot': str(transformed_root)}))
    with pytest.raises(UserError) as missing_checkpoint:
        train.main(tiny(transformed_root, tmp_path / 'runs', 'copied', '--resume'))
    assert str(missing_config.value) == f'{run_dir}/config.json: run config not found (nothing to --resume){hint}'
    assert str(missing_checkpoint.value) == f'{run_dir}/latest.pt: no checkpoint to --resume from{hint}'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('failing_node', [1, 0])  # node 0 also hosts the rendezvous
def test_a_path_missing_on_one_node_stops_every_node_with_its_line(transformed_root, tmp_path, failing_node):
    """Two machines, one process each (env:// rendezvous, as torchrun sets it): one cannot see --dataroot. It said
    so and stopped, and the other waited for it in init_process_group, silently, for gloo's 30 minutes (a review's
    run: 1,857 s, then a DistStoreError naming no cause)."""
    missing = tmp_path / 'nowhere'
    port, procs = free_port(), []
    for node in (0, 1):
        env = {**os.environ, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'WORLD_SIZE': '2',
               'RANK': str(node), 'LOCAL_RANK': '0', 'LOCAL_WORLD_SIZE': '1', 'GROUP_RANK': str(node)}
        root = missing if node == failing_node else transformed_root
        procs.append(subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py'),
                                       *tiny(root, tmp_path / f'node{node}', 'run', *OPTIONS)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    try:
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail('a node was still waiting after 120 s')
    line = (f'error: {missing}: --dataroot not found on node {failing_node}: every node needs it at this path (a '
            f'shared file system, or a copy)')
    assert [proc.returncode for proc in procs] == [2, 2]
    assert [error.strip().splitlines()[-1] for error in errors] == [line, line]


def test_each_process_draws_its_own_dropout_noise():
    """Dropout is pix2pix's noise: processes on the same stream would drop the same units for their own samples.
    Each rank's stream is a function of (seed, rank), apart from the stream that drew the initial weights."""
    opt = SimpleNamespace(seed=3)
    draws = {}
    for rank in (0, 1, 0):
        pix2pix_model.seed_dropout_noise(opt, rank)
        draws.setdefault(rank, []).append(torch.rand(8))
    torch.manual_seed(opt.seed)  # the weights' stream (build_models)
    weights_stream = torch.rand(8)
    assert torch.equal(*draws[0]) and not torch.equal(draws[0][0], draws[1][0])
    assert not any(torch.equal(weights_stream, draws[rank][0]) for rank in (0, 1))


def test_nccl_only_for_gpu_training(monkeypatch):
    # --device cpu on a GPU machine: NCCL takes no CPU tensors, so the processes must talk over gloo
    backends = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(train.dist, 'init_process_group', backends.append)
    monkeypatch.setattr(train.dist, 'get_rank', lambda: 0)
    monkeypatch.setattr(train.dist, 'all_gather_object', lambda gathered, mine: None)  # no other process: no failure
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert train.setup_distributed(torch.device('cpu')) == (0, 2)
    assert train.setup_distributed(torch.device('cuda', 0)) == (0, 2)
    assert backends == ['gloo', 'nccl']


def test_a_rank_without_a_saved_rng_state_starts_its_own_noise(capsys):
    # resumed with more processes than saved the checkpoint: rank 1 must not replay rank 0's dropout noise
    torch.manual_seed(7)
    saved = [rng_states(torch.device('cpu'))]
    rank0_next = torch.rand(4)
    draws = []
    for rank in (0, 1):
        pix2pix_model.Trainer.restore_rng(SimpleNamespace(rank=rank, world_size=2, opt=SimpleNamespace(seed=0),
                                                  device=torch.device('cpu')), saved)
        draws.append(torch.rand(4))
    assert torch.equal(draws[0], rank0_next) and not torch.equal(draws[1], rank0_next)
    assert capsys.readouterr().out.count('note: the checkpoint holds the RNG states of 1 process(es), this run has 2') == 1


def worker_of_rank(agent_pid, rank):
    """The pid of torchrun's worker process with this RANK (a child of the agent), or None while it starts."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/stat') as f:
                parent = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{pid}/environ', 'rb') as f:
                environment = f.read().split(b'\0')
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if parent == agent_pid and f'RANK={rank}'.encode() in environment:
            return int(pid)
    return None


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the worker processes through /proc')
def test_sigterm_to_one_process_stops_them_all_after_the_same_step(many_tiles_root, tmp_path):
    # A scheduler's notice can reach the processes steps apart; here only rank 1 ever gets it. Stopping alone,
    # it would wait forever in its checkpoint gather while rank 0 waits in the next step's gradient all-reduce.
    options = ('--n_epochs', '50', '--n_epochs_decay', '0', '--batch_size', '2', '--no_dropout')
    proc = subprocess.Popen(torchrun_command(many_tiles_root, tmp_path, 'ddp', options=options),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # rank 0 opens the event file once training starts
        assert wait_for(lambda: glob.glob(str(tmp_path / 'ddp' / 'events.out.*')), timeout=120, step=0.05)
        os.kill(worker_of_rank(proc.pid, 1), signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail('the processes did not stop together: one waits for the other')
    assert proc.returncode == 0, stderr[-3000:]
    state = torch.load(tmp_path / 'ddp' / 'latest.pt', weights_only=True)
    assert state['epoch'] < 50  # stopped early, and saved where both processes stopped
