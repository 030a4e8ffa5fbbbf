"""demo.py without its 5 minutes of training: the commands it runs are ones its scripts accept, it resumes what an
earlier demo did, its summary reads each mode's scores, and it stops cleanly (real processes) when a script fails or
is stopped. The whole demo (`python demo.py`, about 5 min on 2 CPU cores) is not run here.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import demo
import train
import transform_dataset
from conftest import REPO, script_module, tiny, wait_for
from synthetic_inria import make_synthetic_inria
from train_options import build_parser

PARSERS = {'transform_dataset.py': transform_dataset.parse_args, 'train.py': build_parser().parse_args,
           'test.py': script_module('test.py').build_parser().parse_args}


def demo_commands(out, device, monkeypatch):
    """demo.main's commands as [(script, argv)], each parsed by its script's own parser (an option it does not
    know, or a value it refuses, fails the test), with nothing run: each test.py writes the scores the summary
    reads, a PSNR that tells the modes apart (1.0 for the first test.py, 2.0 for the second, ...)."""
    commands = []

    def parse_only(script, *args):
        argv = list(map(str, args))
        PARSERS[script](argv)
        commands.append((script, argv))
        if script == 'test.py':
            results_dir = argv[argv.index('--results_dir') + 1]
            os.makedirs(results_dir, exist_ok=True)
            psnr = float(sum(name == 'test.py' for name, _ in commands))
            with open(os.path.join(results_dir, 'metrics.json'), 'w') as f:
                json.dump({'mean': {'PSNR': psnr, 'SSIM': 0.5}}, f)
    monkeypatch.setattr(demo, 'run', parse_only)
    monkeypatch.setattr(demo, 'check_training_finished', lambda run_dir: None)
    demo.main(['--out', str(out), '--device', device])
    return commands


def option(argv, name):
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize('device, crop, netG', [('cpu', '128', 'unet_128'), ('cuda', '256', 'unet_256')])
def test_every_command_the_demo_runs_is_one_its_script_accepts(tmp_path, monkeypatch, capsys, device, crop, netG):
    """The demo is a recipe of the scripts' options, and the suite never runs it whole: an option renamed in a
    script would break it minutes into a user's first run. Both setups are checked (the GPU's one by its options
    only: nothing runs)."""
    commands = demo_commands(tmp_path / 'd', device, monkeypatch)
    assert [script for script, _ in commands] == ['transform_dataset.py'] * 2 + ['train.py'] + ['test.py'] * 4
    make_tiles, transform, training = (argv for _, argv in commands[:3])
    tiles, arrays, runs = (str(tmp_path / 'd' / name) for name in ('synthetic_inria', 'arrays', 'runs'))
    assert option(make_tiles, '--make_synthetic') == tiles
    assert (option(transform, '--dataroot'), option(transform, '--out')) == (tiles, arrays)
    assert (option(training, '--dataroot'), option(training, '--runs_dir'), option(training, '--name')) == (
        arrays, runs, 'demo')
    assert option(transform, '--crop_size') == option(training, '--crop_size') == crop
    assert option(training, '--netG') == netG and '--resume' not in training
    assert [option(argv, '--mode') for _, argv in commands[3:]] == ['full', 'tiles', 'sliding', 'sliding']
    assert {option(argv, '--run') for _, argv in commands[3:]} == {os.path.join(runs, 'demo')}
    assert {option(argv, '--device') for _, argv in commands[2:]} == {device}
    geotiffs = commands[-1][1]
    assert geotiffs[geotiffs.index('--masks') + 1:][:2] == [os.path.join(tiles, 'gt', name)
                                                           for name in ('austin1.tif', 'vienna1.tif')]


def test_a_second_demo_resumes_the_training_an_earlier_one_began(tmp_path, monkeypatch, capsys):
    os.makedirs(tmp_path / 'd' / 'runs' / 'demo')
    (tmp_path / 'd' / 'runs' / 'demo' / 'latest.pt').write_bytes(b'')
    training = [argv for script, argv in demo_commands(tmp_path / 'd', 'cpu', monkeypatch) if script == 'train.py']
    assert training[0][-1] == '--resume'


def test_the_demos_summary_has_a_row_per_test_py_run_with_its_own_scores(tmp_path, monkeypatch, capsys):
    demo_commands(tmp_path / 'd', 'cpu', monkeypatch)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| ') and '---' not in line]
    results = tmp_path / 'd' / 'results'
    assert rows[1:] == [f'| {mode} | {psnr:.3f} | 0.500 | — | {results / folder / "index.html"} |'
                        for psnr, (mode, folder) in enumerate((('full', 'full'), ('tiles', 'tiles'),
                                                               ('sliding', 'sliding'),
                                                               ('sliding, 1000² GeoTIFF masks', 'geotiff')), 1)]


def test_the_demo_stops_when_training_stopped_early_without_an_error(transformed_root, tmp_path):
    """A SIGTERM sent to train.py alone (not the demo) is a clean stop, exit 0; so is --stop_epoch, used here."""
    args = tiny(transformed_root, tmp_path, 'demo', '--n_epochs', '1', '--n_epochs_decay', '1')
    train.main([*args, '--stop_epoch', '1'])
    with pytest.raises(SystemExit, match=r'^demo stopped: train.py stopped after epoch 1 of 2 \(a SIGTERM\?\)'):
        demo.check_training_finished(str(tmp_path / 'demo'))
    train.main([*args, '--resume'])
    demo.check_training_finished(str(tmp_path / 'demo'))


def test_a_demo_stopped_while_making_tiles_completes_them(tmp_path, capsys):
    tiles = tmp_path / 'synthetic_inria'
    make_synthetic_inria(str(tiles), n_tiles=20, size=1000, progress=False)  # the demo's settings
    for path in sorted(tiles.glob('*/*.tif'))[5:]:  # as a kill leaves it
        path.unlink()
    demo.make_synthetic_tiles(str(tiles))
    assert len(list(tiles.glob('images/*.tif'))) == len(list(tiles.glob('gt/*.tif'))) == 20
    old = tmp_path / 'old_demo'  # made by an earlier demo, before the settings record existed: used as it is
    (old / 'gt').mkdir(parents=True)
    (old / 'gt' / 'austin1.tif').write_bytes(b'')
    capsys.readouterr()
    demo.make_synthetic_tiles(str(old))
    assert capsys.readouterr().out == ''


def demo_step(tmp_path, child_code):
    """demo.run on a stand-in script, in a process group of its own (signals sent to it stay out of pytest's)."""
    (tmp_path / 'child.py').write_text(textwrap.dedent(child_code))
    wrapper = f'import demo; demo.HERE = {str(tmp_path)!r}; demo.run("child.py"); print("went on")'
    return subprocess.Popen([sys.executable, '-c', wrapper], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


DEMO_INTERRUPTED = 'demo interrupted during child.py: run the same demo command again to go on'


@pytest.mark.parametrize('signum, returncode', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_in_the_demo_lets_the_running_script_stop_cleanly(tmp_path, signum, returncode):
    """Ctrl-C goes to the terminal's whole process group: demo.py and the script it runs; so does a scheduler's
    SIGTERM. The script stops cleanly (train.py finishes saving); demo.py must wait for it, then say how to go on,
    without a traceback. (On a SIGTERM it killed the script mid-save.)"""
    proc = demo_step(tmp_path, f'''
        import os, signal, sys, time
        def stop_once(signum, frame):  # as the scripts' run_cli: a clean stop, and a repeat is the same one
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, stop_once)
        try:
            os.killpg(os.getpgrp(), {int(signum)})  # the terminal's Ctrl-C, or the scheduler's notice
            time.sleep(10)
        except KeyboardInterrupt:
            time.sleep(1)  # a clean stop takes a while: subprocess would have killed it after 0.25 s
            open({str(tmp_path / 'saved')!r}, 'w').close()
            sys.exit({returncode})
    ''')
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == returncode and err.splitlines() == [DEMO_INTERRUPTED] and 'went on' not in out, err
    assert (tmp_path / 'saved').exists()


def test_sigint_to_the_demo_alone_stops_it_after_the_running_script(tmp_path):
    proc = demo_step(tmp_path, f'''
        import time
        open({str(tmp_path / 'started')!r}, 'w').close()
        time.sleep(2)
        open({str(tmp_path / 'finished')!r}, 'w').close()
    ''')
    assert wait_for(lambda: (tmp_path / 'started').exists(), timeout=30)
    proc.send_signal(signal.SIGINT)  # kill -INT <demo>, as a job supervisor or an IDE's stop button does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.splitlines() == [DEMO_INTERRUPTED] and 'went on' not in out, err
    assert (tmp_path / 'finished').exists()


def test_a_sigterm_to_the_demo_alone_is_passed_on_to_the_running_script(tmp_path):
    """A container's stop signals the demo (its PID 1) alone: the demo waited for the whole training to end, and
    the runtime killed both with -9 before that."""
    proc = demo_step(tmp_path, f'''
        import signal, sys, time
        def stop_once(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, stop_once)
        open({str(tmp_path / 'started')!r}, 'w').close()
        try:
            time.sleep(60)  # a long training
        except KeyboardInterrupt:
            open({str(tmp_path / 'saved')!r}, 'w').close()
            sys.exit(143)
    ''')
    assert wait_for(lambda: (tmp_path / 'started').exists(), timeout=30)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and err.splitlines() == [DEMO_INTERRUPTED] and 'went on' not in out, err
    assert (tmp_path / 'saved').exists()


def test_a_script_that_fails_stops_the_demo_with_one_line_after_its_own_message(tmp_path):
    proc = demo_step(tmp_path, '''
        import sys
        sys.exit('error: bad.tif: not a TIFF')
    ''')
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and 'went on' not in out
    assert err.splitlines() == ['error: bad.tif: not a TIFF', 'demo stopped: child.py failed (see its message above)']


def test_a_script_killed_by_the_kernel_stops_the_demo_saying_so(tmp_path):
    """SIGKILL (the kernel's, out of memory) leaves the script no message: "see its message above" pointed at none."""
    proc = demo_step(tmp_path, '''
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    ''')
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and 'went on' not in out
    assert err.splitlines() == ['demo stopped: child.py was killed by SIGKILL (as the kernel does when memory '
                                'runs out)']
