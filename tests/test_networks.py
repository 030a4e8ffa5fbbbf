"""Tests for networks.py: shapes, norms, receptive fields (measured), init. The losses: test_losses.py.

CPU only and small (ngf/ndf 8, batch 1 at 256²) so the file runs in well under a minute.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import count_calls
import networks
from networks import (DISCRIMINATORS, GENERATORS, NORMS, define_D, define_G, generator_side_multiple,
                      generator_size_problem, get_norm_layer, init_weights)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def count(net, cls):
    return sum(isinstance(m, cls) for m in net.modules())


# ----------------------------------------------------------------------------- generators

G_SIZES = {'unet_256': 256, 'unet_128': 128, 'resnet_9blocks': 64, 'resnet_6blocks': 64}


@pytest.mark.parametrize('upsample', ['transpose', 'resize'])
@pytest.mark.parametrize('netG', GENERATORS)
def test_generator_output_shape(netG, upsample):
    size = G_SIZES[netG]
    # Default norm 'instance', train mode, batch 1: the unet_256 bottleneck is 1x1 here.
    G = define_G(netG, input_nc=1, output_nc=3, ngf=8, upsample=upsample)
    assert G.training
    x = torch.rand(1, 1, size, size) * 2 - 1
    y = G(x)
    assert y.shape == (1, 3, size, size)
    assert y.abs().max() <= 1  # Tanh output
    y.mean().backward()
    assert all(p.grad is not None for p in G.parameters())


@pytest.mark.parametrize('norm', NORMS)
def test_unet_norms_train_and_eval(norm):
    G = define_G('unet_128', ngf=8, norm=norm)
    x = torch.rand(2, 1, 128, 128) * 2 - 1
    assert G(x).shape == (2, 3, 128, 128)
    G.eval()
    assert G(x[:1]).shape == (1, 3, 128, 128)


def test_unet_rejects_wrong_size():
    G = define_G('unet_128', ngf=8)
    with pytest.raises(ValueError, match='multiples of 128'):
        G(torch.zeros(1, 1, 64, 64))


@pytest.mark.parametrize('side', [(30, 32), (4, 4)])
def test_resnet_rejects_a_size_it_cannot_return(side):
    """30 gave 32×32 out of a 30×30 input (generation.generate_full returned it; sliding windows failed further on
    in a size mismatch); 4 failed in instance norm of the 1×1 bottleneck."""
    G = define_G('resnet_6blocks', ngf=8).eval()
    with pytest.raises(ValueError, match=r'multiples of 4, at least 8, got \(' + str(side[0])):
        G(torch.zeros(1, 1, *side))
    assert G(torch.zeros(1, 1, 8, 12)).shape == (1, 3, 8, 12)


def test_unet_min_size():
    assert generator_side_multiple('unet_256') == 256
    assert generator_side_multiple('unet_128') == 128
    assert generator_side_multiple('resnet_9blocks') == 4
    assert generator_side_multiple('resnet_6blocks') == 4
    with pytest.raises(ValueError, match="'bogus'"):
        generator_side_multiple('bogus')


@pytest.mark.parametrize('netG, side, fits', [
    ('resnet_6blocks', 4, False), ('resnet_6blocks', 6, False), ('resnet_6blocks', 8, True),
    ('unet_128', 64, False), ('unet_128', 128, True), ('unet_256', 128, False), ('unet_256', 256, True),
])
def test_generator_size_problem_agrees_with_the_generator(netG, side, fits):
    """A side is refused exactly when G fails on it or returns another size (a ResNet turns 6 into 8)."""
    assert (generator_size_problem(netG, side) is None) == fits
    G = define_G(netG, ngf=4).train()
    try:
        works = G(torch.zeros(1, 1, side, side)).shape == (1, 3, side, side)
    except ValueError:
        works = False
    assert works == fits


def test_unknown_netG_raises():
    with pytest.raises(ValueError) as e:
        define_G('unet_512')
    assert str(e.value) == ("unknown --netG 'unet_512'; choose one of "
                            "unet_256, unet_128, resnet_9blocks, resnet_6blocks")


def test_unknown_upsample_and_norm_raise():
    with pytest.raises(ValueError, match="'bilinear'"):
        define_G('unet_128', ngf=8, upsample='bilinear')
    with pytest.raises(ValueError, match="'group'"):
        get_norm_layer('group')


@pytest.mark.parametrize('netG,expected', [('unet_256', 3), ('unet_128', 2), ('resnet_6blocks', 6)])
def test_dropout_present_only_when_requested(netG, expected):
    assert count(define_G(netG, ngf=8, use_dropout=True), nn.Dropout) == expected
    assert count(define_G(netG, ngf=8, use_dropout=False), nn.Dropout) == 0


def test_unet_dropout_sits_in_the_inner_ngf8_decoder_blocks():
    G = define_G('unet_256', ngf=8, use_dropout=True)
    # Each dropout follows the up-path norm of an intermediate level with ngf*8 = 64 outputs.
    for block in G.modules():
        if isinstance(block, networks.UnetSkipBlock) and count(block.model[-1:], nn.Dropout):
            assert isinstance(block.model[-2], nn.InstanceNorm2d)
            assert block.model[-2].num_features == 64


@pytest.mark.parametrize('netG', ['unet_128', 'resnet_6blocks'])
def test_resize_upsample_has_no_transposed_conv(netG):
    assert count(define_G(netG, ngf=8, upsample='transpose'), nn.ConvTranspose2d) > 0
    G = define_G(netG, ngf=8, upsample='resize')
    assert count(G, nn.ConvTranspose2d) == 0
    assert count(G, nn.Upsample) > 0


def test_bias_rule_follows_norm():
    def inner_conv_biases(norm):
        G = define_G('unet_128', ngf=8, norm=norm)
        convs = [m for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        return [c.bias is not None for c in convs[1:-1]]  # outer convs always have a bias

    assert not any(inner_conv_biases('batch'))
    assert all(inner_conv_biases('instance'))
    assert all(inner_conv_biases('none'))


def test_norm_layers():
    inst = get_norm_layer('instance')(8)
    assert isinstance(inst, nn.InstanceNorm2d) and not inst.affine and not inst.track_running_stats
    bn = get_norm_layer('batch')(8)
    assert isinstance(bn, nn.BatchNorm2d) and bn.affine
    assert isinstance(get_norm_layer('none')(8), nn.Identity)


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-12)],
                         ids=['fp32', 'bf16', 'fp64'])
def test_instance_norm_keeps_channels_last_and_computes_what_torchs_does(dtype, tol):
    """torch's instance norm returns NCHW for a channels_last input (and its gradient is NCHW), which costs a copy
    per convolution around it; ours keeps the layout, forward and backward, with the same values (bf16: 1 ulp)."""
    x = channels_last((torch.randn(3, 8, 16, 16) * 3 + 1).to(dtype)).requires_grad_()
    grad = channels_last(torch.randn(3, 8, 16, 16).to(dtype))
    ours, torchs = get_norm_layer('instance')(8)(x), nn.InstanceNorm2d(8)(x)
    assert ours.dtype == dtype and ours.is_contiguous(memory_format=torch.channels_last)
    assert not torchs.is_contiguous(memory_format=torch.channels_last)  # what this class exists for
    torch.testing.assert_close(ours.float(), torchs.float(), rtol=tol, atol=tol)
    (ours_grad,), (torchs_grad,) = (torch.autograd.grad(y, x, grad) for y in (ours, torchs))
    assert ours_grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours_grad.float(), torchs_grad.float(), rtol=tol, atol=tol)


def test_instance_norm_of_an_nchw_input_is_torchs_bit_for_bit():
    x = torch.randn(2, 8, 16, 16) * 3 + 1
    assert torch.equal(get_norm_layer('instance')(8)(x), nn.InstanceNorm2d(8)(x))
    affine = networks.InstanceNorm2d(8, affine=True)  # not ours to compute: torch's kernel, whatever the layout
    nn.init.normal_(affine.weight)
    torch.testing.assert_close(affine(channels_last(x)), nn.functional.instance_norm(
        x, weight=affine.weight, bias=affine.bias))


def test_a_channels_last_generator_and_discriminator_stay_channels_last_through_their_norms():
    G = define_G('unet_256', ngf=8).to(memory_format=torch.channels_last)
    D = define_D('basic', ndf=8).to(memory_format=torch.channels_last)
    layouts = []
    for net in (G, D):
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.register_forward_hook(lambda m, args, out: layouts.append(
                    out.is_contiguous(memory_format=torch.channels_last)))
    fake = G(channels_last(torch.rand(2, 1, 256, 256)))
    D(torch.cat((channels_last(torch.rand(2, 1, 256, 256)), fake), 1))
    assert len(layouts) == 6 + 7 + 3 and all(layouts)  # unet_256: 6 norms down, 7 up; basic D: 3


# ----------------------------------------------------------------------------- discriminators

@pytest.mark.parametrize('input_nc', [4, 6, 8])
def test_ds_first_conv_over_zero_padded_channels_computes_what_the_plain_conv_does(monkeypatch, input_nc):
    """The channels padded to a multiple of 8 for a channels_last input on CUDA (here on the CPU, which the class
    otherwise leaves to torch, with the default 2×2 blocks turned off): the same logits and gradients for the input
    and for the unpadded weights."""
    monkeypatch.setattr(networks.InputConv2d, 'space_to_depth', False)
    D = define_D('basic', input_nc=input_nc, ndf=8).to(memory_format=torch.channels_last)
    first = D.model[0]
    assert isinstance(first, networks.InputConv2d) and first.weight.shape == (8, input_nc, 4, 4)
    padded = []
    monkeypatch.setattr(F, 'pad', lambda x, pad, *args: padded.append(torch.constant_pad_nd(x, pad)) or padded[-1])
    x = torch.randn(2, input_nc, 32, 32)
    plain = D(x.clone().requires_grad_())
    assert padded == []  # NCHW, and channels_last on a device the class leaves alone
    D(channels_last(x))
    assert padded == []
    monkeypatch.setattr(networks.InputConv2d, 'on_devices', ('cpu',))
    x_cl = channels_last(x).requires_grad_()
    ours = D(x_cl)
    assert [p.shape for p in padded] == ([(2, 8, 32, 32), (8, 8, 4, 4)] if input_nc % 8 else [])  # to 8 channels
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(plain)
    ours_grads = torch.autograd.grad(ours, (x_cl, first.weight, first.bias), grad)
    x_nchw = x.clone().requires_grad_()
    plain_grads = torch.autograd.grad(D(x_nchw), (x_nchw, first.weight, first.bias), grad)
    for mine, theirs in zip(ours_grads, plain_grads):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    assert set(D.state_dict()) == set(define_D('basic', input_nc=input_nc, ndf=8).state_dict())


@pytest.mark.parametrize('input_nc,size', [(4, 32), (3, 32), (4, 33)])
def test_ds_first_conv_over_2x2_blocks_computes_what_the_plain_conv_does(monkeypatch, input_nc, size):
    """InputConv2d.space_to_depth (the default on CUDA): the 4×4 stride-2 conv as a 2×2 conv over pixel_unshuffle's
    blocks gives the plain conv's logits and gradients (fp64: only rounding differs). An odd side has no whole
    blocks: it takes the padded-channels path."""
    monkeypatch.setattr(networks.InputConv2d, 'on_devices', ('cpu',))
    unshuffled = []
    monkeypatch.setattr(F, 'pixel_unshuffle', lambda x, r: unshuffled.append(x.shape) or torch.pixel_unshuffle(x, r))
    D = define_D('basic', input_nc=input_nc, ndf=8).double()
    first = D.model[0]
    x = torch.randn(2, input_nc, size, size, dtype=torch.float64)
    x_nchw = x.clone().requires_grad_()
    plain = D(x_nchw)
    grad = torch.randn_like(plain)
    plain_grads = torch.autograd.grad(plain, (x_nchw, first.weight, first.bias), grad)
    assert unshuffled == []  # NCHW: torch's conv
    D = D.to(memory_format=torch.channels_last)
    x_cl = channels_last(x).requires_grad_()
    ours = D(x_cl)
    assert unshuffled == ([(2, input_nc, size + 2, size + 2)] if size % 2 == 0 else [])
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    ours_grads = torch.autograd.grad(ours, (x_cl, first.weight, first.bias), grad)
    for mine, theirs in zip(ours_grads, plain_grads):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('make', [
    lambda: networks.InputConv2d(4, 8, 4, 2, 1, groups=2),
    lambda: networks.InputConv2d(4, 8, 4, 2, 1, padding_mode='reflect'),
    lambda: networks.InputConv2d(4, 8, 4, 2, 1, padding_mode='replicate'),
    lambda: networks.InputConv2d(4, 8, 4, 2, 1, padding_mode='circular')],
    ids=['grouped', 'reflect-padded', 'replicate-padded', 'circular-padded'])
def test_a_first_conv_whose_shape_its_forms_do_not_compute_keeps_its_sums_on_channels_last(monkeypatch, make):
    """The 2×2 blocks are cut from a zero-padded input, and zero channels padded onto a grouped conv's input would
    fall into its last group: a conv built otherwise (not a layer networks.py builds) takes no blocks, and the
    padded-channels path pads as the conv does or leaves a grouped conv to torch."""
    monkeypatch.setattr(networks.InputConv2d, 'on_devices', ('cpu',))
    unshuffled = count_calls(monkeypatch, F, 'pixel_unshuffle')
    layer = make()
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(layer(channels_last(x)), layer(x))  # NCHW: torch's conv
    assert unshuffled == []


@pytest.mark.parametrize('conv', [nn.Conv2d(64, 1, 4, 1, 1), nn.Conv2d(8, 3, 3, 1, 2, bias=False),
                                  nn.Conv2d(5, 2, (3, 5), 1, (1, 2)), nn.ConvTranspose2d(16, 3, 4, 2, 1),
                                  nn.ConvTranspose2d(6, 2, 3, 2, 0, bias=False),
                                  nn.ConvTranspose2d(4, 5, (4, 3), (2, 1), (1, 1))], ids=repr)
def test_per_tap_formulations_give_the_convs_outputs_and_gradients(conv):
    """The per-tap formulations of the few-output layers (D's last conv, G's last transposed conv; bench.py's conv
    table times them) compute the layer's sums: fp64 outputs and gradients, from a channels_last input, within
    rounding of torch's."""
    conv = conv.double()
    x = torch.randn(2, conv.in_channels, 13, 11, dtype=torch.float64)
    ours = networks.conv_as_shifted_tap_sums if isinstance(conv, nn.Conv2d) else networks.conv_transpose_as_folded_taps
    x_nchw, x_cl = x.clone().requires_grad_(), x.contiguous(memory_format=torch.channels_last).requires_grad_()
    expected, got = conv(x_nchw), ours(conv, x_cl)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(expected)
    for mine, theirs in zip(torch.autograd.grad(got, (x_cl, *conv.parameters()), grad),
                            torch.autograd.grad(expected, (x_nchw, *conv.parameters()), grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('net', ['D', 'G'])
def test_the_last_layers_per_tap_path_computes_what_the_plain_layer_does(monkeypatch, net):
    """OutputConv2d.per_tap (D's last conv) and OutputConvTranspose2d.per_tap (a U-Net's last layer), on by default
    (bench.py --last_convs torch is the A/B): the same outputs and gradients as torch's layer (fp64: only rounding
    differs), taken for a channels_last input on the layer's devices only (here the CPU, for the test) and under
    torch.compile only (here pretended: inductor's code is the GPU tests')."""
    layer_class = networks.OutputConv2d if net == 'D' else networks.OutputConvTranspose2d
    assert layer_class.per_tap is True
    model = (define_D('basic', ndf=8) if net == 'D' else define_G('unet_128', ngf=8, use_dropout=False)).double()
    last = [m for m in model.modules() if isinstance(m, layer_class)]
    assert len(last) == 1
    last = last[0]
    taken = count_calls(monkeypatch, networks, 'conv_as_shifted_tap_sums' if net == 'D' else
                        'conv_transpose_as_folded_taps')
    x = torch.randn(2, 4 if net == 'D' else 1, 128, 128, dtype=torch.float64)
    x_nchw = x.clone().requires_grad_()
    plain = model(x_nchw)
    grad = torch.randn_like(plain)
    plain_grads = torch.autograd.grad(plain, (x_nchw, last.weight, last.bias), grad)
    model.to(memory_format=torch.channels_last)
    x_cl = channels_last(x).requires_grad_()
    torch.testing.assert_close(model(x_cl), plain, rtol=1e-12, atol=1e-12)
    assert taken == []  # channels_last on a device the class leaves alone
    monkeypatch.setattr(layer_class, 'on_devices', ('cpu',))
    torch.testing.assert_close(model(x_cl), plain, rtol=1e-12, atol=1e-12)
    assert taken == []  # eager: torch's conv
    monkeypatch.setattr(networks, 'compiling', lambda: True)
    ours = model(x_cl)
    assert len(taken) == 1
    monkeypatch.setattr(layer_class, 'per_tap', False)
    model(x_cl)
    assert len(taken) == 1  # switched off
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(torch.autograd.grad(ours, (x_cl, last.weight, last.bias), grad), plain_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('make,form', [(lambda: networks.OutputConv2d(8, 1, 4, 1, 1), 'conv_as_shifted_tap_sums'),
                                       (lambda: networks.OutputConvTranspose2d(8, 3, 4, 2, 1),
                                        'conv_transpose_as_folded_taps')], ids=['D last', 'G last'])
def test_the_last_layers_take_their_per_tap_form_only_when_torch_compile_traces_them(monkeypatch, make, form):
    """networks.compiling() as torch.compile sees it: traced by dynamo (its eager backend, so no inductor code on the
    CPU here; tests/test_gpu.py compiles the forms on a GPU) the layer takes its per-tap form; called eager, torch's."""
    layer = make()
    monkeypatch.setattr(type(layer), 'on_devices', ('cpu',))
    taken = count_calls(monkeypatch, networks, form)
    x = channels_last(torch.randn(2, 8, 9, 9))
    eager = layer(x)
    assert taken == []
    torch._dynamo.reset()
    traced = torch.compile(layer, backend='eager')(x)
    torch._dynamo.reset()
    assert taken
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('make', [
    lambda: networks.OutputConv2d(8, 1, 3, 1, 2, dilation=2), lambda: networks.OutputConv2d(8, 2, 3, 1, 1, groups=2),
    lambda: networks.OutputConv2d(8, 1, 3, 1, 1, padding_mode='reflect'),
    lambda: networks.OutputConv2d(8, 1, 3, padding='same'), lambda: networks.OutputConv2d(8, 1, 3, stride=2),
    lambda: networks.OutputConvTranspose2d(8, 4, 4, 2, 1, groups=2),
    lambda: networks.OutputConvTranspose2d(8, 3, 3, 2, 1, output_padding=1)],
    ids=['dilated', 'grouped', 'reflect-padded', 'same-padded', 'strided', 'transposed grouped',
         'transposed output_padding'])
def test_a_last_layer_whose_shape_its_per_tap_form_does_not_compute_takes_torchs_conv(monkeypatch, make):
    """The per-tap forms shift by whole pixels, pad with zeros and mix every channel: a layer built otherwise (not
    one networks.py builds) keeps torch's conv where it would take its form, rather than wrong sums or an error."""
    layer = make()
    monkeypatch.setattr(type(layer), 'on_devices', ('cpu',))
    monkeypatch.setattr(networks, 'compiling', lambda: True)
    taken = [count_calls(monkeypatch, networks, form)
             for form in ('conv_as_shifted_tap_sums', 'conv_transpose_as_folded_taps')]
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(layer(channels_last(x)), layer(x))  # NCHW: torch's conv
    assert taken == [[], []]


@pytest.mark.parametrize('netD,n_layers_D,size,out', [
    ('basic', 3, 256, 30),      # the classic 30x30 PatchGAN map
    ('n_layers', 2, 64, 14),    # 64/4 - 2
    ('n_layers', 4, 128, 6),    # 128/16 - 2
    ('pixel', 3, 64, 64),       # 1x1 convs keep H x W
])
def test_discriminator_output_shape(netD, n_layers_D, size, out):
    D = define_D(netD, input_nc=4, ndf=8, n_layers_D=n_layers_D)
    y = D(torch.randn(1, 4, size, size))
    assert y.shape == (1, 1, out, out)
    assert count(D, nn.Sigmoid) == 0  # raw logits


def test_unknown_netD_raises():
    with pytest.raises(ValueError) as e:
        define_D('multiscale')
    msg = str(e.value)
    assert "'multiscale'" in msg and all(name in msg for name in DISCRIMINATORS)


def measured_receptive_field(netD, n_layers_D, size):
    """Backprop from one central output logit; return the (rows, cols) extent of non-zero
    input gradient and whether it stayed clear of the image border (so it is not clipped)."""
    D = define_D(netD, input_nc=4, ndf=8, n_layers_D=n_layers_D, norm='none').double().eval()
    x = torch.randn(1, 4, size, size, dtype=torch.double, requires_grad=True)
    y = D(x)
    c = y.shape[-1] // 2
    y[0, 0, c, c].backward()
    touched = x.grad.abs().sum(dim=(0, 1)) != 0
    rows = touched.any(dim=1).nonzero().flatten()
    cols = touched.any(dim=0).nonzero().flatten()
    inside = rows.min() > 0 and cols.min() > 0 and rows.max() < size - 1 and cols.max() < size - 1
    return (rows.max() - rows.min() + 1).item(), (cols.max() - cols.min() + 1).item(), inside


@pytest.mark.parametrize('netD,n_layers_D,size,expected', [  # the PatchGAN sides of the pix2pix paper and code
    ('basic', 3, 128, 70), ('pixel', 3, 16, 1), ('n_layers', 1, 64, 16), ('n_layers', 2, 64, 34),
    ('n_layers', 3, 128, 70), ('n_layers', 4, 256, 142)])
def test_each_logit_sees_the_patch_side_the_paper_gives(netD, n_layers_D, size, expected):
    h, w, inside = measured_receptive_field(netD, n_layers_D, size)
    assert inside
    assert h == w == expected


def test_pixel_discriminator_cells_are_independent():
    D = define_D('pixel', ndf=8, norm='none').eval()
    x = torch.randn(1, 4, 8, 8)
    x2 = x.clone()
    x2[0, :, 3, 5] += 1.0
    changed = (D(x) != D(x2))[0, 0]
    assert changed.nonzero().tolist() == [[3, 5]]


# ----------------------------------------------------------------------------- init

def test_init_normal_std():
    conv = nn.Conv2d(64, 64, 3)  # 36864 weights
    bn = nn.BatchNorm2d(4096)
    init_weights(nn.Sequential(conv, bn), 'normal', 0.02)
    assert abs(conv.weight.std().item() - 0.02) < 0.001
    assert abs(conv.weight.mean().item()) < 0.001
    assert torch.all(conv.bias == 0)
    assert abs(bn.weight.mean().item() - 1.0) < 0.002
    assert abs(bn.weight.std().item() - 0.02) < 0.002
    assert torch.all(bn.bias == 0)


def test_define_G_applies_init():
    G = define_G('unet_256', ngf=8, init_gain=0.02)
    biggest = max((m for m in G.modules() if isinstance(m, nn.Conv2d)), key=lambda m: m.weight.numel())
    assert abs(biggest.weight.std().item() - 0.02) < 0.002


@pytest.mark.parametrize('init_type', ['xavier', 'kaiming', 'orthogonal'])
def test_other_inits_change_weights(init_type):
    conv = nn.Conv2d(16, 16, 3)
    before = conv.weight.clone()
    init_weights(conv, init_type, 0.02)
    assert not torch.equal(before, conv.weight)
    assert torch.all(conv.bias == 0)


def test_unknown_init_raises():
    with pytest.raises(ValueError, match="'uniform'"):
        init_weights(nn.Conv2d(1, 1, 1), 'uniform')
