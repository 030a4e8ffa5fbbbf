"""Tests for networks.py's losses: GANLoss in every --gan_mode, VGGLoss (weight files, cache, refusals).

CPU only and small (32² images; a random VGG19 saved to tmp) so the file runs in seconds.
"""
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from networks import GAN_MODES, GANLoss, VGGLoss


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- GAN loss

def test_vanilla_loss():
    loss = GANLoss('vanilla')
    confident_real = torch.full((1, 1, 30, 30), 20.0)
    assert loss(confident_real, True) < 1e-6
    assert loss(confident_real, False) > 10
    logits = torch.randn(2, 1, 5, 5)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), torch.zeros_like(logits))
    assert torch.allclose(loss(logits, False), expected, atol=1e-5)


def test_lsgan_loss():
    loss = GANLoss('lsgan')
    ones, zeros = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    assert loss(ones, True) == 0 and loss(ones, False) == 1
    assert loss(zeros, False) == 0 and loss(zeros, True) == 1
    # for_discriminator is irrelevant outside hinge
    assert loss(ones, False, for_discriminator=False) == 1


def test_hinge_loss():
    loss = GANLoss('hinge')
    pred = torch.tensor([2.0, 0.5, -3.0])
    assert torch.isclose(loss(pred, True), torch.tensor((0 + 0.5 + 4) / 3))
    assert torch.isclose(loss(pred, False), torch.tensor((3 + 1.5 + 0) / 3))
    assert torch.isclose(loss(pred, True, for_discriminator=False), -pred.mean())
    assert torch.isclose(loss(pred, False, for_discriminator=False), -pred.mean())


@pytest.mark.parametrize('gan_mode', GAN_MODES)
@pytest.mark.parametrize('target_is_real', [True, False])
def test_gan_loss_gradients_flow(gan_mode, target_is_real):
    # Logits between the lsgan labels and inside the hinge margins, so every mode has a
    # gradient whose sign is known; double checks the target keeps the prediction's dtype.
    pred = (torch.rand(2, 1, 6, 6, dtype=torch.double) * 0.8 + 0.1).requires_grad_(True)
    out = GANLoss(gan_mode)(pred, target_is_real)
    assert out.dim() == 0
    out.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    # Minimising the loss moves logits towards the target: gradient sign is right.
    assert (pred.grad.sum() < 0) == target_is_real


@pytest.mark.parametrize('gan_mode', GAN_MODES)
def test_gan_losses_are_fp32_under_bf16_autocast(gan_mode):
    pred = torch.randn(2, 1, 6, 6).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for target_is_real, for_discriminator in ((True, True), (False, True), (True, False)):
            assert GANLoss(gan_mode)(pred, target_is_real, for_discriminator).dtype == torch.float32


def test_unknown_gan_mode_raises():
    with pytest.raises(ValueError, match="'wgangp'"):
        GANLoss('wgangp')


# ----------------------------------------------------------------------------- VGG loss

@pytest.fixture(scope='module')
def random_vgg():
    return VGGLoss(allow_random=True)


@pytest.fixture(scope='module')
def vgg_files(tmp_path_factory):
    """A random torchvision vgg19 saved in both accepted key layouts."""
    torch.manual_seed(1)
    vgg = torchvision.models.vgg19(weights=None).eval()
    d = tmp_path_factory.mktemp('vgg')
    full, feats = str(d / 'full.pth'), str(d / 'features.pth')
    torch.save(vgg.state_dict(), full)
    torch.save(vgg.features.state_dict(), feats)
    return vgg, full, feats


def images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_vgg_random_basic_properties(random_vgg):
    x, y = images(seed=0), images(seed=1)
    assert random_vgg(x, x) == 0
    assert random_vgg(x, y) > 0
    assert len(random_vgg.features) == 30  # truncated after relu5_1


def test_vgg_gradient_reaches_fake_only(random_vgg):
    fake = images(seed=0).requires_grad_(True)
    real = images(seed=1).requires_grad_(True)
    random_vgg(fake, real).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert real.grad is None  # real features are computed under no_grad
    assert all(not p.requires_grad and p.grad is None for p in random_vgg.parameters())


def test_vgg_stays_in_eval_mode(random_vgg):
    parent = nn.ModuleDict({'vgg': random_vgg, 'conv': nn.Conv2d(1, 1, 1)})
    parent.train()
    assert parent['conv'].training
    assert not any(m.training for m in random_vgg.modules())


def test_vgg_grayscale_is_treated_as_rgb(random_vgg):
    gray_fake, gray_real = images(1, seed=4)[:, :1], images(1, seed=5)[:, :1]
    rgb = random_vgg(gray_fake.expand(-1, 3, -1, -1), gray_real.expand(-1, 3, -1, -1))
    assert torch.allclose(random_vgg(gray_fake, gray_real), rgb)


def test_vgg_custom_layers_truncate():
    loss = VGGLoss(layers=(3, 8), layer_weights=(1.0, 0.5), allow_random=True)
    assert len(loss.features) == 9
    with pytest.raises(ValueError):
        VGGLoss(layers=(3, 8), layer_weights=(1.0,), allow_random=True)


def test_vgg_missing_weights_path(tmp_path):
    path = str(tmp_path / 'no_such_vgg19.pth')
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        VGGLoss(weights_path=path)


def reference_vgg_loss(vgg, fake, real):
    """Pix2pixHD perceptual loss computed directly on the torchvision model."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(x):
        x, out = ((x + 1) / 2 - mean) / std, []
        for i, layer in enumerate(vgg.features[:30]):
            x = layer(x)
            if i in (1, 6, 11, 20, 29):
                out.append(x.clone())  # clone: torchvision's ReLUs are in-place
        return out

    with torch.no_grad():
        weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
        return sum(w * (f - r).abs().mean() for w, f, r in zip(weights, feats(fake), feats(real)))


@pytest.mark.parametrize('layout', ['full', 'features'])
def test_vgg_loads_weights_file(vgg_files, layout):
    vgg, full, feats = vgg_files
    loss = VGGLoss(weights_path=full if layout == 'full' else feats)
    assert torch.equal(loss.features[28].weight, vgg.features[28].weight)
    x, y = images(seed=2), images(seed=3)
    assert torch.allclose(loss(x, y), reference_vgg_loss(vgg, x, y), rtol=1e-5)


def test_vgg_rejects_foreign_state_dict(tmp_path):
    path = str(tmp_path / 'resnet.pth')
    torch.save(nn.Conv2d(3, 3, 3).state_dict(), path)
    with pytest.raises(ValueError, match='vgg19'):
        VGGLoss(weights_path=path)


def test_vgg_without_weights_or_cache_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match='--vgg_weights') as e:
        VGGLoss()
    assert str(tmp_path / 'checkpoints') in str(e.value)
    assert 'vgg19-dcbb9e9d.pth' in str(e.value)


def test_vgg_uses_torchvision_cache(tmp_path, monkeypatch, vgg_files):
    vgg, _, feats = vgg_files
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    os.makedirs(tmp_path / 'checkpoints')
    os.symlink(feats, tmp_path / 'checkpoints' / 'vgg19-dcbb9e9d.pth')
    loss = VGGLoss()
    assert torch.equal(loss.features[0].weight, vgg.features[0].weight)
