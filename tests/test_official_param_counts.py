"""Parameter counts of the official pix2pix networks (ngf = ndf = 64, output_nc 3, D on input_nc + 3 channels),
verified in a review against a re-implementation of junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py (the
official code prints 54.414 M for unet_256 and 2.769 M for basic D, batch norm, 3 + 3 channels). --norm none differs
on purpose (README: this repo keeps the conv biases): its official counts are in the comments."""
import pytest
import torch

from networks import define_D, define_G


def count(net):
    return sum(p.numel() for p in net.parameters())


G_COUNTS = {  # (netG, norm): (input_nc 1, input_nc 3)
    ('unet_256', 'batch'): (54_411_907, 54_413_955),
    ('unet_256', 'instance'): (54_407_555, 54_409_603),
    ('unet_256', 'none'): (54_407_555, 54_409_603),  # official: 54_402_051, 54_404_099
    ('unet_128', 'batch'): (41_826_947, 41_828_995),
    ('unet_128', 'instance'): (41_823_619, 41_825_667),
    ('unet_128', 'none'): (41_823_619, 41_825_667),  # official: 41_819_139, 41_821_187
    ('resnet_9blocks', 'batch'): (11_377_155, 11_383_427),
    ('resnet_9blocks', 'instance'): (11_371_907, 11_378_179),
    ('resnet_9blocks', 'none'): (11_371_907, 11_378_179),  # official: 11_366_659, 11_372_931
    ('resnet_6blocks', 'batch'): (7_835_139, 7_841_411),
    ('resnet_6blocks', 'instance'): (7_831_427, 7_837_699),
    ('resnet_6blocks', 'none'): (7_831_427, 7_837_699),  # official: 7_827_715, 7_833_987
}
D_COUNTS = {  # (netD, n_layers_D, norm): (4 input channels, 6)
    ('basic', 3, 'batch'): (2_766_657, 2_768_705),
    ('basic', 3, 'instance'): (2_765_761, 2_767_809),
    ('basic', 3, 'none'): (2_765_761, 2_767_809),  # official: 2_764_865, 2_766_913
    ('n_layers', 3, 'batch'): (2_766_657, 2_768_705),
    ('n_layers', 5, 'batch'): (11_157_313, 11_159_361),
    ('n_layers', 5, 'instance'): (11_155_393, 11_157_441),
    ('n_layers', 5, 'none'): (11_155_393, 11_157_441),  # official: 11_153_473, 11_155_521
    ('pixel', 3, 'batch'): (8_896, 9_024),
    ('pixel', 3, 'instance'): (8_769, 8_897),
    ('pixel', 3, 'none'): (8_769, 8_897),  # official: 8_640, 8_768
}


@pytest.mark.parametrize('netG, norm', list(G_COUNTS))
def test_generator_parameter_counts_match_the_official(netG, norm):
    with torch.device('meta'):  # shapes only: no memory, no time
        got = tuple(count(define_G(netG, input_nc, 3, 64, norm, use_dropout=True)) for input_nc in (1, 3))
    assert got == G_COUNTS[netG, norm]


@pytest.mark.parametrize('netD, n_layers_D, norm', list(D_COUNTS))
def test_discriminator_parameter_counts_match_the_official(netD, n_layers_D, norm):
    with torch.device('meta'):
        got = tuple(count(define_D(netD, input_nc, 64, n_layers_D, norm)) for input_nc in (4, 6))
    assert got == D_COUNTS[netD, n_layers_D, norm]


def test_batch_norm_buffers_and_no_instance_norm_buffers():
    """Official: BatchNorm2d(affine, running stats); InstanceNorm2d(affine=False, track_running_stats=False)."""
    with torch.device('meta'):
        assert len(list(define_G('unet_256', 3, 3, 64, 'batch').buffers())) == 39  # 13 BatchNorm2d x 3
        assert len(list(define_G('unet_256', 3, 3, 64, 'instance').buffers())) == 0
