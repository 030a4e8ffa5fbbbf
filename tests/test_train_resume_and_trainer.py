"""train.py on tiny CPU runs, continued from tests/test_train.py (whose helpers this file shares): resuming,
stopping and extending a run (what a resume refuses or says it changes, a stopped run told from a finished one,
run_log.jsonl and the hparams table, the linear schedule redrawn, a repeated SIGTERM); then pix2pix_model.Trainer
built directly: --init_from, batch norm's statistics in the NaN check, the models' memory layouts and
torch.compile, one D call on fake and real, validation's means and layout, and the gradients each optimiser steps
on against the official losses written out by hand; --save_epoch_freq and image_metrics' conventions.
"""
import copy
import functools
import json
import math
import os
import signal

import pytest
import torch
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import pix2pix_model
import train
from conftest import cli_error, run_files, tiny
from dataset import EpochPlan, batch_on_device, center_crop_batch, load_split
from metrics import image_metrics
from test_train import events, wait_for_the_next_second
from train_options import build_parser, parse_options


# ---------------------------------------------------------------- resuming, stopping and extending a run


def test_resume_refuses_what_the_checkpoint_fixes_and_extends_a_linear_run(transformed_root, tmp_path, capsys):
    train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '1', '--n_epochs_decay', '1', '--stop_epoch', '1'))
    before = run_files(tmp_path / 'run')
    for option, value in (('--lr', '1e-3'), ('--beta1', '0.9'), ('--lr_policy', 'cosine'), ('--lr_decay_iters', '10')):
        line = cli_error(tiny(transformed_root, tmp_path, 'run', '--resume', option, value), capsys)
        assert f'trained with {option} ' in line and 'optimiser and lr schedule continue from the checkpoint' in line
    line = cli_error(tiny(transformed_root, tmp_path, 'run', '--resume', '--best_metric', 'SSIM'), capsys)
    assert 'trained with --best_metric PSNR, not SSIM; best.pt and the plateau schedule were chosen by it' in line
    assert run_files(tmp_path / 'run') == before
    # the same lr is no change; at an epoch boundary a linear run may grow and change its batch size
    wait_for_the_next_second()
    assert train.main(tiny(transformed_root, tmp_path, 'run', '--resume', '--lr', '2e-4', '--n_epochs', '2',
                           '--batch_size', '2')) == 0
    assert torch.load(tmp_path / 'run' / 'latest.pt', weights_only=True)['iteration'] == 5 + 2 * 2
    assert [e.value for e in events(tmp_path / 'run').Scalars('lr')] == pytest.approx([2e-4, 2e-4, 1e-4])
    # cosine keeps its period in the checkpoint: another total would be ignored
    train.main(tiny(transformed_root, tmp_path, 'cos', '--lr_policy', 'cosine', '--n_epochs', '1',
                    '--n_epochs_decay', '1', '--stop_epoch', '1'))
    line = cli_error(tiny(transformed_root, tmp_path, 'cos', '--resume', '--n_epochs_decay', '3'), capsys)
    assert '--lr_policy cosine over --n_epochs + --n_epochs_decay = 2 epochs, not 4' in line


def test_messages_tell_a_stopped_run_from_a_finished_one(transformed_root, tmp_path, capsys):
    args = tiny(transformed_root, tmp_path, 'run', '--n_epochs', '1', '--n_epochs_decay', '1')
    train.main([*args, '--stop_epoch', '1'])
    assert 'stopped after epoch 1 of 2 (--stop_epoch): continue with --resume' in capsys.readouterr().out
    assert not os.path.exists(tmp_path / 'run' / 'hparams')  # the final metrics are logged once, at the end
    train.main([*args, '--resume'])
    assert f'done: {tmp_path / "run"}' in capsys.readouterr().out
    assert os.path.isdir(tmp_path / 'run' / 'hparams')
    before = run_files(tmp_path / 'run')
    assert train.main([*args, '--resume']) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (f'nothing to train: {tmp_path / "run"} has finished its 2 '
                                                        'epochs; to extend it, resume with more --n_epochs or '
                                                        '--n_epochs_decay')
    assert run_files(tmp_path / 'run') == before
    assert train.main([*args, '--resume', '--stop_epoch', '1']) == 0  # behind the 2 epochs trained
    assert capsys.readouterr().out.splitlines()[-1] == (f'nothing to train: {tmp_path / "run"} has finished its 2 '
                                                        'epochs; to extend it, resume with more --n_epochs or '
                                                        '--n_epochs_decay')
    # a schedule shorter than the epochs trained is a mistake, not a finished run (it read "finished its 2 epochs")
    line = cli_error([*args, '--resume', '--n_epochs_decay', '0'], capsys)
    assert line == (f'error: --resume: --n_epochs + --n_epochs_decay make 1 epoch, but {tmp_path / "run"} has '
                    'trained 2; a run cannot be shortened: give at least 2 in all')
    assert run_files(tmp_path / 'run') == before


def test_a_run_stopped_inside_an_epoch_past_a_shortened_schedule_is_not_finished(transformed_root, tmp_path,
                                                                                 monkeypatch, capsys):
    """latest.pt holds 2 of epoch 2's 5 batches: with --n_epochs 1 it read "has finished its 1 epoch", exit 0."""
    step = pix2pix_model.Trainer.train_step

    def sigterm_in_epoch_2(self, mask, real):
        if self.epoch == 1 and self.next_batch == 1:  # during epoch 2's second step
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, mask, real)
    monkeypatch.setattr(pix2pix_model.Trainer, 'train_step', sigterm_in_epoch_2)
    args = tiny(transformed_root, tmp_path, 'run', '--n_epochs_decay', '0')
    assert train.main([*args, '--n_epochs', '2']) == 0
    assert torch.load(tmp_path / 'run' / 'latest.pt', weights_only=True)['next_batch'] == 2
    before = run_files(tmp_path / 'run')
    line = cli_error([*args, '--n_epochs', '1', '--resume'], capsys)
    assert line == (f'error: --resume: --n_epochs + --n_epochs_decay make 1 epoch, but {tmp_path / "run"} has '
                    'trained 1 and 2 batches of epoch 2; a run cannot be shortened: give at least 2 in all')
    assert run_files(tmp_path / 'run') == before


def test_a_kill_after_the_last_latest_pt_leaves_the_run_finished(transformed_root, tmp_path, monkeypatch):
    """The hparams were written after the last latest.pt: killed in between, a resume had nothing to train and
    never wrote them. Now everything the run's end writes comes before it."""
    class Killed(Exception):
        pass
    save = train.save_checkpoint

    def then_killed(path, state):
        save(path, state)
        if os.path.basename(path) == 'latest.pt' and state['epoch'] == 2:
            raise Killed
    monkeypatch.setattr(train, 'save_checkpoint', then_killed)
    args = tiny(transformed_root, tmp_path, 'run', '--n_epochs', '2', '--n_epochs_decay', '0', '--log_freq', '3')
    with pytest.raises(Killed):
        train.main(args)
    hparams = events(tmp_path / 'run' / 'hparams')
    assert hparams.Scalars('hparam/best_epoch')[0].value == 2
    assert [e.step for e in events(tmp_path / 'run').Scalars('loss/G_L1')] == [3, 6, 9, 10]  # the last: 1 step


@pytest.mark.parametrize('name', ['run', 'run[1]'])  # a glob of 'run[1]/hparams/*' finds nothing: it was not escaped
def test_an_extended_run_shows_its_new_options_in_the_hparams_table(transformed_root, tmp_path, name):
    args = tiny(transformed_root, tmp_path, name, '--n_epochs_decay', '0')
    train.main([*args, '--n_epochs', '1'])
    wait_for_the_next_second()  # TensorBoard event files are named by the second
    train.main([*args, '--n_epochs', '2', '--resume'])
    hparams = events(tmp_path / name / 'hparams')  # read as TensorBoard does: the first hparams in the folder
    start = HParamsPluginData.FromString(hparams.PluginTagToContent('hparams')['_hparams_/session_start_info'])
    assert start.session_start_info.hparams['n_epochs'].number_value == 2
    assert len(hparams.Scalars('hparam/best_epoch')) == 1  # the second finish's metrics only


def test_every_start_is_in_the_run_log_and_a_resume_says_what_it_changes(transformed_root, tmp_path, capsys):
    """config.json holds the current options only: a --resume that changed --lambda_L1 or --rotate (allowed: they
    reshape neither the networks nor the optimiser) rewrote it silently, and nothing recorded the first value."""
    args = tiny(transformed_root, tmp_path, 'run', '--n_epochs', '2', '--n_epochs_decay', '0')
    train.main([*args, '--stop_epoch', '1'])
    capsys.readouterr()
    train.main([*args, '--resume', '--lambda_L1', '10', '--rotate'])
    assert ('note: --resume changes --lambda_L1 100.0 → 10.0, --rotate False → True from epoch 2 on; config.json '
            "holds the new values, run_log.jsonl every start's") in capsys.readouterr().out.splitlines()
    first, second = [json.loads(line) for line in open(tmp_path / 'run' / 'run_log.jsonl')]
    assert first['command'] == ['train.py', *args, '--stop_epoch', '1'] and first['changed_options'] == {}
    assert (first['epoch'], first['iteration'], second['epoch'], second['iteration']) == (1, 0, 2, 5)
    assert second['changed_options'] == {'lambda_L1': [100.0, 10.0], 'rotate': [False, True]}
    assert second['torch'] == torch.__version__ and second['device'] == 'cpu' and second['processes'] == 1
    assert second['transform']['size'] == 72  # the data's settings, readable (config.json has only their digest)
    assert json.load(open(tmp_path / 'run' / 'config.json'))['lambda_L1'] == 10.0
    assert 'run_log/text_summary' in events(tmp_path / 'run').Tags()['tensors']  # TensorBoard's Text tab


def test_extending_a_linear_run_says_when_its_rate_goes_back_up(transformed_root, tmp_path, capsys):
    args = tiny(transformed_root, tmp_path, 'run', '--n_epochs_decay', '2')
    train.main([*args, '--n_epochs', '2'])  # rates 2e-4, 2e-4, 1.33e-4, 6.67e-5
    capsys.readouterr()
    opt = parse_options([*args, '--n_epochs', '4', '--resume'])
    opt.input_nc = 1
    trainer = pix2pix_model.Trainer(opt, torch.device('cpu'), 0, 1)
    trainer.restore(torch.load(tmp_path / 'run' / 'latest.pt', weights_only=True))  # saved for epoch 5: rate 0
    assert [group['lr'] for optimiser in (trainer.opt_G, trainer.opt_D)
            for group in optimiser.param_groups] == pytest.approx([4e-4 / 3] * 2)  # D is not left at 0
    wait_for_the_next_second()
    train.main([*args, '--n_epochs', '4', '--resume', '--stop_epoch', '5'])
    assert ('note: the linear lr schedule is redrawn for --n_epochs 4 --n_epochs_decay 2 as if planned from the '
            'start: epoch 5 trains at 0.000133, up from 6.67e-05 at epoch 4') in capsys.readouterr().out.splitlines()
    assert [e.value for e in events(tmp_path / 'run').Scalars('lr')][-2:] == pytest.approx([2e-4 / 3, 4e-4 / 3])


def test_a_stop_epoch_behind_the_trained_epochs_changes_nothing(transformed_root, tmp_path, capsys):
    args = tiny(transformed_root, tmp_path, 'run', '--n_epochs', '2', '--n_epochs_decay', '1')
    train.main([*args, '--stop_epoch', '2'])
    before = run_files(tmp_path / 'run')
    capsys.readouterr()
    assert train.main([*args, '--resume', '--stop_epoch', '1']) == 0
    assert capsys.readouterr().out.splitlines() == [f'nothing to train: {tmp_path / "run"} has already trained 2 '
                                                    'epochs (--stop_epoch 1); resume with a later --stop_epoch, or none']
    assert run_files(tmp_path / 'run') == before


def test_a_repeated_sigterm_keeps_stopping_but_a_second_ctrl_c_aborts():
    # SLURM signals every process of a job and torchrun forwards the signal again: the save must not be cut short
    # (the handler is called directly: two signals sent back to back may reach Python as one call)
    with train.StopRequest() as stop:
        try:
            stop.handle(signal.SIGTERM, None)
            stop.handle(signal.SIGTERM, None)
        except KeyboardInterrupt:  # pytest would take it for the user's Ctrl-C and end the session
            pytest.fail('a repeated SIGTERM aborted the stop before latest.pt was saved')
        assert stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)


def test_resume_that_switches_channels_last_steps_adam_like_the_saved_layout(transformed_root, tmp_path):
    """--channels_last may change on resume; the restored Adam moments must pair with the same weights as before."""
    train.main(tiny(transformed_root, tmp_path, 'run', '--n_epochs', '2', '--n_epochs_decay', '0', '--stop_epoch', '1'))
    stepped = {}
    for layout in ('--channels_last', None):
        opt = parse_options(tiny(transformed_root, tmp_path, 'run', '--resume', *filter(None, [layout])))
        opt.input_nc = 1
        trainer = pix2pix_model.Trainer(opt, torch.device('cpu'), 0, 1)
        # loaded anew each time: the restored optimiser steps the loaded tensors in place
        trainer.restore(torch.load(tmp_path / 'run' / 'latest.pt', map_location='cpu', weights_only=True))
        torch.manual_seed(0)
        for model, optimiser in ((trainer.G, trainer.opt_G), (trainer.D, trainer.opt_D)):
            for param in model.parameters():
                param.grad = torch.empty_like(param).copy_(torch.randn(param.shape))
            optimiser.step()
        stepped[layout] = {f'{name}.{key}': value for name, model in (('G', trainer.G), ('D', trainer.D))
                           for key, value in model.state_dict().items()}
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in stepped['--channels_last'].values())  # the switch really changed the weights' layout
    for key, value in stepped[None].items():
        torch.testing.assert_close(stepped['--channels_last'][key], value, msg=lambda m: f'{key}: {m}')


# ---------------------------------------------------------------- the Trainer built directly (tiny_trainer)


def tiny_trainer(root, tmp_path, *extra):
    opt = build_parser().parse_args(tiny(root, tmp_path, 'x', *extra))
    opt.input_nc = 1
    return pix2pix_model.Trainer(opt, torch.device('cpu'), 0, 1)


def test_init_from_starts_a_new_run_from_another_runs_weights(transformed_root, tmp_path, capsys):
    """Fine-tuning (say, on a new city): --resume refuses a new --lr or schedule, and a new --name started from
    scratch. --init_from takes G and D only; the optimisers, schedule and epochs start fresh."""
    train.main(tiny(transformed_root, tmp_path, 'base', '--n_epochs', '1', '--n_epochs_decay', '0'))
    source = torch.load(tmp_path / 'base' / 'latest.pt', weights_only=True)
    trainer = tiny_trainer(transformed_root, tmp_path, '--lr', '1e-5', '--channels_last')
    pix2pix_model.init_from_checkpoint(trainer, str(tmp_path / 'base' / 'latest.pt'))
    for model in ('G', 'D'):
        for key, value in getattr(trainer, model).state_dict().items():
            torch.testing.assert_close(value, source[model][key], rtol=0, atol=0)
    assert trainer.epoch == 0 and trainer.iteration == 0 and trainer.opt_G.param_groups[0]['lr'] == 1e-5
    # end to end: recorded with its absolute path, and refused on --resume with another checkpoint
    args = tiny(transformed_root, tmp_path, 'tuned', '--n_epochs', '1', '--n_epochs_decay', '0', '--lr', '1e-5')
    assert train.main([*args, '--init_from', os.path.relpath(tmp_path / 'base' / 'latest.pt')]) == 0
    assert json.load(open(tmp_path / 'tuned' / 'config.json'))['init_from'] == str(tmp_path / 'base' / 'latest.pt')
    line = cli_error([*args, '--resume', '--n_epochs', '2', '--init_from', str(tmp_path / 'base' / 'best.pt')], capsys)
    assert 'trained with --init_from' in line and 'the networks continue from the checkpoint' in line


def test_nan_in_batch_norm_statistics_counts_as_divergence(transformed_root, tmp_path):
    trainer = tiny_trainer(transformed_root, tmp_path, '--norm', 'batch')
    assert trainer.nonfinite_models() == []
    bn = next(m for m in trainer.G.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean[0] = float('nan')  # a buffer, not a parameter: generate() then makes NaN images
    assert trainer.nonfinite_models() == ['G']


def test_an_infinite_psnr_drop_warn_turns_the_warning_off(transformed_root, tmp_path):
    assert train.main(tiny(transformed_root, tmp_path, 'r', '--n_epochs', '1', '--n_epochs_decay', '0',
                           '--psnr_drop_warn', 'inf')) == 0


@pytest.mark.parametrize('layout', ['--channels_last', None])
def test_d_gets_its_input_in_the_chosen_layout(transformed_root, tmp_path, layout):
    trainer = tiny_trainer(transformed_root, tmp_path, *filter(None, [layout]))
    seen = []
    trainer.D.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    fmt = pix2pix_model.memory_format(trainer.opt)
    trainer.train_step(pix2pix_model.in_layout(torch.zeros(2, 1, 64, 64), trainer.opt),
                       pix2pix_model.in_layout(torch.zeros(2, 3, 64, 64), trainer.opt))
    # the D step judges fake and real in one call of 2 × 2 samples (instance norm), the G step the fake again
    assert [len(x) for x in seen] == [4, 2]
    assert all(x.shape[1] == 4 and x.is_contiguous(memory_format=fmt) for x in seen)


@pytest.mark.parametrize('layout', ['--channels_last', None])
def test_batches_in_layout_let_torch_cat_make_ds_input_in_that_layout_without_a_copy(transformed_root, tmp_path,
                                                                                      layout):
    """D's input is torch.cat((mask, image), 1): made in the models' layout, it needs no conversion afterwards (with
    a 1-channel mask's default strides torch.cat returned NCHW, and every D call copied it into channels_last)."""
    opt = tiny_trainer(transformed_root, tmp_path, *filter(None, [layout])).opt
    fmt = pix2pix_model.memory_format(opt)
    mask, image = torch.randn(2, 1, 8, 8), torch.randn(2, 3, 8, 8)
    mask_in_layout, image_in_layout = pix2pix_model.in_layout(mask, opt), pix2pix_model.in_layout(image, opt)
    assert torch.equal(mask_in_layout, mask) and mask_in_layout.data_ptr() == mask.data_ptr()  # a view, same values
    assert torch.equal(image_in_layout, image)
    masks, images = torch.cat((mask_in_layout, mask_in_layout)), torch.cat((image_in_layout, image_in_layout))
    for pair in (torch.cat((mask_in_layout, image_in_layout), 1), torch.cat((masks, images), 1)):  # D's 2 callers
        assert pair.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize('rotate', [False, True])
@pytest.mark.parametrize('layout', ['--channels_last', None])
def test_g_convolves_in_the_chosen_layout_whatever_the_augmentation(transformed_root, tmp_path, layout, rotate):
    """The stride of a 1-channel mask's channel axis is free, and convolutions read it as a layout hint. Cut from
    the NHWC memory the batch gather writes, the mask ran G's convolutions in channels_last without --channels_last
    (and in NCHW after quarter turns): in_layout sets it."""
    trainer = tiny_trainer(transformed_root, tmp_path, *filter(None, [layout]))
    fmt = pix2pix_model.memory_format(trainer.opt)
    outputs = []
    for conv in (m for m in trainer.G.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda module, args, out: outputs.append(out))
    masks, images, _ = load_split(transformed_root, 'train')
    plan = EpochPlan(len(masks), masks.shape[-1], 64, seed=0, epoch=0, rotate=rotate)
    mask, _ = batch_on_device(masks, images, plan, 0, 2, 64, memory_format=fmt)
    with torch.no_grad():
        trainer.G(pix2pix_model.in_layout(mask, trainer.opt))
    assert len(outputs) > 10 and all(out.is_contiguous(memory_format=fmt) for out in outputs)


@pytest.mark.parametrize('layout', ['--channels_last', None])
def test_train_py_makes_its_batches_in_the_models_layout(transformed_root, tmp_path, monkeypatch, layout):
    """The batches come from the gather in the models' layout: in_layout, before the step, copies no image (in
    channels_last it used to convert an NCHW float batch each step)."""
    copied = []

    def in_layout_spy(batch, opt):
        out = pix2pix_model.in_layout(batch, opt)
        copied.append(out.untyped_storage().data_ptr() != batch.untyped_storage().data_ptr())
        return out
    monkeypatch.setattr(train, 'in_layout', in_layout_spy)
    options = ('--n_epochs', '1', '--n_epochs_decay', '0', '--batch_size', '4', *filter(None, [layout]))
    assert train.main(tiny(transformed_root, tmp_path, 'layout', *options)) == 0
    assert copied and not any(copied)


@pytest.mark.parametrize('mode', ['default', 'reduce-overhead'])
def test_compile_mode_is_gs_and_d_compiles_without_cuda_graphs(transformed_root, tmp_path, monkeypatch, mode):
    """CUDA graph trees would reuse G's output and saved activations for D's step (test_gpu.py runs the real one)."""
    compiled = []
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: compiled.append((model, kwargs)) or model)
    trainer = tiny_trainer(transformed_root, tmp_path, '--compile', '--compile_mode', mode)
    assert [kwargs.get('mode', 'default') for _, kwargs in compiled] == [mode, 'default', 'default']
    assert [model for model, _ in compiled] == [trainer.G, trainer.D_run, trainer.D_frozen]
    assert trainer.D_run.D is trainer.D  # D's pairs, whose concatenation and cast compile with D


@pytest.mark.parametrize('norm, calls', [('instance', 1), ('none', 1), ('batch', 2)])
def test_one_d_call_on_fake_and_real_judges_as_two_calls_do(transformed_root, tmp_path, norm, calls):
    """One D call on both halves is a speed-up only where it computes what the official repo's two calls do:
    per-sample (or no) normalisation. Batch norm's statistics would mix the halves, so it keeps two calls."""
    trainer = tiny_trainer(transformed_root, tmp_path, '--norm', norm)
    torch.manual_seed(0)
    mask, fake, real = torch.randn(3, 1, 64, 64).sign(), torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    seen = []
    trainer.D.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    judged = trainer.judge_fake_and_real(mask, fake, real)
    assert seen == ([6] if calls == 1 else [3, 3])
    with torch.no_grad():
        joint = trainer.D(torch.cat((torch.cat((mask, mask)), torch.cat((fake, real))), 1)).chunk(2)
    separate = [trainer.D(torch.cat((mask, image), 1)) for image in (fake, real)]  # (batch norm's statistics move)
    for mine, theirs in zip(judged, separate):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    if norm == 'batch':  # the joint call is not the same here: the test can tell the two apart
        assert not torch.allclose(joint[0], separate[0], atol=1e-3)


@pytest.mark.parametrize('batch_size', [8, 2])  # 5 val samples: one short batch, or a short last batch
def test_validation_means_are_over_samples_not_batch_slots(transformed_root, tmp_path, batch_size):
    trainer = tiny_trainer(transformed_root, tmp_path)
    val_masks, val_images, _ = load_split(transformed_root, 'val')
    got = train.validate(trainer, val_masks, val_images, batch_size)
    mask, real = center_crop_batch(val_masks, val_images, 0, len(val_masks), 64, torch.device('cpu'))
    expected = {k: v.mean().item() for k, v in image_metrics(trainer.generate(mask), real).items()}
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize('layout, strides', [((), (64 * 64, 64 * 64, 64, 1)),
                                             (('--channels_last',), (64 * 64, 1, 64, 1))])
def test_validation_runs_G_in_the_models_layout_as_test_py_does(transformed_root, tmp_path, layout, strides):
    """A centre crop of a 1-channel mask has NHWC strides: G was validated in channels_last while test.py's crop mode
    ran it NCHW, and the metrics that should be the same differed (val 16.79 dB, test.py 17.06, in a review's run)."""
    trainer = tiny_trainer(transformed_root, tmp_path, *layout)
    val_masks, val_images, _ = load_split(transformed_root, 'val')
    seen = []
    trainer.G.register_forward_pre_hook(lambda module, args: seen.append(args[0].stride()))
    train.validate(trainer, val_masks, val_images, 8)
    train.image_grid(trainer, val_masks, val_images, 2)
    assert seen == [strides, strides]


def test_a_perfect_copy_is_left_out_of_the_validation_psnr_not_made_its_mean(transformed_root, tmp_path):
    """One val image reproduced exactly made the mean PSNR inf: best.pt was frozen at that epoch for good."""
    trainer = tiny_trainer(transformed_root, tmp_path)
    val_masks, val_images, _ = load_split(transformed_root, 'val')
    real = center_crop_batch(val_masks, val_images, 0, len(val_masks), 64, torch.device('cpu'))[1]
    fake = torch.cat([real[:1], real[1:] * 0.5])  # the first image exactly, the others not
    trainer.generate = lambda mask: fake  # the whole val split is one batch of 8
    scores = image_metrics(fake, real)
    assert scores['PSNR'][0] == math.inf and torch.isfinite(scores['PSNR'][1:]).all()
    got = train.validate(trainer, val_masks, val_images, 8)
    assert got['PSNR'] == pytest.approx(scores['PSNR'][1:].mean().item(), rel=1e-5)
    assert got['SSIM'] == pytest.approx(scores['SSIM'].mean().item(), rel=1e-5)  # over every image, the copy too
    assert got['L1'] == pytest.approx(scores['L1'].mean().item(), rel=1e-5)


def test_d_step_judges_real_pairs_real_and_generated_pairs_fake(transformed_root, tmp_path):
    trainer = tiny_trainer(transformed_root, tmp_path, '--gan_mode', 'lsgan', '--no_dropout')  # lsgan: 0 vs 1 is far
    G0, D0 = copy.deepcopy(trainer.G), copy.deepcopy(trainer.D)
    g = torch.Generator().manual_seed(0)
    mask = torch.where(torch.rand(2, 1, 64, 64, generator=g) > 0.5, 1.0, -1.0)
    real = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    losses = trainer.train_step(mask, real)
    with torch.no_grad():
        d_real = D0(torch.cat((mask, real), 1))
        d_fake = D0(torch.cat((mask, G0(mask)), 1))
    names = pix2pix_model.LOSS_NAMES
    assert losses[names.index('D_real')].item() == pytest.approx(trainer.gan_loss(d_real, True).item(), rel=1e-4)
    assert losses[names.index('D_fake')].item() == pytest.approx(trainer.gan_loss(d_fake, False).item(), rel=1e-4)


@pytest.mark.parametrize('norm', ['instance', 'batch'])  # one D call on both halves, and the official two
def test_each_optimiser_steps_on_the_gradients_of_the_official_losses(transformed_root, tmp_path, norm):
    """The losses as the official optimize_parameters writes them, here by hand: D on 0.5 · (BCE(D(mask, fake), 0)
    + BCE(D(mask, real), 1)) with the fake detached, then G on BCE(D(mask, fake), 1) + λ_L1 · L1 + λ_VGG · VGG
    through the same D. Compared by gradient: Adam's step hardly changes when a loss is scaled (0.5 dropped from
    D's loss, or λ_VGG ignored, passed a comparison of the weights after the step)."""
    trainer = tiny_trainer(transformed_root, tmp_path, '--no_dropout', '--norm', norm, '--lambda_L1', '7')
    trainer.opt.lambda_VGG = 3.0
    trainer.vgg_loss = lambda fake, real: (fake - real).pow(2).mean()  # a stand-in for the VGG19 term's weight
    G0, D0 = copy.deepcopy(trainer.G), copy.deepcopy(trainer.D)
    got = {}

    def record_gradients(name, model):  # in place of the optimiser's step: D is then unchanged for the G step
        got[name] = [p.grad.clone() for p in model.parameters()]

    trainer.opt_D.step = functools.partial(record_gradients, 'D', trainer.D)
    trainer.opt_G.step = functools.partial(record_gradients, 'G', trainer.G)
    g = torch.Generator().manual_seed(0)
    mask = torch.where(torch.rand(2, 1, 64, 64, generator=g) > 0.5, 1.0, -1.0)
    real = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    trainer.train_step(mask, real)

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    fake = G0(mask)
    judged_fake, judged_real = D0(torch.cat((mask, fake.detach()), 1)), D0(torch.cat((mask, real), 1))
    loss_D = 0.5 * (bce(judged_fake, torch.zeros_like(judged_fake)) + bce(judged_real, torch.ones_like(judged_real)))
    expected_D = torch.autograd.grad(loss_D, list(D0.parameters()))
    judged = D0(torch.cat((mask, fake), 1))
    loss_G = (bce(judged, torch.ones_like(judged)) + 7 * (fake - real).abs().mean()
              + 3 * (fake - real).pow(2).mean())
    expected_G = torch.autograd.grad(loss_G, list(G0.parameters()))
    for mine, official in zip(got['D'] + got['G'], expected_D + expected_G, strict=True):
        torch.testing.assert_close(mine, official, rtol=1e-4, atol=1e-6)


def test_epoch_checkpoints_are_kept_every_save_epoch_freq_epochs(transformed_root, tmp_path):
    train.main(tiny(transformed_root, tmp_path, 'freq', '--n_epochs', '4', '--n_epochs_decay', '0',
                    '--save_epoch_freq', '2'))
    assert sorted(n for n in os.listdir(tmp_path / 'freq') if n.startswith('epoch_')) == ['epoch_2.pt', 'epoch_4.pt']


def test_image_metrics_use_the_0_1_convention_with_peak_1():
    fake, real = torch.full((1, 3, 32, 32), -1.0), torch.zeros(1, 3, 32, 32)  # black vs mid grey
    metrics = image_metrics(fake, real)
    assert metrics['PSNR'].item() == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-4)  # 6.02 dB, not 12.04
    assert metrics['L1'].item() == pytest.approx(0.5)  # half the [0, 1] range, not 1.0
    per_image = image_metrics(torch.cat([fake, real]), torch.cat([real, real]))  # one image per score
    assert per_image['L1'].tolist() == [0.5, 0.0] and per_image['PSNR'][0].item() == pytest.approx(6.0206, abs=1e-4)
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    b = (0.5 * a + 0.3 * (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1)).clamp(-1, 1)  # a noisy, dimmer copy
    on_01 = ssim((a + 1) / 2, (b + 1) / 2, data_range=1.0).item()  # 0.74
    assert abs(on_01 - ssim(a, b, data_range=1.0).item()) > 0.1  # on [-1, 1] it would read 0.42
    assert image_metrics(a, b)['SSIM'].item() == pytest.approx(on_01, abs=1e-5)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # as generation.py's example runs the generator
        in_autocast = image_metrics(a, b)
    assert {k: v.item() for k, v in in_autocast.items()} == {k: v.item() for k, v in image_metrics(a, b).items()}
