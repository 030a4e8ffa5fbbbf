"""Shared helpers: clear errors, the scripts' option parser, atomic writes, folder locks, devices, checkpoints and
RNG states, the stop signal. (Images and masks in and out are in image_io.py, metrics in metrics.py.)

Imports nothing of ours; every module but networks.py imports from here. torch is imported inside the
functions that need it, so transform_dataset.py (and its worker processes) start without it.
"""
import argparse
import contextlib
import errno
import io
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no folder locks (see writing_alone)
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)


class UserError(Exception):
    """A problem with the user's input or options: reported as one line, no traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training's own stop handling: unwinds like Ctrl-C, so the same clean-up runs."""


def raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a repeat (SLURM, torchrun) must not cut the clean-up short
    raise Terminated


@contextlib.contextmanager
def stop_signals_noted():
    """Ctrl-C and SIGTERM are noted in the yielded list instead of raised, for steps that must not be cut in the
    middle (a pool of workers starting or stopping, a child script saving, results being renamed into place); the
    previous handlers come back after. raise_noted_stop then acts on them."""
    asked = []
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = {sig: signal.signal(sig, lambda signum, _: asked.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    try:
        yield asked
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def raise_noted_stop(asked):
    """Raise the stop that stop_signals_noted noted, as the handlers would have raised it."""
    if signal.SIGTERM in asked:
        if signal.getsignal(signal.SIGTERM) is raise_terminated:  # under run_cli: a repeat is ignored from now on
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated
    if asked:
        raise KeyboardInterrupt


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows each option's default unless its help already tells it."""

    def _get_help_string(self, action):
        text = action.help or ''
        # `is False`, not `== False`: a default of 0 is shown
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        # '(default' or 'default:' states the value; the word alone may be about something else ("the default split")
        if not action.option_strings or unset or '(default' in text or 'default:' in text:
            return text
        return text + ' (default: %(default)s)'


class ArgumentParser(argparse.ArgumentParser):
    """Every script's parser. No abbreviations: `--data` silently meaning `--dataroot` today could mean another
    option tomorrow, and train.py --resume tells given options from saved ones by their full names. A usage error
    is one line, like every other error here, instead of the whole usage block."""

    def __init__(self, description):
        super().__init__(description=description, formatter_class=HelpFormatter, allow_abbrev=False)

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')

    def add_device_option(self):
        self.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                          help='auto = cuda when available')


def check_counts(opt, keys):
    """Options that count something (epochs, tiles, batch sizes) must be at least 1."""
    for key in keys:
        if getattr(opt, key) < 1:
            raise UserError(f'--{key} must be >= 1, got {getattr(opt, key)}')


def check_positive(opt, keys):
    """Options such as --lr must be finite and above 0 (nan is refused too)."""
    for key in keys:
        if not 0 < getattr(opt, key) < float('inf'):
            raise UserError(f'--{key} must be a positive number, got {getattr(opt, key)}')


def check_fractions(opt, keys):
    """Options that are a share of pixels or tiles must lie in [0, 1] (nan is refused too)."""
    for key in keys:
        if not 0.0 <= getattr(opt, key) <= 1.0:
            raise UserError(f'--{key} {getattr(opt, key)}: must be a fraction between 0 and 1')


def run_cli(main, stopped='what was finished is kept'):
    """Run a script's main(); turn UserError into one clear line on stderr and exit status 2, and Ctrl-C or
    SIGTERM into one line, saying what of the work is `stopped`, and 130 or 143 (every output is written atomically,
    so nothing is left half-written)."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
    try:
        return main()
    except UserError as err:
        exit_with_error(str(err))
    except OSError as err:
        if err.filename is None or err.strerror is None:
            raise
        # a folder or file the checks could not foresee (unreadable, a folder where a file should be, ...): the OS
        # names it, which is all the user needs; a traceback would only bury that line
        exit_with_error(f'{err.filename}: {err.strerror}')
    except Terminated:
        print(f'terminated (SIGTERM): {stopped}', file=sys.stderr)
        sys.exit(143)  # 128 + 15, what a shell reports for a process SIGTERM killed
    except KeyboardInterrupt:
        print(f'interrupted (Ctrl-C): {stopped}', file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        tell_torchrun({'message': f'{type(err).__name__}: {err}',
                       'extraInfo': {'py_callstack': traceback.format_exc(), 'timestamp': str(int(time.time()))}})
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def exit_with_error(message):
    print(f'error: {message}', file=sys.stderr)
    tell_torchrun(f'error: {message}')
    sys.exit(2)


def tell_torchrun(message):
    """Under torchrun, a failed process's own line scrolls away under ~60 lines of launcher output, whose summary
    then says only "error_file: <N/A>". torchrun shows the file it names in TORCHELASTIC_ERROR_FILE there instead:
    a string as it is, a traceback (the layout of torch's @record) indented."""
    path = os.environ.get('TORCHELASTIC_ERROR_FILE')
    if not path:
        return
    data = {'message': message, 'timestamp': str(int(time.time()))}
    with contextlib.suppress(OSError), atomic_open(path, 'w') as f:  # best effort: the error itself comes first
        json.dump(data, f)


def git_commit():
    """This checkout's commit ('+modified' when tracked files differ from it), or None outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        changes = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hung on a network file system
        return None
    return head.stdout.strip() + ('+modified' if changes.stdout.strip() else '')


def counted(n, noun, plural=None):
    """'1 tile', '2 tiles': a count in a message that may be 1."""
    return f'{n} {noun}' if n == 1 else f'{n} {plural or noun + "s"}'


def first_line(err):
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def load_error(err):
    """One line for a failed torch.load(weights_only=True). torch's refusal of a file whose objects could run code
    advises loading it with weights_only=False, the unsafe way round: that advice is not passed on."""
    text = str(err)
    if 'Weights only load failed' in text:
        if 'GLOBAL' in text:  # torch names the class or function the file would import ('unsupported GLOBAL ...')
            return 'it holds Python objects besides tensors; refused, since loading them could run code'
        detail = text.partition('WeightsUnpickler error:')[2].strip().split('\n')[0]
        return 'not a PyTorch file' + (f': {detail}' if detail else '')  # JSON, an image, a bare pickle, ...
    if 'PytorchStreamReader' in text:  # torch goes on for lines after its first sentence
        return f'truncated or corrupt: {text.split(". ")[0]}'
    if isinstance(err, EOFError):
        return 'empty or truncated'
    if isinstance(err, (KeyError, IndexError, UnicodeDecodeError)):  # torch's legacy unpickler on text, tiny files
        return 'not a PyTorch file'
    return first_line(err)


# ---------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def atomic_open(path, mode='wb'):
    """Open a temp file beside `path`; on success fsync and rename it over `path`.

    A crash or error at any point leaves either the old file or the new one, never a partial one.
    The temp name starts with '.' and ends with '.tmp' so globs for finished outputs never see it.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:  # the close inside: a Ctrl-C or SIGTERM raised at it left the temp file behind
        os.close(fd)  # reopen by name: writers such as tifffile read f.name, which an fd-opened file lacks
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # after the write: a read-only file is replaced, as before, and stays so
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _mode_for(path):
    """The permissions open() would give: a file's own when it is rewritten, else the umask's (mkstemp makes 0600)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def make_writable_dir(path, option):
    """Create the folder and prove it is writable, so a bad output path fails before any work is done."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f'{path}: is a file, not a folder; choose another {option}')
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix='.write-test.', suffix='.tmp', dir=path)
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # already cleared by a process writing there too
            os.remove(probe)
    except OSError as err:
        raise UserError(f'{path}: cannot write there ({err.strerror or err}); choose another {option}') from None


@contextlib.contextmanager
def writing_alone(folder, option):
    """Create `folder` and hold folder/.lock while this process writes there. Two processes writing one folder (a
    job started twice, a requeued job while the first still runs) would interleave checkpoints or outputs and delete
    each other's temp files; the second stops with one line instead. The OS drops the lock with the process, so a
    kill leaves nothing stale."""
    make_writable_dir(folder, option)
    if fcntl is None:  # Windows: no lock
        yield
        return
    path = os.path.join(folder, '.lock')
    try:
        f, writable = open_lock_file(path)
    except OSError as err:
        raise UserError(f'{path}: cannot open the lock file ({err.strerror or err})') from None
    with f:
        recorded = lock_exclusively(f, folder, option) and writable
        if recorded:
            f.truncate(0)
            f.write(f'{os.getpid()}\n')  # for a second process's message: which one to wait for
            f.flush()
        try:
            yield
        finally:
            if recorded:  # a read-only holder after this one (another user) must not be reported as this pid
                f.truncate(0)


def open_lock_file(path):
    """(file, writable). Read-only where another user made it in a shared folder: flock needs no write access
    (only the pid for the message is not recorded)."""
    try:
        return open(path, 'a+'), True
    except PermissionError:
        return open(path), False


def lock_exclusively(f, folder, option):
    """flock the open lock file; False where the file system has no locks (some network mounts): write unguarded."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        raise UserError(f'{folder}: another process{f" (pid {holder})" if holder.isdigit() else ""} is writing '
                        f'there; wait for it to end, or choose another {option}') from None
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise UserError(f'{f.name}: cannot lock it ({err.strerror or err})') from None


@contextlib.contextmanager
def one_line_write_errors(path):
    """A failed write (full disk, no permission, a file in the way) as one line naming the file."""
    try:
        yield
    except OSError as err:
        raise UserError(f'{path}: could not write ({err.strerror or first_line(err)}; {free_space(path)})') from None


def save_npy_atomic(path, array):
    buffer = io.BytesIO()  # np.save into a real file uses tofile(), which ignores a failed flush: a full disk
    np.save(buffer, array)  # left a truncated .npy with no error (seen with numpy 2.4 under a file-size limit)
    with one_line_write_errors(path), atomic_open(path) as f:
        f.write(buffer.getbuffer())


def write_json_atomic(path, obj):
    with one_line_write_errors(path), atomic_open(path, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write('\n')


def write_text_atomic(path, text):
    with one_line_write_errors(path), atomic_open(path, 'w') as f:
        f.write(text)


def remove_stale_temp_files(directory, of_file=None):
    """Delete temp files left by a process killed mid-write (see atomic_open): named as mkstemp names them there,
    .<file>.<8 characters>.tmp, so another program's hidden .tmp files in a shared --out stay. `of_file`: only those
    of this file name (a folder this process does not hold alone, where others may be writing)."""
    file_pattern = re.escape(of_file) if of_file else '.+'
    for name in os.listdir(directory):
        if re.fullmatch(rf'\.{file_pattern}\.[a-z0-9_]{{8}}\.tmp', name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


def read_json(path, what='file'):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f'{path}: {what} not found') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f'{path}: {what} is not valid JSON ({err})') from None


# ---------------------------------------------------------------- devices

def pick_device(choice):
    """'auto' | 'cpu' | 'cuda' -> torch.device; CUDA asked for but absent is a clear error."""
    import torch
    if choice == 'cuda' or (choice == 'auto' and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError('--device cuda: no CUDA device is available')
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def amp_enabled(choice, device):
    """--amp auto | on | off -> whether to run in bf16 autocast: auto means on for CUDA only."""
    return choice == 'on' or (choice == 'auto' and device.type == 'cuda')


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_FORMAT = 'pix2pix-inria-checkpoint-v1'


def saved_checkpoints(run_dir):
    """The checkpoint files train.py saved in a run folder (latest.pt, best.pt, epoch_<N>.pt), sorted."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    return sorted(name for name in names if re.fullmatch(r'latest\.pt|best\.pt|epoch_\d+\.pt', name))


def save_checkpoint(path, state):
    """Atomic torch.save: a full disk or a kill mid-write leaves the previous file as it was."""
    import torch
    try:
        with atomic_open(path) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError "unexpected pos"
        if isinstance(err.__context__, KeyboardInterrupt):  # so does a Ctrl-C or SIGTERM during the write
            raise err.__context__ from None
        reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
        raise UserError(f'{path}: could not save checkpoint ({reason}; {free_space(path)}); '
                        f'the previous version of this file is intact') from None


def state_dict_mismatch(expected, weights):
    """Why `weights` cannot load into a module whose state_dict is `expected` (missing, unexpected or reshaped
    tensors, with an example), or None. load_state_dict's own error is a screenful of parameter names."""
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    reshaped = [key for key in expected.keys() & weights.keys()
                if tuple(getattr(weights[key], 'shape', ())) != tuple(expected[key].shape)]
    if not (missing or unexpected or reshaped):
        return None
    example = sorted(missing or unexpected or reshaped)[0]
    return (f'{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} reshaped tensors, '
            f'e.g. {example}')


def free_space(path):
    """'N MB free' on the disk holding path: the likely cause when a write fails."""
    try:
        return f'{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2 ** 20:.0f} MB free there'
    except OSError:
        return 'free space unknown'


def load_checkpoint(path):
    """Load one of our checkpoints; weights_only refuses pickles that would run code."""
    import torch
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise UserError(f'{path}: checkpoint not found') from None
    except Exception as err:
        raise UserError(f'{path}: not a loadable checkpoint ({load_error(err)})') from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise UserError(f'{path}: not a checkpoint of this project (no {CHECKPOINT_FORMAT!r} format tag)')
    return state


def rng_states(device):
    """Python, numpy, torch CPU and (training on a GPU) that GPU's RNG states, as plain types that
    torch.load(weights_only=True) takes. Only the training GPU's: the states of all visible GPUs could not be put
    back on a machine that shows fewer."""
    import torch
    np_state = np.random.get_state()
    return {'python': random.getstate(), 'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]],
            'torch': torch.get_rng_state(),
            'cuda': [torch.cuda.get_rng_state(device)] if device.type == 'cuda' else []}


def set_rng_states(states, device):
    import torch
    random.setstate(tuple(states['python'][:1]) + (tuple(states['python'][1]),) + tuple(states['python'][2:]))
    name, keys, *rest = states['numpy']
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states['torch'])
    saved = states['cuda']
    if saved and device.type == 'cuda':
        # Older checkpoints held one state per visible GPU, so take this GPU's where there is one.
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.set_rng_state(saved[index] if index < len(saved) else saved[0], device)


class StopRequest:
    """SIGTERM (schedulers' preemption notice) or Ctrl-C: finish the step, save latest, exit.

    A context manager: the previous handlers come back on exit (train.main() may run inside another program)."""

    def __enter__(self):
        self.signal = None
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if self.signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user insists
                raise KeyboardInterrupt
            return  # a repeated SIGTERM (SLURM signals the job, torchrun forwards it again): already stopping
        self.signal = signum
        print(f'\n{signal.Signals(signum).name}: saving latest.pt after this step…', file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tensors to images

def to_uint8_hwc(x):
    """A C×H×W tensor in [-1, 1] -> H×W×C (or H×W for one channel) uint8 numpy array, for saving."""
    array = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[2] == 1 else array
