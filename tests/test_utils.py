"""Tests for utils.py: RNG states, the parser, one-line errors, atomic writes, locks and stop signals, devices."""
import errno
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

import utils
from conftest import REPO, tiny
from utils import ArgumentParser, UserError, counted, rng_states, run_cli, set_rng_states


class FakeGPUs:
    """torch.cuda's RNG functions for `count` GPUs whose states are labelled tensors (this suite runs on CPU)."""

    def __init__(self, monkeypatch, count):
        self.states = {i: torch.tensor([i]) for i in range(count)}
        monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device: self.states[device.index].clone())
        monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: list(self.states.values()))
        monkeypatch.setattr(torch.cuda, 'set_rng_state', self.set_state)
        monkeypatch.setattr(torch.cuda, 'set_rng_state_all', lambda states: [self.set_state(s, torch.device('cuda', i))
                                                                         for i, s in enumerate(states)])
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)

    def set_state(self, state, device):
        self.states[device.index] = state  # a KeyError here is a GPU this machine does not show


def test_rng_states_put_back_give_the_same_draws_again(tmp_path):
    """Python's, numpy's and torch's generators, through a checkpoint's weights_only round trip."""
    torch.save(rng_states(torch.device('cpu')), tmp_path / 'rng.pt')
    draws = (random.random(), np.random.random(), torch.rand(1).item())
    set_rng_states(torch.load(tmp_path / 'rng.pt', weights_only=True), torch.device('cpu'))
    assert (random.random(), np.random.random(), torch.rand(1).item()) == draws


def test_a_checkpoint_keeps_only_the_training_gpus_rng_state(monkeypatch):
    FakeGPUs(monkeypatch, 8)
    assert [int(s) for s in rng_states(torch.device('cuda', 3))['cuda']] == [3]
    assert rng_states(torch.device('cpu'))['cuda'] == []


@pytest.mark.parametrize('saved_gpus, resumed_on, expected', [
    ([5], 0, 5),  # one GPU's state: it goes to the training GPU, whatever its index
    ([5], 1, 5),
    ([10, 11], 1, 11),  # older checkpoints: one state per visible GPU, this GPU's is taken
    ([10, 11, 12, 13], 0, 10),  # saved on a 4-GPU node, resumed where one GPU is visible
])
def test_the_gpu_rng_state_goes_back_to_the_training_gpu(monkeypatch, saved_gpus, resumed_on, expected):
    gpus = FakeGPUs(monkeypatch, resumed_on + 1)
    states = {**rng_states(torch.device('cpu')), 'cuda': [torch.tensor([v]) for v in saved_gpus]}
    set_rng_states(states, torch.device('cuda', resumed_on))
    assert int(gpus.states[resumed_on]) == expected
    assert all(int(gpus.states[i]) == i for i in range(resumed_on))  # the other GPUs' states are untouched


@pytest.mark.parametrize('script, required, abbreviation', [
    ('train.py', ['--dataroot', 'x'], '--devi'), ('test.py', ['--run', 'x'], '--devi'),
    ('transform_dataset.py', [], '--datar'), ('train_segmenter.py', ['--dataroot', 'x'], '--devi'),
    ('bench.py', [], '--devi'), ('demo.py', [], '--devi'),
])
def test_every_script_refuses_abbreviations_in_one_line(script, required, abbreviation):
    # argparse's default takes `--devi` for --device: a silent guess that changes meaning when an option is added
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *required, abbreviation, 'x'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f'{script}: error: unrecognized arguments: {abbreviation} x (see --help)']


def test_counted_says_one_without_plural():
    assert [counted(n, 'tile') for n in (0, 1, 2)] == ['0 tiles', '1 tile', '2 tiles']
    assert counted(1, 'batch', 'batches') == '1 batch' and counted(3, 'batch', 'batches') == '3 batches'


def test_help_shows_defaults_once():
    parser = ArgumentParser('test')
    parser.add_argument('--size', type=int, default=286, help='side')
    parser.add_argument('--told', type=int, default=4, help='already says it (default 4)')
    parser.add_argument('--flag', action='store_true', help='a switch')
    parser.add_argument('--maybe', default=None, help='optional')
    parser.add_argument('--seed', type=int, default=0, help='seed')
    parser.add_argument('--n', type=int, default=20, help='the first 5 fall in the default split')
    text = ' '.join(parser.format_help().split())
    assert '--size SIZE side (default: 286)' in text and '--seed SEED seed (default: 0)' in text
    assert '--n N the first 5 fall in the default split (default: 20)' in text
    assert 'already says it (default 4) ' in text + ' ' and text.count('(default') == 4
    assert '--flag a switch' in text and '--maybe MAYBE optional' in text


def test_a_lock_file_another_user_made_is_locked_read_only(tmp_path, monkeypatch):
    """In a folder shared by several users, .lock belongs to whoever made it (0644 with umask 022): the others can
    still take the lock, read-only (flock needs no write access), instead of being refused the folder."""
    (tmp_path / '.lock').write_text('4242\n')

    def open_as_another_user(path, mode='r', *args, **kwargs):
        if os.path.basename(path) == '.lock' and mode != 'r':
            raise PermissionError(13, 'Permission denied', path)
        return open(path, mode, *args, **kwargs)
    monkeypatch.setattr(utils, 'open', open_as_another_user, raising=False)
    with utils.writing_alone(str(tmp_path), '--out'):
        with pytest.raises(UserError, match=r'another process \(pid 4242\) is writing there'):
            with utils.writing_alone(str(tmp_path), '--out'):
                pass
    assert (tmp_path / '.lock').read_text() == '4242\n'  # not rewritten: it could not be
    monkeypatch.undo()
    with utils.writing_alone(str(tmp_path), '--out'):
        assert (tmp_path / '.lock').read_text() == f'{os.getpid()}\n'
    assert (tmp_path / '.lock').read_text() == ''  # gone: no later message names this process


def test_an_os_error_naming_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    """An unreadable folder (chmod 000) gave a PermissionError traceback in every script; root, which the suite may
    run as, can read it anyway, so the error is raised directly."""
    def unreadable():
        raise PermissionError(13, 'Permission denied', str(tmp_path / 'gt'))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(unreadable)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f'error: {tmp_path / "gt"}: Permission denied']

    def bug():
        raise OSError('no file in this one')  # not about a file: a bug, whose traceback is kept
    with pytest.raises(OSError, match='no file in this one'):
        run_cli(bug)


def test_a_folder_in_place_of_a_manifest_is_one_line(transformed_root, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(transformed_root, root)
    os.remove(root / 'val' / 'manifest.json')
    os.mkdir(root / 'val' / 'manifest.json')
    result = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), *tiny(root, tmp_path, 'x')],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f'error: {root / "val" / "manifest.json"}: Is a directory']
    assert not os.path.exists(tmp_path / 'x')


def test_a_crash_under_torchrun_leaves_its_traceback_for_torchruns_summary(tmp_path, monkeypatch):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
    error_file = tmp_path / 'error.json'
    monkeypatch.setenv('TORCHELASTIC_ERROR_FILE', str(error_file))

    def crash():
        raise RuntimeError('CUDA out of memory on rank 3')
    with pytest.raises(RuntimeError):
        run_cli(crash)
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(error_file))  # torchrun's reader
    assert failure.message['message'] == 'RuntimeError: CUDA out of memory on rank 3'
    assert 'in crash' in failure.message['extraInfo']['py_callstack']
    assert not list(tmp_path.glob('.*.tmp'))


def test_atomic_open_fsyncs_before_it_renames(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, 'fsync', lambda fd: events.append('fsync') or real_fsync(fd))
    monkeypatch.setattr(os, 'replace', lambda a, b: events.append('replace') or real_replace(a, b))
    with utils.atomic_open(tmp_path / 'f') as f:
        f.write(b'data')
    assert events == ['fsync', 'replace'] and (tmp_path / 'f').read_bytes() == b'data'


def test_atomic_outputs_get_the_permissions_open_would_give(tmp_path):
    expected = 0o666 & ~utils._UMASK
    if expected == 0o600:
        pytest.skip('this umask makes the two indistinguishable')
    utils.write_json_atomic(tmp_path / 'f.json', {})
    assert stat.S_IMODE(os.stat(tmp_path / 'f.json').st_mode) == expected
    os.chmod(tmp_path / 'f.json', 0o640)  # a rewrite keeps a file's own permissions, as open() does
    utils.write_json_atomic(tmp_path / 'f.json', {'a': 1})
    assert stat.S_IMODE(os.stat(tmp_path / 'f.json').st_mode) == 0o640


def test_an_atomic_write_that_cannot_set_permissions_leaves_no_temp_file(tmp_path, monkeypatch):
    """Some network mounts refuse chmod: the temp file was made before the cleanup's try, and stayed."""
    def refuse(path, mode):
        raise PermissionError(1, 'Operation not permitted', path)
    monkeypatch.setattr(os, 'chmod', refuse)
    with pytest.raises(UserError, match=r'f\.json: .*Operation not permitted'):
        utils.write_json_atomic(tmp_path / 'f.json', {})
    assert os.listdir(tmp_path) == []


def test_stop_request_gives_back_the_previous_handlers():
    def mine(signum, frame):
        pass
    saved = {sig: signal.signal(sig, mine) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with utils.StopRequest():
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_sigterm_outside_training_is_one_line_and_exit_143_and_the_handler_comes_back(capsys):
    """A SIGTERM killed any script but a training loop at once: no message, and no clean-up (test.py's staged
    results note, transform_dataset.py stopping its workers) ran. A repeat (a scheduler's second notice) must not
    cut that clean-up short."""
    before = signal.getsignal(signal.SIGTERM)
    cleaned_up = []

    def work():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises as soon as the signal is delivered
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # a second raise would land here
            cleaned_up.append(True)
            raise
    with pytest.raises(SystemExit) as exit_info:
        run_cli(work)
    assert exit_info.value.code == 143 and cleaned_up
    assert capsys.readouterr().err.splitlines() == ['terminated (SIGTERM): what was finished is kept']
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_noted_sigterm_raised_later_ignores_a_repeat_too(capsys):
    """stop_signals_noted + raise_noted_stop (transform's pool, test.py's renames) raised Terminated with run_cli's
    handler back in place: a second SIGTERM then cut the clean-up short."""
    cleaned_up = []

    def work():
        with utils.stop_signals_noted() as asked:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # noted here, not raised
        try:
            utils.raise_noted_stop(asked)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            cleaned_up.append(True)
            raise
    with pytest.raises(SystemExit) as exit_info:
        run_cli(work)
    assert exit_info.value.code == 143 and cleaned_up


def test_a_stop_during_a_checkpoint_write_is_a_stop_not_a_disk_error(tmp_path, monkeypatch):
    """torch.save turns a KeyboardInterrupt (Ctrl-C, or run_cli's SIGTERM) mid-write into RuntimeError 'unexpected
    pos', which was reported as a failed write: 'could not save checkpoint', exit 2."""
    def interrupted_save(obj, f, *args, **kwargs):
        try:
            raise utils.Terminated
        except KeyboardInterrupt:
            raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 46 vs 0')
    monkeypatch.setattr(torch, 'save', interrupted_save)
    with pytest.raises(utils.Terminated):
        utils.save_checkpoint(tmp_path / 'latest.pt', {})
    assert os.listdir(tmp_path) == []


def test_results_being_published_are_not_cut_in_half_by_a_signal(tmp_path, monkeypatch):
    """A SIGTERM between two renames left half of the earlier run's files and half of the new one's."""
    import results
    folder, staging = tmp_path / 'results', tmp_path / 'results' / '.unfinished'
    staging.mkdir(parents=True)
    for name in ('Generated-a.png', 'Generated-b.png', 'metrics.json'):
        (folder / name).write_text('old')
        (staging / name).write_text('new')
    real_replace, renames = os.replace, []

    def replace_then_sigterm(src, dst):
        real_replace(src, dst)
        renames.append(dst)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs here
    monkeypatch.setattr(os, 'replace', replace_then_sigterm)
    previous = signal.signal(signal.SIGTERM, utils.raise_terminated)
    try:
        with pytest.raises(utils.Terminated):  # raised once the results are whole
            results.publish_results(str(folder), str(staging), [])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(renames) == 3 and not staging.exists()
    assert {p.name: p.read_text() for p in folder.iterdir()} == dict.fromkeys(
        ('Generated-a.png', 'Generated-b.png', 'metrics.json'), 'new')


def test_a_file_system_without_locks_is_written_unguarded(tmp_path, monkeypatch):
    """Some network mounts refuse flock (ENOLCK): the run goes on, as it would on Windows. Other lock errors stop it."""
    def flock_failing_with(code, reason):
        def flock(f, operation):
            raise OSError(code, reason)
        return flock
    monkeypatch.setattr(utils.fcntl, 'flock', flock_failing_with(errno.ENOLCK, 'No locks available'))
    with utils.writing_alone(str(tmp_path / 'out'), '--out'):
        (tmp_path / 'out' / 'written').write_text('x')
    monkeypatch.setattr(utils.fcntl, 'flock', flock_failing_with(errno.EIO, 'Input/output error'))
    with pytest.raises(UserError, match=r'\.lock: cannot lock it \(Input/output error\)'):
        with utils.writing_alone(str(tmp_path / 'out'), '--out'):
            pass


def test_only_our_own_hidden_temp_files_are_cleared(tmp_path):
    fd, _ = tempfile.mkstemp(prefix='.latest.pt.', suffix='.tmp', dir=tmp_path)  # as atomic_open makes them
    os.close(fd)
    for name in ('notes.tmp', '.notes.tmp', '.swap.k2x8.tmp', 'latest.pt'):  # another program's, or not temp files
        (tmp_path / name).write_text('x')
    utils.remove_stale_temp_files(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['.notes.tmp', '.swap.k2x8.tmp', 'latest.pt', 'notes.tmp']


def test_a_stop_at_the_temp_files_close_leaves_no_temp_file(tmp_path, monkeypatch):
    """A SIGTERM raised between mkstemp and the clean-up's try left the temp file for good."""
    real_close = os.close

    def interrupted_once(fd):
        monkeypatch.setattr(os, 'close', real_close)
        real_close(fd)
        raise KeyboardInterrupt
    monkeypatch.setattr(os, 'close', interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        with utils.atomic_open(tmp_path / 'latest.pt') as f:
            f.write(b'x')
    assert os.listdir(tmp_path) == []


def test_a_binary_file_read_as_json_is_one_line(tmp_path):
    (tmp_path / 'config.json').write_bytes(b'\xff\xfe\x00binary')
    with pytest.raises(UserError, match=r'config\.json: run config is not valid JSON'):
        utils.read_json(tmp_path / 'config.json', 'run config')


def test_device_and_amp_choices():
    cpu = torch.device('cpu')
    assert [utils.amp_enabled(choice, cpu) for choice in ('auto', 'on', 'off')] == [False, True, False]
    assert [utils.amp_enabled(choice, torch.device('cuda')) for choice in ('auto', 'on', 'off')] == [True, True, False]
    if not torch.cuda.is_available():
        assert utils.pick_device('auto') == cpu
        with pytest.raises(UserError, match='--device cuda: no CUDA device is available'):
            utils.pick_device('cuda')


def test_images_out_of_range_are_clamped_not_wrapped_around():
    """1.01 is 258 before the uint8 cast, which would wrap it to 2: a black speck in a white roof."""
    x = torch.tensor([1.01, 1.0, 0.0, -1.0, -1.5]).view(1, 1, 5)
    assert utils.to_uint8_hwc(x).tolist() == [[255, 255, 128, 0, 0]]


def test_first_line_keeps_a_one_line_error_short():
    assert utils.first_line(ValueError('x' * 300 + '\nmore')) == 'x' * 200
    assert utils.first_line(ValueError()) == 'ValueError'


def test_the_commit_says_when_tracked_files_differ_from_it(monkeypatch):
    answers = {'rev-parse': 'abc123\n', 'status': ' M train.py\n'}
    monkeypatch.setattr(utils.subprocess, 'run', lambda args, **kwargs: subprocess.CompletedProcess(
        args, 0, stdout=answers[args[1]], stderr=''))
    assert utils.git_commit() == 'abc123+modified'
    answers['status'] = ''
    assert utils.git_commit() == 'abc123'
