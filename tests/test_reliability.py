"""Crash safety with real processes: kill -9 at random moments, SIGTERM, full disk, hostile checkpoints."""
import glob
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import torch

import train
import transform_dataset
from conftest import REPO, another_process_writing, assert_same_weights, tiny, wait_for
from metrics import make_fid_kid
from synthetic_inria import make_synthetic_inria
from utils import CHECKPOINT_FORMAT, UserError, load_checkpoint, writing_alone

TRAIN = [sys.executable, os.path.join(REPO, 'train.py')]
TRANSFORM = [sys.executable, os.path.join(REPO, 'transform_dataset.py')]


def start(cmd):
    # own session: the kill reaches the whole process group, as a scheduler's would
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def kill_9(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def temp_file_in(folder):
    return lambda: os.path.isdir(folder) and any(n.endswith('.tmp') for n in os.listdir(folder))


def checkpoint_temp_file_in(folder):
    """A checkpoint being written (.latest.pt.<random>.tmp), not config.json's temp file at start-up."""
    return lambda: os.path.isdir(folder) and any(n.endswith('.tmp') and '.pt.' in n for n in os.listdir(folder))


def assert_checkpoints_readable(run_dir):
    for path in glob.glob(os.path.join(run_dir, '*.pt')):
        state = torch.load(path, map_location='cpu', weights_only=True)
        assert state['format'] == CHECKPOINT_FORMAT, path


def finished_epochs(run_dir):
    path = os.path.join(run_dir, 'latest.pt')
    return torch.load(path, map_location='cpu', weights_only=True)['epoch'] if os.path.exists(path) else 0


def final_generator(run_dir):
    return torch.load(os.path.join(run_dir, 'latest.pt'), map_location='cpu', weights_only=True)['G']


def test_train_killed_at_random_moments_resumes_bit_identically(many_tiles_root, tmp_path):
    # 6 epochs of 45 iterations: long enough that every kill lands in a run that still has training to do
    schedule = ['--n_epochs', '3', '--n_epochs_decay', '3', '--save_epoch_freq', '2']
    started = time.monotonic()
    subprocess.run(TRAIN + tiny(many_tiles_root, tmp_path, 'reference', *schedule), check=True, capture_output=True)
    print(f'reference run {time.monotonic() - started:.1f} s')
    run_dir = str(tmp_path / 'killed')
    rng = random.Random(0)
    kills_during_write = 0
    for attempt in range(10):
        events_before = len(glob.glob(os.path.join(run_dir, 'events.out.*')))
        # always --resume, as a requeue script does: also after a kill before the first save
        proc = start(TRAIN + tiny(many_tiles_root, tmp_path, 'killed', *schedule, '--resume'))
        if attempt % 2:  # aim at a checkpoint write: kill as soon as a temp file shows up
            kills_during_write += wait_for(checkpoint_temp_file_in(run_dir), timeout=60)
        else:  # a random moment once training has started (its event file appears)
            wait_for(lambda: len(glob.glob(os.path.join(run_dir, 'events.out.*'))) > events_before, 60, 0.01)
            time.sleep(rng.uniform(0.0, 2.0))
        kill_9(proc)
        assert_checkpoints_readable(run_dir)  # never an unreadable checkpoint on disk
        if finished_epochs(run_dir) == 6:  # a resumed finished run writes nothing: no moment left to kill
            break
    epochs_before_last_run = finished_epochs(run_dir)
    proc = subprocess.run(TRAIN + tiny(many_tiles_root, tmp_path, 'killed', *schedule, '--resume'),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not glob.glob(os.path.join(run_dir, '*.tmp'))
    assert_same_weights(final_generator(tmp_path / 'reference'), final_generator(run_dir))
    print(f'{attempt + 1} kills, {kills_during_write} of {(attempt + 1) // 2} targeted ones during a checkpoint '
          f'write; {epochs_before_last_run} of 6 epochs done before the last, uninterrupted run')


def test_sigterm_saves_latest_mid_epoch_and_exits_0(many_tiles_root, tmp_path):
    schedule = ['--n_epochs', '2', '--n_epochs_decay', '0']
    subprocess.run(TRAIN + tiny(many_tiles_root, tmp_path, 'reference', *schedule), check=True, capture_output=True)
    run_dir = str(tmp_path / 'preempted')
    proc = start(TRAIN + tiny(many_tiles_root, tmp_path, 'preempted', *schedule))
    assert wait_for(lambda: glob.glob(os.path.join(run_dir, 'events.out.*')), timeout=60, step=0.05)
    time.sleep(0.3)  # a few iterations into the first epoch (45 iterations take seconds)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    state = torch.load(os.path.join(run_dir, 'latest.pt'), weights_only=True)
    assert state['epoch'] == 0 and 0 < state['next_batch'] < 45  # saved mid-epoch
    proc = subprocess.run(TRAIN + tiny(many_tiles_root, tmp_path, 'preempted', '--resume'), capture_output=True)
    assert proc.returncode == 0
    assert_same_weights(final_generator(tmp_path / 'reference'), final_generator(run_dir))


def test_a_training_started_twice_stops_before_touching_the_running_one(many_tiles_root, tmp_path, capsys):
    """The same job started twice, or requeued while the first still runs: the second must neither interleave
    checkpoints with the first nor delete its temp files. It stops with one line naming the first."""
    run_dir = tmp_path / 'twice'
    first = start(TRAIN + tiny(many_tiles_root, tmp_path, 'twice', '--n_epochs', '100', '--n_epochs_decay', '0'))
    try:
        assert wait_for(lambda: (run_dir / 'latest.pt').exists(), timeout=120, step=0.05)
        in_flight = run_dir / '.epoch_9.pt.k2x8ab_9.tmp'  # a checkpoint the first one is writing, named as atomic_open
        in_flight.write_bytes(b'half a checkpoint')
        with pytest.raises(UserError, match=rf'twice: another process \(pid {first.pid}\) is writing there; wait for '
                                            rf'it to end, or choose another --runs_dir or --name$'):
            train.main(tiny(many_tiles_root, tmp_path, 'twice', '--resume'))
        assert in_flight.exists() and first.poll() is None
        assert 'resumed' not in capsys.readouterr().out  # the error is all it says
    finally:
        kill_9(first)
    with writing_alone(str(run_dir), '--name'):  # the kill -9 left no stale lock
        pass


def test_a_transform_into_a_folder_another_process_writes_stops_before_touching_it(synthetic_root, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    in_flight = out / '.transform.json.q7w3x0ab.tmp'
    in_flight.write_text('{"size"')
    args = ['--dataroot', synthetic_root, '--out', str(out), '--size', '72', '--crop_size', '64', '--workers', '1']
    with another_process_writing(out) as pid:
        with pytest.raises(UserError, match=rf'out: another process \(pid {pid}\) is writing there; wait for it to '
                                            rf'end, or choose another --out$'):
            transform_dataset.main(args)
        assert sorted(os.listdir(out)) == ['.lock', in_flight.name]
    transform_dataset.main(args)  # that process is gone: its lock with it, and its temp file is now stale
    assert not in_flight.exists() and (out / 'val' / 'manifest.json').exists()


def finished_sources(out):
    return len(glob.glob(os.path.join(out, '*', 'sources', '*.json')))


def test_transform_killed_and_rerun_equals_one_clean_run(tmp_path):
    source = tmp_path / 'inria'
    make_synthetic_inria(str(source), n_tiles=12, size=1000, seed=3, progress=False)
    options = ['--dataroot', str(source), '--size', '64', '--crop_size', '64', '--split', '5', '--workers', '1']
    subprocess.run(TRANSFORM + options + ['--out', str(tmp_path / 'clean')], check=True, capture_output=True)
    out = tmp_path / 'killed'
    rng = random.Random(1)
    # The whole transform takes well under a second, so kills are aimed by progress, not by the clock.
    kills_mid_run = 0
    for attempt in range(6):
        target = finished_sources(out) + rng.randint(1, 2)
        proc = start(TRANSFORM + options + ['--out', str(out)])
        if attempt % 2:  # while a tile is being written
            wait_for(temp_file_in(str(out / 'train' / 'images')), timeout=20)
        else:  # after one or two more finished sources
            wait_for(lambda: finished_sources(out) >= target, timeout=20)
        kill_9(proc)
        kills_mid_run += finished_sources(out) < 12
    print(f'{kills_mid_run} of 6 kills before the last source was finished')
    subprocess.run(TRANSFORM + options + ['--out', str(out)], check=True, capture_output=True)
    clean_files = sorted(os.path.relpath(p, tmp_path / 'clean') for p in glob.glob(str(tmp_path / 'clean' / '**' / '*'),
                                                                                   recursive=True))
    killed_files = sorted(os.path.relpath(p, out) for p in glob.glob(str(out / '**' / '*'), recursive=True))
    assert killed_files == clean_files  # no partial .npy, no leftover temp file
    for rel in clean_files:
        if rel.endswith('.npy'):
            np.testing.assert_array_equal(np.load(out / rel), np.load(tmp_path / 'clean' / rel))
    for split in ('train', 'val'):
        assert json.load(open(out / split / 'manifest.json')) == json.load(open(tmp_path / 'clean' / split / 'manifest.json'))


def worker_processes_of(pid):
    """The multiprocessing spawn workers whose parent is `pid` (Linux /proc)."""
    workers = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            parent = int(open(stat).read().rsplit(')', 1)[1].split()[1])
            command = open(stat[:-len('stat')] + 'cmdline', 'rb').read()
        except (OSError, IndexError, ValueError):  # the process ended while being read
            continue
        if parent == pid and b'spawn_main' in command:
            workers.append(int(stat.split('/')[2]))
    return workers


def start_a_long_transform_in_two_workers(tmp_path):
    """transform_dataset.py --workers 2 on 100 sources, each --split 5 into 25 tiles (a few seconds of work),
    once both workers run: (the process, its output folder, the worker pids)."""
    make_synthetic_inria(str(tmp_path / 'two'), n_tiles=2, size=1000, seed=3, progress=False)
    source, out = tmp_path / 'inria', tmp_path / 'out'
    for sub in ('images', 'gt'):
        os.makedirs(source / sub)
        for i in range(100):
            os.symlink(tmp_path / 'two' / sub / ('austin1.tif' if i % 2 else 'chicago1.tif'),
                       source / sub / f'vienna{i + 6}.tif')
    proc = start(TRANSFORM + ['--dataroot', str(source), '--out', str(out), '--size', '64', '--crop_size', '64',
                              '--split', '5', '--workers', '2'])
    # after a first finished source, both workers have started: a kill while the pool still spawns workers meets
    # a CPython race (the pool then waits for a worker it never stopped), which an out-of-memory kill does not
    assert wait_for(lambda: finished_sources(out) >= 1, timeout=60)
    workers = worker_processes_of(proc.pid)
    assert len(workers) == 2
    return proc, out, workers


def running(pid):
    """Whether the process exists and has not ended (an orphan's zombie may linger where nothing reaps it)."""
    try:
        return open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0] not in 'ZX'
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='finds the worker processes in /proc')
def test_transform_worker_killed_is_one_clear_error_not_a_hang(tmp_path):
    """An out-of-memory kill of one --workers process: multiprocessing.Pool waited for its result forever."""
    proc, out, workers = start_a_long_transform_in_two_workers(tmp_path)
    os.kill(workers[0], signal.SIGKILL)
    try:
        stderr = proc.communicate(timeout=120)[1].decode()
    except subprocess.TimeoutExpired:
        kill_9(proc)
        pytest.fail('transform_dataset.py hung after a worker was killed')
    assert finished_sources(out) < 100  # the kill came mid-run
    assert proc.returncode == 2
    assert stderr.splitlines()[-1] == (f'error: {out}: a worker process died (killed, probably out of memory); '
                                       'finished sources are kept: re-run, with fewer --workers if memory is short')
    assert 'Traceback' not in stderr


def test_a_worker_killed_while_it_waits_for_work_does_not_hang_the_pool():
    """The pool stops its other workers with SIGTERM, which transform_dataset's workers ignore, then waits for each to
    read a stop order from the work queue. A worker killed while it waited for work died holding that queue's lock:
    the other one, its source done, waited for the lock forever, and the pool for it (a CI run hung so). The killed
    worker's own test (above) mostly kills a busy worker and passed 27 times in a row here."""
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn'),
                               initializer=transform_dataset.leave_stopping_to_the_parent)
    busy, idle = pool.submit(time.sleep, 3), pool.submit(os.getpid)
    idle_pid = idle.result()
    time.sleep(0.5)  # by then it waits for more work, holding the queue's lock
    os.kill(idle_pid, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        busy.result()
    transform_dataset.kill_workers(pool)
    stopping = threading.Thread(target=pool.shutdown, daemon=True)
    stopping.start()
    stopping.join(timeout=30)
    hung = stopping.is_alive()
    for process in list((pool._processes or {}).values()):  # not to leave a stuck worker behind a failure
        process.kill()
    assert not hung, 'the pool waited for a worker that could not stop'


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='finds the worker processes in /proc')
@pytest.mark.parametrize('signum, to_group, times, returncode, line', [
    (signal.SIGTERM, False, 1, 143, 'terminated (SIGTERM): what was finished is kept'),
    (signal.SIGTERM, True, 1, 143, 'terminated (SIGTERM): what was finished is kept'),
    (signal.SIGINT, True, 1, 130, 'interrupted (Ctrl-C): what was finished is kept'),
    (signal.SIGTERM, False, 2, 143, 'terminated (SIGTERM): what was finished is kept'),
    (signal.SIGINT, True, 2, 130, 'interrupted (Ctrl-C): what was finished is kept'),
])
def test_transform_stopped_by_a_signal_stops_its_workers_and_says_so(tmp_path, signum, to_group, times, returncode,
                                                                     line):
    """A SIGTERM to the parent alone left both workers waiting forever for work (seen: 10 min), outside the folder
    lock; one to the group killed the workers mid-source, with no message and a "leaked semaphore" warning. A
    repeat (a scheduler's second notice, an impatient Ctrl-C) cut the pool's shutdown short: a hang."""
    proc, out, workers = start_a_long_transform_in_two_workers(tmp_path)
    for _ in range(times):
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        time.sleep(0.05)
    try:
        stderr = proc.communicate(timeout=60)[1].decode()
    except subprocess.TimeoutExpired:
        kill_9(proc)
        pytest.fail('transform_dataset.py did not stop')
    assert proc.returncode == returncode and stderr.splitlines()[-1] == line, stderr
    assert 'Traceback' not in stderr and 'leaked' not in stderr
    assert wait_for(lambda: not any(map(running, workers)), timeout=30), 'a worker runs on'
    assert finished_sources(out) < 100  # stopped mid-run; the sources under way were finished, not cut:
    assert not glob.glob(str(out / '**' / '*.tmp'), recursive=True, include_hidden=True)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='finds the worker processes in /proc')
@pytest.mark.parametrize('signum, to_group', [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_transform_stopped_while_its_workers_start_is_one_line(tmp_path, signum, to_group):
    """Raised inside the pool's start-up, a SIGTERM gave 'cannot join thread before it is started' tracebacks and
    exit 1 (9 times in 30); one to the group killed a half-started worker, and the pool waited for it forever."""
    make_synthetic_inria(str(tmp_path / 'inria'), n_tiles=10, size=2000, seed=3, progress=False)
    stopped = 0
    for attempt in range(4):
        out = tmp_path / f'out{attempt}'
        proc = start(TRANSFORM + ['--dataroot', str(tmp_path / 'inria'), '--out', str(out), '--split', '5',
                                  '--size', '32', '--crop_size', '32', '--workers', '2'])
        assert wait_for(lambda: worker_processes_of(proc.pid) or proc.poll() is not None, timeout=60)
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        try:
            stderr = proc.communicate(timeout=60)[1].decode()
        except subprocess.TimeoutExpired:
            kill_9(proc)
            pytest.fail('transform_dataset.py hung')
        if proc.returncode == 0:
            continue  # finished before the signal came: nothing to see this time
        stopped += 1
        assert proc.returncode == 128 + signum and 'Traceback' not in stderr, stderr
        assert 'what was finished is kept' in stderr.splitlines()[-1]
    assert stopped  # 10 sources of 25 tiles take seconds: the signal comes while the workers start


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='finds the worker processes in /proc')
def test_transform_workers_exit_with_a_parent_killed_with_9(tmp_path):
    """They waited forever for work, outside the folder lock; a re-run then finishes the dataset."""
    proc, out, workers = start_a_long_transform_in_two_workers(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_for(lambda: not any(map(running, workers)), timeout=30), 'a worker runs on'
    assert subprocess.run(proc.args, capture_output=True).returncode == 0
    assert finished_sources(out) == 100


@pytest.mark.parametrize('workers', ['1', '2'])
def test_transform_write_limit_is_one_clear_error(tmp_path, workers):
    """A real failed write (a file-size limit, like a full disk): one line naming the file, exit 2, no temp file.
    np.save into the file itself wrote a truncated .npy here and went on (numpy's tofile ignores the failed flush)."""
    def limit_file_size():  # in the child: workers inherit it; the write fails with EFBIG instead of a signal
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))  # a 32² image .npy is 3200 B

    source = tmp_path / 'inria'
    make_synthetic_inria(str(source), n_tiles=6, size=100, seed=3, progress=False)
    out = tmp_path / 'out'
    proc = subprocess.run(TRANSFORM + ['--dataroot', str(source), '--out', str(out), '--size', '32', '--crop_size',
                                       '32', '--workers', workers],
                          capture_output=True, text=True, preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(rf'error: {re.escape(str(out))}/(train|val)/images/\w+\.npy: could not write '
                        r'\(File too large; \d+ MB free there\)', proc.stderr.splitlines()[-1]), proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not glob.glob(str(out / '**' / '*.tmp'), recursive=True, include_hidden=True)


def test_atomic_write_killed_mid_write_leaves_old_file(tmp_path):
    target = tmp_path / 'latest.pt'
    target.write_bytes(b'old and complete')
    writer = (f'import sys, time; sys.path.insert(0, {REPO!r}); from utils import atomic_open\n'
              f'with atomic_open({str(target)!r}) as f:\n'
              f'    f.write(b"new but partial"); f.flush(); print("writing", flush=True); time.sleep(60)\n')
    proc = subprocess.Popen([sys.executable, '-c', writer], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline().strip() == b'writing'
    kill_9(proc)
    assert target.read_bytes() == b'old and complete'
    assert len(glob.glob(str(tmp_path / '.latest.pt.*.tmp'))) == 1  # cleaned by the next run (remove_stale_temp_files)


def test_disk_full_while_saving_keeps_previous_latest(transformed_root, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # epoch 1 writes best.pt and latest.pt; epoch 2 finds the disk full
            raise OSError(28, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save_until_disk_full)
    with pytest.raises(UserError, match='No space left on device.*previous version of this file is intact'):
        train.main(tiny(transformed_root, tmp_path, 'full', '--n_epochs', '3', '--n_epochs_decay', '0'))
    monkeypatch.setattr(torch, 'save', real_save)
    assert load_checkpoint(str(tmp_path / 'full' / 'latest.pt'))['epoch'] == 1
    assert not glob.glob(str(tmp_path / 'full' / '.*.tmp'))


def test_write_limit_while_saving_is_one_clear_error(tmp_path):
    """A real failed write, not a monkeypatch: torch.save turns it into a RuntimeError, which must not escape."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from utils import UserError, save_checkpoint
        path = {str(tmp_path / 'latest.pt')!r}
        save_checkpoint(path, {{'w': torch.zeros(10)}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        try:
            save_checkpoint(path, {{'w': torch.zeros(1_000_000)}})
        except UserError as err:
            print(err)
    """)
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r'.*latest\.pt: could not save checkpoint \(.+; \d+ MB free there\); '
                        r'the previous version of this file is intact\n', proc.stdout), proc.stdout
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['w'].shape == (10,)
    assert not glob.glob(str(tmp_path / '.*.tmp'))


def test_unwritable_runs_dir_is_a_clear_error(transformed_root, tmp_path):
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('a file where the runs folder should be')
    with pytest.raises(UserError, match=r'not_a_folder/x: cannot write there \(.*\); choose another --runs_dir or --name'):
        train.main(tiny(transformed_root, blocker, 'x', '--n_epochs', '1', '--n_epochs_decay', '0'))


class RunsCode:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_checkpoint_that_would_run_code_is_refused(transformed_root, tmp_path):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pt'
    torch.save({'format': CHECKPOINT_FORMAT, 'G': RunsCode(marker)}, evil)
    # torch's own message advises weights_only=False, the unsafe way round: not passed on
    with pytest.raises(UserError, match=r'evil.pt: not a loadable checkpoint \(it holds Python objects besides '
                                        r'tensors; refused, since loading them could run code\)$'):
        load_checkpoint(str(evil))
    # the same file as a run's latest.pt, reached through train.py --resume
    train.main(tiny(transformed_root, tmp_path, 'victim', '--n_epochs', '1', '--n_epochs_decay', '1',
                    '--stop_epoch', '1'))
    os.replace(evil, tmp_path / 'victim' / 'latest.pt')
    with pytest.raises(UserError, match='latest.pt: not a loadable checkpoint'):
        train.main(tiny(transformed_root, tmp_path, 'victim', '--resume'))
    # the weights files of the VGG loss and of FID/KID (torch-fidelity loads the latter without weights_only)
    with pytest.raises(UserError, match=r'--vgg_weights: \S+latest.pt: it holds Python objects besides tensors'):
        train.main(tiny(transformed_root, tmp_path, 'vgg', '--content_loss', 'l1+vgg', '--lambda_VGG', '1',
                        '--vgg_weights', str(tmp_path / 'victim' / 'latest.pt')))
    with pytest.raises(UserError, match=r'latest.pt: cannot load InceptionV3 weights for FID/KID \(it holds Python '
                                        r'objects besides tensors'):
        make_fid_kid(str(tmp_path / 'victim' / 'latest.pt'), torch.device('cpu'))
    assert not marker.exists()


@pytest.mark.parametrize('content, reason', [(b'', 'empty or truncated'), (b'text\n', 'not a PyTorch file')])
def test_an_empty_or_text_vgg_weights_file_is_one_line(transformed_root, tmp_path, content, reason):
    """An EOFError and a KeyError traceback: build_vgg_loss caught only some of torch.load's exception types."""
    weights = tmp_path / 'vgg.pth'
    weights.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(f'--vgg_weights: {weights}: {reason}')):
        train.main(tiny(transformed_root, tmp_path, 'vgg', '--content_loss', 'l1+vgg', '--lambda_VGG', '1',
                        '--vgg_weights', str(weights)))


@pytest.mark.parametrize('content, reason', [
    (b'', 'empty or truncated'),
    (b'\x00garbage' * 100, 'not a PyTorch file: Unsupported operand 0'),
    (b'{"x": 1}', 'not a PyTorch file: Unsupported operand 123'),  # was "holds Python objects besides tensors"
    (b'hello world, a text file\n', 'not a PyTorch file'),  # was "(101)"
    ('truncated', 'truncated or corrupt: PytorchStreamReader failed reading zip archive: failed finding central '
                  'directory'),  # was cut mid-sentence at 200 characters
])
def test_corrupt_checkpoint_says_what_is_wrong(tmp_path, content, reason):
    path = tmp_path / 'bad.pt'
    if content == 'truncated':
        torch.save({'format': CHECKPOINT_FORMAT, 'G': {'w': torch.zeros(1000)}}, path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(UserError) as error:
        load_checkpoint(str(path))
    assert str(error.value) == f'{path}: not a loadable checkpoint ({reason})'


def test_checkpoint_of_another_project_is_refused(tmp_path):
    torch.save({'state_dict': {'w': torch.zeros(2)}}, tmp_path / 'other.pt')
    with pytest.raises(UserError, match='not a checkpoint of this project'):
        load_checkpoint(str(tmp_path / 'other.pt'))














