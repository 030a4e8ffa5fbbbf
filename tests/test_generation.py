"""generation.py's Python API without a trained model (stand-in generators whose output is known): the sliding
windows' exact blending and their mirrored border context, the seams blending hides and metrics' seam scores that
find them, the ValueErrors for what test.py would refuse, and the generators on windows without buildings (what the
README's test.py section says of them). Its agreement with test.py: tests/test_test_script.py.
"""
import numpy as np
import pytest
import torch

import generation
from conftest import SmoothNorm, ramp_mask
from generation import generate_sliding, generate_tiles, run_generator
from metrics import seam_score, seam_score_at
from networks import define_G

WINDOW = 64  # the generators' window side


class Copy(torch.nn.Module):
    """A 'generator' whose output at a pixel depends on that pixel only: blending must give it back exactly."""

    def forward(self, x):
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@pytest.mark.parametrize('height,width', [(157, 203), (37, 50), (64, 64), (65, 129)])
@pytest.mark.parametrize('overlap,batch_size', [(0.5, 1), (0.5, 7), (0.75, 100), (0.0, 3)])
def test_sliding_blend_puts_every_window_in_place(height, width, overlap, batch_size):
    rng = np.random.default_rng(height * width)
    mask = (rng.random((height, width)) < 0.5).astype(np.uint8) * 255
    out = generate_sliding(Copy(), mask, WINDOW, overlap, batch_size, torch.device('cpu'))
    assert out.shape == (height, width, 3)
    np.testing.assert_array_equal(out, np.repeat(mask[..., None], 3, 2))
    label_map = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # 3-channel input models
    np.testing.assert_array_equal(generate_sliding(Copy(), label_map, 16, overlap, batch_size,
                                                      torch.device('cpu')), label_map)


@pytest.mark.parametrize('progress', [True, False])
def test_the_sliding_progress_bar_can_be_turned_off_from_python(capsys, progress):
    mask = np.zeros((200, 200), np.uint8)  # 24² windows at overlap 0.5: 256 of them, enough for a bar
    generate_sliding(Copy(), mask, 24, 0.5, 64, torch.device('cpu'), progress=progress)
    assert ('windows' in capsys.readouterr().err) == progress


GREY_BACKGROUND = np.full((40, 40), 128, np.uint8)
GREY_BACKGROUND[10:20, 10:20] = 255


@pytest.mark.parametrize('mask, got', [
    (np.ones((40, 40), bool), 'got bool'), (np.ones((40, 40), np.float32), 'got float32'),
    (np.ones((40, 40), np.uint8), r'got values \[1\]'),  # a 0/1 mask: all background after a resize
    (np.ones((40, 40, 1), np.uint8), r'got values \[1\]'),  # H×W×1 skipped the check
    (GREY_BACKGROUND, r'got values \[128, 255\]'),  # test.py refuses this file; the API took it
])
@pytest.mark.parametrize('api', ['full', 'tiles', 'sliding'])
def test_the_python_api_refuses_a_mask_that_is_not_0_255_uint8(mask, got, api):
    """Only generate_sliding checked, and only a 2-D mask's maximum; generate_tiles turned a 0/1 mask into an empty
    one without a word."""
    cpu = torch.device('cpu')
    run = {'full': lambda: generation.generate_full(Copy(), mask, WINDOW, cpu),
           'tiles': lambda: generate_tiles(Copy(), mask, 2, WINDOW, 4, cpu),
           'sliding': lambda: generate_sliding(Copy(), mask, WINDOW, 0.5, 4, cpu)}[api]
    with pytest.raises(ValueError, match=f'^mask must be a uint8 array of 0/255 .*{got}$'):
        run()


def test_the_python_api_refuses_what_test_py_refuses():
    cpu, mask = torch.device('cpu'), np.zeros((40, 40), np.uint8)
    for call, message in (
            (lambda: generate_sliding(Copy(), mask, WINDOW, 1.0, 4, cpu), r'overlap must be a fraction in \[0, 1\)'),
            (lambda: generate_sliding(Copy(), mask, WINDOW, 0.5, 0, cpu), 'batch_size must be an int >= 1, got 0'),
            (lambda: generate_tiles(Copy(), mask, 41, WINDOW, 4, cpu), "n must be between 1 and the mask's shorter "
                                                                         'side 40, got 41'),  # a ZeroDivisionError
            (lambda: generate_sliding(Copy(), [[0, 255]], WINDOW, 0.5, 4, cpu),
             'non-empty H×W or H×W×C numpy array, got list'),
            (lambda: generate_sliding(Copy(), np.zeros((0, 0), np.uint8), WINDOW, 0.5, 4, cpu), 'non-empty'),
            (lambda: run_generator(Copy(), np.ones((1, 8, 8), np.float32), cpu), 'takes uint8 arrays .*got float32')):
        with pytest.raises(ValueError, match=message):
            call()
    one_channel = generate_sliding(Copy(), mask[..., None], WINDOW, 0.5, 4, cpu)  # H×W×1 reads as H×W
    np.testing.assert_array_equal(one_channel, generate_sliding(Copy(), mask, WINDOW, 0.5, 4, cpu))


def test_blending_hides_window_edges_that_tiles_show():
    cpu = torch.device('cpu')
    for seed in range(3):
        # 128²: the 2×2 grid lines (row/column 64) are window edges in sliding mode too (stride 32)
        mask = ramp_mask(128, 128, seed)
        tiles = seam_score(generate_tiles(SmoothNorm(), mask, 2, WINDOW, 4, cpu), 2)
        unblended = seam_score(generate_sliding(SmoothNorm(), mask, WINDOW, 0.0, 4, cpu), 2)
        sliding = seam_score(generate_sliding(SmoothNorm(), mask, WINDOW, 0.5, 4, cpu), 2)
        assert tiles > 5 and unblended > 5 and sliding < 2, (tiles, unblended, sliding)  # measured ≥ 9.5 / ≤ 1.6


@pytest.mark.parametrize('length, overlap', [(150, 0.0), (150, 0.5), (37, 0.25), (200, 0.9), (64, 0.5), (20, 0.5)])
def test_window_edges_are_where_the_set_of_windows_changes(length, overlap):
    before, _, starts = generation.sliding_plan(length, WINDOW, overlap)
    covering = [{s for s in starts if s <= y + before < s + WINDOW} for y in range(length)]
    assert generation.window_edges(length, WINDOW, overlap) == [y for y in range(1, length)
                                                                  if covering[y] != covering[y - 1]]


def test_seam_score():
    rng = np.random.default_rng(0)
    noise = rng.integers(60, 116, (64, 80, 3), dtype=np.uint8)
    assert seam_score(noise, 2) == pytest.approx(1.0, abs=0.1)
    seamed = noise.copy()
    seamed[32:] += 50  # brightness steps exactly on the 2×2 grid's lines
    seamed[:, 40:] += 50
    assert seam_score(seamed, 2) > 2
    assert seam_score(seamed, 3) == pytest.approx(1.0, abs=0.15)  # not on the 3×3 grid's lines
    ramp = np.tile(np.arange(80, dtype=np.uint8), (64, 1))  # a smooth gradient has no seam
    assert seam_score(ramp, 2) == pytest.approx(1.0)
    assert seam_score(np.zeros((10, 10), np.uint8), 2) == 1.0 and seam_score(noise, 1) is None


def test_seam_score_at_a_line_near_the_border_or_on_a_row_chunk_edge():
    """A smooth ramp has no seam wherever its lines are: near the border, where a line has fewer neighbours on one
    side and row 0 (column 0) has no pixel before it to differ from, and on seam_score_at's 256-row chunk edge."""
    ramp = (np.arange(300)[:, None] + np.arange(90)[None, :]).astype(np.uint16)
    assert seam_score_at(ramp, [3, 256], [2]) == 1.0
    assert seam_score_at(ramp, [1], []) == 1.0


def test_label_maps_reach_g_in_nchw_the_layout_of_its_weights():
    """A convolution takes its layout from its input's strides: label maps permuted from H×W×C ran G in
    channels_last beside NCHW weights (slower on the CPU: a test.py run over the facades test split, 18.0-19.1 s
    against 14.5-16.2 s)."""
    G = define_G('unet_128', input_nc=3, ngf=8)
    seen = []
    first = next(m for m in G.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    run_generator(G, np.zeros((2, 128, 128, 3), np.uint8), torch.device('cpu'))
    assert seen[0].shape == (2, 3, 128, 128) and seen[0].is_contiguous()


class Blur(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 9, 1, 4, count_include_pad=False).expand(-1, 3, -1, -1)


def test_sliding_windows_see_mirrored_context_at_the_border():
    out = generate_sliding(Blur(), np.full((100, 120), 255, np.uint8), 64, 0.5, 4, torch.device('cpu'))
    assert (out == 255).all()  # reflect padding: an all-building mask stays all building up to its edges
    seen = []

    class Spy(Copy):
        def forward(self, x):
            seen.append(x.clone())
            return super().forward(x)

    mask = (np.random.default_rng(0).random((100, 120)) < 0.5).astype(np.uint8) * 255
    generate_sliding(Spy(), mask, 64, 0.5, 4, torch.device('cpu'))
    # the first window straddles the top-left corner: beyond the border it holds the mask mirrored, not its edge
    np.testing.assert_array_equal(seen[0][0, 0].numpy() > 0, np.pad(mask, 32, mode='reflect')[:64, :64] > 0)


@pytest.mark.parametrize('length, overlap', [(100, 0.5), (150, 0.25), (37, 0.75), (64, 0.5), (300, 0.9), (90, 0.0)])
def test_sliding_windows_cover_the_border_pixels_as_often_as_interior_ones(length, overlap):
    """One overlap of padding on both sides: the first and last pixels are blended from as many windows as the
    stride puts over every pixel, not seen at one window's edge only."""
    before, after, starts = generation.sliding_plan(length, WINDOW, overlap)
    stride = max(1, round(WINDOW * (1 - overlap)))
    assert after >= 0 and starts[-1] + WINDOW == before + length + after
    coverage = [sum(start <= p < start + WINDOW for start in starts) for p in range(before, before + length)]
    assert min(coverage) >= WINDOW // stride, coverage


def write_files(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_memory_limit_of_the_processs_cgroup_or_one_above_it_bounds_the_ram_it_may_take(tmp_path, monkeypatch):
    """In a container or a SLURM job the host's free RAM can be far above the job's limit: the memory check passed and
    the kernel killed test.py mid-run. The limit is often set on a parent cgroup, with the job's own at 'max'."""
    gib = 2 ** 30
    (tmp_path / 'v2').write_text('0::/job/step\n')  # cgroup v2: limit 8 GiB on the job, 3 used, 1 of it cache
    write_files(tmp_path / 'fs' / 'job', {'memory.max': f'{8 * gib}\n', 'memory.current': f'{3 * gib}\n',
                                          'memory.stat': f'anon 1\ninactive_file {gib}\nactive_file 5\n'})
    write_files(tmp_path / 'fs' / 'job' / 'step', {'memory.max': 'max\n', 'memory.current': '7\n', 'memory.stat': ''})
    assert generation.cgroup_room_bytes(str(tmp_path / 'v2'), str(tmp_path / 'fs')) == 6 * gib
    # cgroup v1's memory controller beside v2's empty root (hybrid), unlimited: v1's "no limit" is 2**63 - 4096
    (tmp_path / 'v1').write_text('4:memory:/a\n3:cpuset:/\n0::/\n')
    write_files(tmp_path / 'fs1' / 'memory' / 'a', {'memory.limit_in_bytes': '9223372036854771712\n',
                                                    'memory.usage_in_bytes': '100\n', 'memory.stat': ''})
    assert generation.cgroup_room_bytes(str(tmp_path / 'v1'), str(tmp_path / 'fs1')) is None
    (tmp_path / 'fs1' / 'memory' / 'a' / 'memory.limit_in_bytes').write_text(f'{2 * gib}\n')
    (tmp_path / 'fs1' / 'memory' / 'a' / 'memory.stat').write_text(f'inactive_file 9\ntotal_inactive_file {gib}\n')
    assert generation.cgroup_room_bytes(str(tmp_path / 'v1'), str(tmp_path / 'fs1')) == 3 * gib - 100
    assert generation.cgroup_room_bytes(str(tmp_path / 'none'), str(tmp_path / 'fs')) is None  # not Linux
    monkeypatch.setattr(generation, 'cgroup_room_bytes', lambda: gib)
    assert generation.available_bytes(torch.device('cpu')) == min(gib, generation.host_available_bytes())


def test_a_unet_is_well_conditioned_on_windows_without_buildings():
    """README (test.py, areas without buildings): such a window is one constant value. The U-Net's zero-padded first
    convolution gives its feature maps real structure from the window's edges, so fp32 agrees with fp64 there as
    on masks with buildings. (A resnet_* keeps such maps exactly constant, and its instance norms then amplify
    rounding to the full output range; not asserted, as the rounding, and even whether there is any, differs by
    platform and kernel.)"""
    torch.manual_seed(0)
    G = define_G('unet_256', ngf=8).eval()
    G64 = define_G('unet_256', ngf=8).double().eval()
    G64.load_state_dict(G.state_dict())
    for value in (-1.0, 1.0):  # no building, all building
        x = torch.full((1, 1, 256, 256), value)
        with torch.no_grad():
            assert (G(x).double() - G64(x.double())).abs().max() < 1e-4


def test_sliding_repeats_one_windows_image_across_an_area_without_buildings():
    """README: every window of an empty area is the same input, so a deterministic G (eval mode: no dropout) gives
    each the same image, and the blend repeats it with the window stride."""
    torch.manual_seed(0)
    G = define_G('unet_128', ngf=4).eval()
    mask = np.zeros((128, 768), np.uint8)
    mask[40:80, 10:50] = 255  # one building, at the left edge
    out = generate_sliding(G, mask, 128, 0.5, 4, torch.device('cpu')).astype(int)
    inner = out[:, 256:768 - 128]  # windows here see no building
    assert np.abs(inner[:, 64:] - inner[:, :-64]).max() <= 1  # rounding of the blend
    assert np.abs(inner[:, 32:] - inner[:, :-32]).mean() > 1  # not merely flat


@pytest.mark.parametrize('netG', ['resnet_6blocks', 'resnet_9blocks'])
def test_a_resnet_gives_a_constant_window_one_flat_colour_where_its_norms_see_no_rounding(netG):
    """README (resnet_* on windows without buildings): reflection padding keeps a constant window's feature maps
    exactly constant, and InstanceNorm2d's channels_last path (var_mean: a constant map's exact mean) turns them
    into exact zeros, so the output is one flat colour. torch's NCHW kernel leaves rounding residue that the norms
    amplify into texture instead: not asserted, as the residue, and even whether there is any, differs by platform."""
    torch.manual_seed(0)
    G = define_G(netG, ngf=8).eval().to(memory_format=torch.channels_last)
    for value in (-1.0, 1.0):  # no building, all building
        x = torch.full((2, 1, 64, 64), value).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = G(x)
        assert (out.amax(dim=(2, 3)) == out.amin(dim=(2, 3))).all()
