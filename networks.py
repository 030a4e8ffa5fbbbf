"""Generators, discriminators and losses for the mask -> aerial image pix2pix model.

Architectures follow the official pix2pix code (junyanz/pytorch-CycleGAN-and-pix2pix,
models/networks.py) and keep its option names (--netG, --netD, --norm, --init_type, ...),
so its papers' numbers and its command lines translate directly. Additions: a
'resize' upsampling mode (nearest upsample + 3x3 conv, against checkerboard artefacts),
a hinge GAN loss, and a frozen VGG19 perceptual loss (pix2pixHD layer choice).

This module imports nothing from the repo: only torch, torchvision and the stdlib.
"""
import functools
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.nn import init

# Choices exported for argparse.
GENERATORS = ('unet_256', 'unet_128', 'resnet_9blocks', 'resnet_6blocks')
DISCRIMINATORS = ('basic', 'n_layers', 'pixel')
GAN_MODES = ('vanilla', 'lsgan', 'hinge')
NORMS = ('batch', 'instance', 'none')
INIT_TYPES = ('normal', 'xavier', 'kaiming', 'orthogonal')
UPSAMPLES = ('transpose', 'resize')

# pix2pixHD perceptual loss: outputs of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in
# torchvision's vgg19().features; shallow layers get small weights because their
# activations are large and would otherwise dominate.
VGG_LAYERS = (1, 6, 11, 20, 29)
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_choice(option, value, choices):
    """Raise a one-line ValueError that names the bad value and the valid ones."""
    if value not in choices:
        raise ValueError(f"unknown --{option} {value!r}; choose one of {', '.join(choices)}")


# ----------------------------------------------------------------------------- norm / init

def _no_norm(num_features):
    return nn.Identity()


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d that keeps a channels_last input channels_last. torch's kernel normalises a view of the
    input as one (1, N·C, H, W) batch, so it copies a channels_last input into NCHW and returns NCHW: every next
    convolution then converts it back, forward and backward (and under torch.compile the traced gradients are NCHW,
    so each convolution backward copies its incoming gradient). The same statistics computed over (H, W) in fp32
    keep the input's layout: an H200's compiled channels_last step at batch 64 took 22.1 ms with this norm, 25.4 ms
    with torch's. A contiguous (NCHW) input takes torch's kernel, as the official repo does."""

    def forward(self, x):
        if x.is_contiguous() or self.affine or self.track_running_stats:
            return super().forward(x)
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 up to fp32; fp64 (gradient checks) kept
        var, mean = torch.var_mean(x32, dim=(2, 3), keepdim=True, correction=0)
        return ((x32 - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)


def get_norm_layer(norm):
    """Return a constructor `f(num_features) -> nn.Module` for the chosen normalisation.

    Instance norm has no affine parameters and no running statistics (official choice
    for pix2pix: each image is normalised by its own statistics, in train and test).
    """
    _check_choice('norm', norm, NORMS)
    if norm == 'batch':
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == 'instance':
        return functools.partial(InstanceNorm2d, affine=False, track_running_stats=False)
    return _no_norm


def _use_bias(norm):
    # BatchNorm's affine shift makes a conv bias redundant; instance norm here has no affine, so the conv keeps
    # its bias (the official rule). With no norm the official code drops the bias too; it is kept here (README).
    return norm != 'batch'


def init_weights(net, init_type='normal', init_gain=0.02):
    """Initialise conv/linear weights (bias 0) and BatchNorm (weight ~ N(1, gain), bias 0)
    in place, as the official init_weights. Returns net for chaining."""
    _check_choice('init_type', init_type, INIT_TYPES)

    def init_module(m):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == 'normal':
                init.normal_(m.weight, 0.0, init_gain)
            elif init_type == 'xavier':
                init.xavier_normal_(m.weight, gain=init_gain)
            elif init_type == 'kaiming':
                init.kaiming_normal_(m.weight, a=0, mode='fan_in')
            else:
                init.orthogonal_(m.weight, gain=init_gain)
            if m.bias is not None:
                init.constant_(m.bias, 0.0)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            init.normal_(m.weight, 1.0, init_gain)
            init.constant_(m.bias, 0.0)

    with torch.no_grad():
        net.apply(init_module)
    return net


# ----------------------------------------------------------------------------- convolutions with few channels
# cuDNN runs a conv with few input or output channels slowly in channels_last. These layers keep nn.Conv2d's and
# nn.ConvTranspose2d's parameters (checkpoints are unchanged) and compute the same sums another way, on CUDA for
# channels_last inputs only (the last two layers: under torch.compile only); elsewhere (NCHW, CPU) they are torch's
# conv.

def reformulates(x, devices):
    """Whether a few-channel layer takes its other formulation on this input: channels_last (and not also NCHW, as a
    1×1 map is) on one of these devices."""
    return x.device.type in devices and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def compiling():
    """Whether torch.compile is tracing this call. The per-tap forms of the last layers gain only there, where
    inductor fuses their sums: eager, each tap's slice is a kernel of its own (on an H100, alone: D's last conv 2.82
    against torch's 1.18 ms, G's last layer 2.82 against 2.42 ms, forward and backward; bench.py --only convs)."""
    return torch.compiler.is_compiling()


def conv_over_zero_padded_channels(conv, x, multiple=8):
    """conv(x) in channels_last with the input channels, and the weight's, zero-padded to a multiple of `multiple`:
    the same sums (zero weights for zero channels), in the channel counts cuDNN's fast kernels take. A grouped conv
    is left to torch: its zero channels would fall into the last group."""
    extra = -conv.in_channels % multiple
    if not extra or conv.groups != 1:
        return nn.Conv2d.forward(conv, x)
    x = F.pad(x, (0, 0, 0, 0, 0, extra)).contiguous(memory_format=torch.channels_last)
    weight = F.pad(conv.weight, (0, 0, 0, 0, 0, extra)).contiguous(memory_format=torch.channels_last)
    return conv._conv_forward(x, weight, conv.bias)


class InputConv2d(nn.Conv2d):
    """D's first conv, on the (mask, image) pair. cuDNN convolves a few input channels (4) laid out channels_last
    slowly. For a channels_last input on CUDA this conv runs as the same sums in channel counts cuDNN's fast kernels
    take (the weights and checkpoints keep their shape; elsewhere, NCHW or CPU, it is torch's conv):
    - space_to_depth (on by default): a 2×2 stride-1 conv over the input's 2×2 blocks stacked as channels (4 -> 16,
      a multiple of 8 with no zero channels, and a quarter of the positions per weight tap). On an H100 the compiled
      channels_last training step at batch 64 took 21.7 ms with it, 23.0 and 23.9 ms with the padding below, and
      the GPU's kernels 21.0 against 21.8 ms per step (bench.py, 2026-11-27).
    - otherwise, or where the input has no whole 2×2 blocks: the channels zero-padded to a multiple of 8, with zero
      weights for them (an H200's step took 20.5 ms with it, 20.8 ms with torch's 4-channel conv).
    Under torch.compile the padding was written with the pair in one kernel (H200 profile)."""

    on_devices = ('cuda',)
    space_to_depth = True

    def forward(self, x):
        if not reformulates(x, self.on_devices):
            return super().forward(x)
        if self.space_to_depth and self.fits_space_to_depth(x.shape[-2:]):
            return self.space_to_depth_forward(x)
        return conv_over_zero_padded_channels(self, x)

    def fits_space_to_depth(self, size):
        """Whether an input of this (height, width) has whole 2×2 blocks for this conv's shape (the blocks are cut
        from a zero-padded input)."""
        shape = (self.kernel_size, self.stride, self.padding, self.dilation, self.groups, self.padding_mode)
        return shape == ((4, 4), (2, 2), (1, 1), (1, 1), 1, 'zeros') and size[0] % 2 == 0 and size[1] % 2 == 0

    def space_to_depth_forward(self, x):
        out_nc, in_nc = self.weight.shape[:2]
        # The 4×4 stride-2 window at output (i, j) covers 2×2 blocks (i + p, j + q), p, q in {0, 1}, of the padded
        # input; pixel (a, b) of a block is channel 4c + 2a + b of pixel_unshuffle's output.
        blocks = F.pixel_unshuffle(F.pad(x, (1, 1, 1, 1)), 2).contiguous(memory_format=torch.channels_last)
        # weight[o, c, 2p + a, 2q + b] -> [o, 4c + 2a + b, p, q]
        weight = self.weight.reshape(out_nc, in_nc, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4)
        weight = weight.reshape(out_nc, 4 * in_nc, 2, 2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(blocks, weight, self.bias)


def per_tap_products(conv, x):
    """Every weight tap's products at every input pixel, from one 1×1 conv: (N, kh·kw·out, H, W) for a Conv2d, taps
    outermost; (N, out·kh·kw, H, W) for a ConvTranspose2d, channels outermost, as F.fold takes them."""
    weight = conv.weight.permute(2, 3, 0, 1) if isinstance(conv, nn.Conv2d) else conv.weight.permute(1, 2, 3, 0)
    return F.conv2d(x, weight.reshape(-1, weight.shape[-1], 1, 1))


def conv_as_shifted_tap_sums(conv, x):
    """A stride-1 conv with few outputs as a 1×1 conv (in -> taps·out channels: one GEMM that reads the input once)
    and the sums of the taps' shifted slices. The same sums."""
    (kh, kw), pad = conv.kernel_size, conv.padding
    taps = F.pad(per_tap_products(conv, x), (pad[1], pad[1], pad[0], pad[0]))
    height, width = taps.shape[-2] - kh + 1, taps.shape[-1] - kw + 1
    out_nc = conv.out_channels
    y = sum(taps[:, (i * kw + j) * out_nc:(i * kw + j + 1) * out_nc, i:i + height, j:j + width]
            for i in range(kh) for j in range(kw))
    return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)


def conv_transpose_as_folded_taps(conv, x):
    """A transposed conv with few outputs as a 1×1 conv (in -> out·taps) and F.fold (col2im), which adds each
    input pixel's taps into the output window it covers. The same sums."""
    output_size = [(n - 1) * s - 2 * p + d * (k - 1) + 1  # the transposed conv's, with no output_padding
                   for n, s, p, d, k in zip(x.shape[-2:], conv.stride, conv.padding, conv.dilation, conv.kernel_size)]
    columns = per_tap_products(conv, x).flatten(2)
    y = F.fold(columns, output_size, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)


class OutputConv2d(nn.Conv2d):
    """D's last conv (512 -> 1 logit map, 4×4, stride 1). On an H100 cuDNN ran it at 4.8 TFLOP/s alone, and it took
    0.60 + 0.49 ms of the D step and 0.32 ms forward in G's (batch 64). per_tap (on; compiled, channels_last, CUDA):
    conv_as_shifted_tap_sums. With G's last layer per tap too, the H100's compiled step at batch 64 took 18.9 ms
    against 21.5 and 23.6 ms with torch's convs, and its kernels 18.3 against 21.0 ms (bench.py --last_convs,
    2026-11-27; the two layers were not timed apart in the step)."""

    on_devices = ('cuda',)
    per_tap = True

    def forward(self, x):
        if self.per_tap and self.fits_per_tap() and compiling() and reformulates(x, self.on_devices):
            return conv_as_shifted_tap_sums(self, x)
        return super().forward(x)

    def fits_per_tap(self):
        """Whether conv_as_shifted_tap_sums computes this conv: it shifts by whole pixels (stride and dilation 1),
        makes every output from every input channel (one group) and pads with zeros by the numbers given."""
        return self.stride == self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == 'zeros' \
            and not isinstance(self.padding, str)


class OutputConvTranspose2d(nn.ConvTranspose2d):
    """G's last layer in a U-Net (128 -> 3 channels, 4×4, stride 2). On an H100 it took 0.77 ms forward and 0.74 ms
    backward of the step, 16 TFLOP/s alone (batch 64, 2026-11-27). per_tap (on; compiled, channels_last, CUDA; with
    D's last conv, above): conv_transpose_as_folded_taps."""

    on_devices = ('cuda',)
    per_tap = True

    def forward(self, x, output_size=None):
        if self.per_tap and output_size is None and self.fits_per_tap() and compiling() \
                and reformulates(x, self.on_devices):
            return conv_transpose_as_folded_taps(self, x)
        return super().forward(x, output_size)

    def fits_per_tap(self):
        """Whether conv_transpose_as_folded_taps computes this layer: its fold sizes the output with no
        output_padding, and its 1×1 conv makes every output from every input channel (one group)."""
        return self.output_padding == (0, 0) and self.groups == 1


# ----------------------------------------------------------------------------- generators

def _upsample_conv(in_nc, out_nc, upsample, bias, transpose_kernel=4, transpose_class=nn.ConvTranspose2d):
    """Layers that map (in_nc, H, W) to (out_nc, 2H, 2W).

    'transpose': ConvTranspose2d stride 2 (k4/p1 in the U-Net, k3/p1/output_padding 1 in
    the ResNet, as official). 'resize': nearest-neighbour upsampling then a 3x3 conv; every
    output pixel gets the same number of kernel taps, which avoids checkerboard artefacts.
    """
    if upsample == 'transpose':
        return [transpose_class(in_nc, out_nc, kernel_size=transpose_kernel, stride=2, padding=1,
                                output_padding=transpose_kernel % 2, bias=bias)]
    return [nn.Upsample(scale_factor=2, mode='nearest'),
            nn.Conv2d(in_nc, out_nc, kernel_size=3, stride=1, padding=1, bias=bias)]


class UnetSkipBlock(nn.Module):
    """One U-Net level: downsample, run the inner levels, upsample, then concatenate the
    block's input onto its output (the skip connection). Same layers as the official
    UnetSkipConnectionBlock.

    The outermost level returns the image (Tanh, no skip); the innermost level has no
    norm on its down path because its output is 1x1 and instance norm of a single value
    is undefined.
    """

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,
                 innermost=False, norm='instance', use_dropout=False, upsample='transpose'):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        norm_layer = get_norm_layer(norm)
        use_bias = _use_bias(norm)
        down_conv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        # Not in-place: the block input is also the skip tensor that forward() concatenates.
        down_relu = nn.LeakyReLU(0.2)
        # The inner levels return cat(skip, output), hence twice the channels, except the innermost.
        up_in_nc = inner_nc if innermost else inner_nc * 2

        if outermost:
            down = [down_conv]
            last = _upsample_conv(up_in_nc, outer_nc, upsample, bias=True, transpose_class=OutputConvTranspose2d)
            up = [nn.ReLU(True), *last, nn.Tanh()]
        elif innermost:
            down = [down_relu, down_conv]
            up = [nn.ReLU(True), *_upsample_conv(up_in_nc, outer_nc, upsample, use_bias), norm_layer(outer_nc)]
        else:
            down = [down_relu, down_conv, norm_layer(inner_nc)]
            up = [nn.ReLU(True), *_upsample_conv(up_in_nc, outer_nc, upsample, use_bias), norm_layer(outer_nc)]
            if use_dropout:
                up.append(nn.Dropout(0.5))
        inner = [submodule] if submodule is not None else []
        self.model = nn.Sequential(*down, *inner, *up)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """U-Net with num_downs stride-2 levels: the input side must be a multiple of 2**num_downs."""

    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm='instance', use_dropout=True,
                 upsample='transpose'):
        super().__init__()
        self.num_downs = num_downs
        kw = dict(norm=norm, upsample=upsample)
        # Built from the bottleneck outwards. Dropout (pix2pix's only noise source) sits in
        # the num_downs - 5 intermediate ngf*8 levels: 3 for unet_256, 2 for unet_128.
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, **kw)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout, **kw)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, **kw)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, **kw)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, **kw)
        self.model = UnetSkipBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, **kw)

    def forward(self, x):
        # Fail with a readable message instead of a torch.cat size mismatch deep inside.
        side = 2 ** self.num_downs
        if x.shape[-2] % side or x.shape[-1] % side:
            raise ValueError(f"U-Net with {self.num_downs} downsamplings needs H and W to be multiples "
                             f"of {side}, got {tuple(x.shape[-2:])}")
        return self.model(x)


class ResnetBlock(nn.Module):
    """x + conv-norm-relu-(dropout)-conv-norm(x), reflection padded (official ResnetBlock)."""

    def __init__(self, dim, norm='instance', use_dropout=True):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        use_bias = _use_bias(norm)
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=use_bias),
                  norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Johnson et al. style: 7x7 stem, 2 stride-2 downsamplings, n_blocks residual blocks,
    2 upsamplings, 7x7 output conv + Tanh. Reflection padding avoids border artefacts."""

    def __init__(self, input_nc, output_nc, ngf=64, norm='instance', use_dropout=True, n_blocks=9,
                 upsample='transpose'):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        use_bias = _use_bias(norm)
        n_downsampling = 2
        self.side_multiple = 2 ** n_downsampling
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, bias=use_bias),
                  norm_layer(ngf), nn.ReLU(True)]
        for i in range(n_downsampling):
            nc = ngf * 2 ** i
            layers += [nn.Conv2d(nc, nc * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                       norm_layer(nc * 2), nn.ReLU(True)]
        nc = ngf * 2 ** n_downsampling
        layers += [ResnetBlock(nc, norm=norm, use_dropout=use_dropout) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [*_upsample_conv(nc, nc // 2, upsample, use_bias, transpose_kernel=3),
                       norm_layer(nc // 2), nn.ReLU(True)]
            nc //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        # Another side came out rounded up to the next multiple (30 -> 32), a size mismatch only further on; a
        # side of one multiple fails in the 1×1 bottleneck (see generator_size_problem).
        multiple = self.side_multiple
        if x.shape[-2] % multiple or x.shape[-1] % multiple or min(x.shape[-2:]) < 2 * multiple:
            raise ValueError(f'a ResNet generator needs H and W to be multiples of {multiple}, at least '
                             f'{2 * multiple}, got {tuple(x.shape[-2:])}')
        return self.model(x)


def define_G(netG, input_nc=1, output_nc=3, ngf=64, norm='instance', use_dropout=True,
             init_type='normal', init_gain=0.02, upsample='transpose'):
    """Build and initialise a generator by its --netG name."""
    _check_choice('netG', netG, GENERATORS)
    _check_choice('upsample', upsample, UPSAMPLES)
    if netG.startswith('unet'):
        num_downs = {'unet_256': 8, 'unet_128': 7}[netG]
        net = UnetGenerator(input_nc, output_nc, num_downs, ngf, norm, use_dropout, upsample)
    else:
        n_blocks = {'resnet_9blocks': 9, 'resnet_6blocks': 6}[netG]
        net = ResnetGenerator(input_nc, output_nc, ngf, norm, use_dropout, n_blocks, upsample)
    return init_weights(net, init_type, init_gain)


def define_G_from_config(cfg):
    """define_G from a run's saved options (config.json / a checkpoint's 'config'), the way train.py built it."""
    return define_G(cfg['netG'], cfg['input_nc'], cfg['output_nc'], cfg['ngf'], cfg['norm'], not cfg['no_dropout'],
                    cfg['init_type'], cfg['init_gain'], cfg['upsample'])


def generator_side_multiple(netG):
    """Input H and W must be multiples of this: 2**downsamplings (4 for the ResNets)."""
    _check_choice('netG', netG, GENERATORS)
    return {'unet_256': 256, 'unet_128': 128}.get(netG, 4)


def generator_size_problem(netG, side):
    """Why netG cannot take side×side inputs, or None. Besides the multiple, a side of 4 fails for the
    ResNets: their 1×1 bottleneck can be neither reflection padded nor instance normalised."""
    multiple = generator_side_multiple(netG)
    if side % multiple or side < max(multiple, 8):
        return f'--netG {netG} needs a multiple of {multiple}' + (', at least 8' if multiple < 8 else '')
    return None


# ----------------------------------------------------------------------------- discriminators

class NLayerDiscriminator(nn.Module):
    """PatchGAN: n_layers stride-2 4x4 convs, one stride-1 conv, then a 1-channel conv.
    Each output logit judges one receptive-field patch (70x70 for n_layers=3)."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm='instance'):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        use_bias = _use_bias(norm)
        # No norm on the first layer (official): it would wash out the raw input statistics.
        layers = [InputConv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev_mult, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last feature layer keeps resolution
            layers += [nn.Conv2d(ndf * prev_mult, ndf * mult, kernel_size=4, stride=stride, padding=1,
                                 bias=use_bias),
                       norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(OutputConv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))  # raw logits
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN: judges every pixel independently (only colour statistics)."""

    def __init__(self, input_nc, ndf=64, norm='instance'):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        use_bias = _use_bias(norm)
        self.model = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, bias=use_bias), norm_layer(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, bias=use_bias))

    def forward(self, x):
        return self.model(x)


def define_D(netD, input_nc=4, ndf=64, n_layers_D=3, norm='instance', init_type='normal', init_gain=0.02):
    """Build and initialise a conditional discriminator by its --netD name.

    Its input is cat(mask, image) on channels, so input_nc = G's input_nc + output_nc.
    It returns a map of raw logits (no sigmoid: GANLoss works on logits).
    """
    _check_choice('netD', netD, DISCRIMINATORS)
    if netD == 'pixel':
        return init_weights(PixelDiscriminator(input_nc, ndf, norm), init_type, init_gain)
    n_layers = 3 if netD == 'basic' else n_layers_D
    if n_layers < 1:
        raise ValueError(f"--n_layers_D must be >= 1, got {n_layers}")
    return init_weights(NLayerDiscriminator(input_nc, ndf, n_layers, norm), init_type, init_gain)


# ----------------------------------------------------------------------------- losses

class GANLoss(nn.Module):
    """Adversarial loss on discriminator logits.

    vanilla: BCE with logits (original GAN); lsgan: MSE to the labels (least squares GAN);
    hinge: D minimises mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), G minimises -mean(D(fake)).
    """

    def __init__(self, gan_mode='vanilla'):
        super().__init__()
        _check_choice('gan_mode', gan_mode, GAN_MODES)
        self.gan_mode = gan_mode
        self.loss = {'vanilla': nn.BCEWithLogitsLoss(), 'lsgan': nn.MSELoss(), 'hinge': None}[gan_mode]

    def forward(self, prediction, target_is_real, for_discriminator=True):
        """prediction: D's logits. target_is_real: whether they should be judged real.
        for_discriminator only matters for hinge (G's hinge loss has no margin)."""
        if self.gan_mode == 'hinge':
            # At least fp32: under bf16 autocast the mean would stay bf16 (BCE and MSE are autocast to fp32 already).
            prediction = prediction.to(torch.promote_types(prediction.dtype, torch.float32))
            if not for_discriminator:
                return -prediction.mean()
            margin = 1.0 - prediction if target_is_real else 1.0 + prediction
            return F.relu(margin).mean()
        # Filled on prediction's device and dtype: no host tensor, no sync.
        label = 1.0 if target_is_real else 0.0
        return self.loss(prediction, torch.full_like(prediction, label))


def _vgg19_cache_path():
    """Where torchvision would have cached its ImageNet VGG19 weights (never downloads)."""
    url = torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(url))


def _load_vgg_features_state(weights_path, allow_random):
    """Return a features-only VGG19 state_dict ('N.weight' keys), or None for random weights."""
    if weights_path is None:
        if allow_random:
            return None
        weights_path = _vgg19_cache_path()
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(
                "VGG loss needs pretrained VGG19 weights: pass --vgg_weights PATH (a torchvision vgg19 "
                f"state_dict, e.g. {os.path.basename(weights_path)}) or put that file in "
                f"{os.path.dirname(weights_path)}; random weights are never used silently")
    elif not os.path.isfile(weights_path):
        raise FileNotFoundError(f"VGG19 weights file not found: {weights_path}")
    state = torch.load(weights_path, map_location='cpu', weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{weights_path} does not hold a state_dict (got {type(state).__name__})")
    # Accept a whole torchvision vgg19 state_dict ('features.N.weight', 'classifier...') as
    # well as one saved from vgg19().features ('N.weight').
    if any(k.startswith('features.') for k in state):
        state = {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
    return state


class VGGLoss(nn.Module):
    """Perceptual loss: weighted L1 between frozen VGG19 features of fake and real images.

    Images come in [-1, 1] and are mapped to ImageNet-normalised RGB inside. Only the
    layers up to the deepest requested one are built.
    """

    def __init__(self, weights_path=None, layers=VGG_LAYERS, layer_weights=VGG_LAYER_WEIGHTS,
                 allow_random=False):
        super().__init__()
        layers, layer_weights = tuple(int(i) for i in layers), tuple(float(w) for w in layer_weights)
        if not layers or len(layers) != len(layer_weights):
            raise ValueError(f"need one weight per VGG layer, got layers={layers} weights={layer_weights}")
        if list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] > 36:
            raise ValueError(f"VGG layers must be increasing indices in 0..36 of vgg19().features, got {layers}")
        self.layers, self.layer_weights = layers, layer_weights
        self.features = self._build_features(depth=layers[-1] + 1)

        state = _load_vgg_features_state(weights_path, allow_random)
        if state is None:
            for m in self.features.modules():
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()
        else:
            self._load(state, weights_path)
        self.features.requires_grad_(False)
        # Constants, not weights: kept out of state_dict but moved by .to(device).
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @staticmethod
    def _build_features(depth):
        # Built on the meta device: the 120M-parameter classifier we drop is never allocated
        # or initialised (saves ~2 s and ~0.5 GB); only the kept layers get real storage.
        with torch.device('meta'):
            vgg = torchvision.models.vgg19(weights=None)
        features = vgg.features[:depth].to_empty(device='cpu')
        for m in features.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False  # a captured activation must not be overwritten by the next layer
        return features

    def _load(self, state, weights_path):
        depth = len(self.features)
        try:
            needed = {k: v for k, v in state.items() if int(k.split('.')[0]) < depth}
            self.features.load_state_dict(needed, strict=True)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{weights_path} is not a torchvision vgg19 state_dict: {e}") from e

    def train(self, mode=True):
        # The feature extractor is frozen: stay in eval mode whatever the parent model does.
        return super().train(False)

    def _normalize(self, x):
        # [-1, 1] -> [0, 1] -> ImageNet statistics; a 1-channel image broadcasts to RGB here.
        return ((x + 1) / 2 - self.mean) / self.std

    def _extract(self, x):
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                feats.append(x)
        return feats

    def forward(self, fake, real):
        fake_feats = self._extract(self._normalize(fake))
        with torch.no_grad():
            real_feats = self._extract(self._normalize(real))
        return sum(w * F.l1_loss(f, r) for w, f, r in zip(self.layer_weights, fake_feats, real_feats))
