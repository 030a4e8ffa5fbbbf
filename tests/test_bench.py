"""bench.py's table (its numbers are reported, never asserted): which rows run and what they are compared with."""
import mmap
import os
import re
from types import SimpleNamespace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

import bench
import networks
from dataset import EpochPlan
from utils import UserError

QUICK = ['--only', 'train', '--device', 'cpu', '--batches', '1', '--iters', '1', '--warmup', '0']


def table_rows(text):
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith('| 1 |')]


def rows_below_header(table):
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in table.splitlines()
            if line.startswith('|')][2:]


def test_chosen_rows_keep_the_changes_above_them_and_compare_with_the_plain_row(capsys):
    bench.main(QUICK + ['--rows', '1', '3'])
    rows = table_rows(capsys.readouterr().out)
    assert [row[1] for row in rows] == [bench.STEPS[0][0], bench.STEPS[2][0]]
    assert rows[0][4] == '1.00×' and re.fullmatch(r'\d+\.\d\d×', rows[1][4])


def test_a_rows_rate_tflops_and_mfu_follow_from_its_time_and_the_flop_count(capsys):
    bench.main(QUICK + ['--rows', '1', '--peak_tflops', '0.25', '--batches', '2'])
    out = capsys.readouterr().out
    gflop = float(re.search(r'one training step = ([\d.]+) GFLOP per image', out)[1])
    row, = rows_below_header(out)
    assert row[0] == '2'
    ms, images_per_s, tflops, mfu = (float(row[column].rstrip(' %')) for column in (2, 3, 7, 8))
    # within what the table's rounding leaves (a CPU row: under one image/s, a few hundredths of a TFLOP/s)
    assert images_per_s == pytest.approx(2 * 1000 / ms, abs=0.006)  # batch 2
    assert tflops == pytest.approx(gflop * images_per_s / 1000, abs=0.001)
    assert mfu == pytest.approx(100 * tflops / 0.25, abs=0.25)


def test_the_flop_count_is_what_the_layer_shapes_give_by_hand():
    """MFU's numerator. A 4×4 convolution is 2·Cin·Cout·16 FLOPs per output pixel (per input pixel when transposed);
    its backward pass is a forward's worth for the input gradient and another for the weight gradient. Per image and
    step: G's forward and both its gradients, less the mask's (3G − G1); D on fake and real with both gradients, less
    its first layer's input gradients (fake is detached, real is data: 6D − 2 D1); in G's step D's forward and input
    gradient, its weights frozen as in the official repo (2D). Issue 5's ~93 GFLOP also counted D's weight gradients
    in G's step: 3G + 9D = 93.0."""
    def flops(layers):  # (in, out, side of the output, or of the input for a transposed conv)
        return sum(2 * c_in * c_out * 16 * side ** 2 for c_in, c_out, side in layers)
    down = [(1, 64, 128), (64, 128, 64), (128, 256, 32), (256, 512, 16)] + [(512, 512, 8 >> i) for i in range(4)]
    up = [(512, 512, 1)] + [(1024, 512, 2 ** i) for i in range(1, 4)] + [(1024, 256, 16), (512, 128, 32),
                                                                         (256, 64, 64), (128, 3, 128)]
    G, G1 = flops(down + up), flops(down[:1])
    D = flops([(4, 64, 128), (64, 128, 64), (128, 256, 32), (256, 512, 31), (512, 1, 30)])
    D1 = flops([(4, 64, 128)])
    cpu = torch.device('cpu')
    masks, images = bench.uint8_split([1], cpu, data_in_ram=False)
    counted = bench.flops_per_image(bench.make_trainer(cpu, {}), masks, images, EpochPlan(len(masks), 286, 256, 0, 0),
                                    256)
    assert counted == 3 * G - G1 + 8 * D - 2 * D1  # 86.4 GFLOP


def test_without_the_plain_row_there_is_no_speed_up_to_show(capsys):
    bench.main(QUICK + ['--rows', '2'])
    rows = table_rows(capsys.readouterr().out)
    assert [(row[1], row[4]) for row in rows] == [(bench.STEPS[1][0], 'n/a')]


def test_profiles_follow_the_table_without_breaking_it(capsys):
    bench.main(QUICK + ['--rows', '1', '2', '--profile'])
    out = capsys.readouterr().out
    table = out[:out.index('### Profile')]
    assert [row[1] for row in table_rows(table)] == [bench.STEPS[0][0], bench.STEPS[1][0]]
    profiles = out[out.index('### Profile'):]
    for label, _ in bench.STEPS[:2]:
        assert f'### Profile, batch 1, {label}: 1 step, ' in profiles
    assert profiles.count('Self CPU time total') == 2
    assert profiles.count('Copies (aten::copy_) per step by what made them, CPU time') == 2
    assert profiles.count('Convolutions per step by shape, CPU time') == 2


def test_the_data_table_times_each_layout_with_and_without_turns(capsys):
    bench.main(['--only', 'data', '--device', 'cpu', '--batches', '1', '2', '--iters', '1', '--warmup', '0'])
    rows = rows_below_header(capsys.readouterr().out)
    assert [row[:3] for row in rows] == [[batch, layout, rotate] for batch in ('1', '2')
                                         for layout in ('NCHW', 'channels_last') for rotate in ('off', 'on')]
    assert all(float(row[3]) > 0 for row in rows)


def test_the_convs_table_times_each_layer_and_reformulates_the_few_channel_ones_to_the_same_sums(monkeypatch,
                                                                                                 capsys):
    G = networks.define_G('unet_256', ngf=8).to(memory_format=torch.channels_last)  # small filters: a quick test
    D = networks.define_D('basic', ndf=8).to(memory_format=torch.channels_last)
    monkeypatch.setattr(bench, 'make_trainer', lambda device, overrides: SimpleNamespace(G=G, D=D))
    bench.main(['--only', 'convs', '--device', 'cpu', '--batches', '1', '--iters', '1', '--warmup', '0'])
    rows = rows_below_header(capsys.readouterr().out)
    layers = [row[1] for row in rows if row[4] == 'torch']
    assert len(layers) == 16 + 5 and len(set(layers)) == 21
    assert (layers[0], layers[15], layers[16]) == ('G 1: Conv2d 1→8', 'G 16: OutputConvTranspose2d 16→3',
                                                   'D 1: InputConv2d 4→8')
    assert rows[0][2:4] == ['1×1×256×256', '8×1×4×4'] and rows[-1][2] == '2×64×31×31'  # D judges 2 × the batch
    g_last, d_last = 'G 16: OutputConvTranspose2d 16→3', 'D 5: OutputConv2d 64→1'
    assert {(row[1], row[4]) for row in rows if row[4] != 'torch'} == {
        ('G 1: Conv2d 1→8', 'inputs zero-padded to 8k'), (g_last, 'outputs zero-padded to 8k'),
        ('D 1: InputConv2d 4→8', 'inputs zero-padded to 8k'),
        ('D 1: InputConv2d 4→8', 'over 2×2 blocks (space to depth)'),
        (d_last, 'outputs zero-padded to 8k'), (g_last, 'per-tap 1×1 conv, then fold'),
        (d_last, 'per-tap 1×1 conv, then shifted sums')}
    assert all(float(row[7]) < 1e-5 for row in rows)  # the same sums: fp32 on the CPU


def test_d_first_conv_and_last_convs_choose_the_paths_of_those_layers(monkeypatch):
    for layer, switch in ((networks.InputConv2d, 'space_to_depth'), (networks.OutputConv2d, 'per_tap'),
                          (networks.OutputConvTranspose2d, 'per_tap')):
        monkeypatch.setattr(layer, switch, getattr(layer, switch))  # monkeypatch restores each afterwards
    quick_data = ['--only', 'data', '--device', 'cpu', '--batches', '1', '--iters', '1', '--warmup', '0']
    bench.main(quick_data + ['--d_first_conv', 'pad', '--last_convs', 'torch'])
    assert networks.InputConv2d.space_to_depth is False
    assert networks.OutputConv2d.per_tap is False and networks.OutputConvTranspose2d.per_tap is False
    bench.main(quick_data)
    assert networks.InputConv2d.space_to_depth is True
    assert networks.OutputConv2d.per_tap is True and networks.OutputConvTranspose2d.per_tap is True


def test_private_pools_sums_the_cuda_graph_pools_segments_and_leaves_out_the_shared_pool(monkeypatch):
    segments = [{'segment_pool_id': (0, 0), 'total_size': 100}, {'segment_pool_id': (1, 2), 'total_size': 20},
                {'segment_pool_id': (0, 0), 'total_size': 1}, {'segment_pool_id': (1, 2), 'total_size': 30},
                {'segment_pool_id': (3, 0), 'total_size': 4}]
    monkeypatch.setattr(torch.cuda, 'memory_snapshot', lambda: segments)
    assert bench.private_pools(torch.device('cuda', 0)) == {(1, 2): 50, (3, 0): 4}
    assert bench.private_pools(torch.device('cpu')) == {}


def test_the_copies_table_says_per_step_what_made_each_copy_and_what_it_converts():
    x = torch.randn(2, 3, 8, 8)

    def steps(n):
        for _ in range(n):
            with record_function('cast twice'):
                x.to(torch.bfloat16), x.to(torch.bfloat16)
            with record_function('relayout'), record_function('inner'):  # named with its parent
                x.contiguous(memory_format=torch.channels_last)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        steps(3)
    rows = {row[2]: row for row in rows_below_header(bench.copies_table(prof.events(), 3, gpu=False))}
    copy = next(event for event in prof.events() if event.name == 'aten::copy_')
    recorded = getattr(copy, 'structured_input_strides', None) is not None  # torch 2.8's profiler records neither
    assert rows['cast twice'][0] == '2' and rows['cast twice'][3:] == [
        '2×3×8×8', 'bf16 NCHW ← fp32 NCHW' if recorded else 'not recorded by this torch']
    assert rows['inner < relayout'][0] == '1'
    assert rows['inner < relayout'][3:] == [
        '2×3×8×8', 'fp32 NHWC ← fp32 NCHW' if recorded else 'not recorded by this torch']


def test_the_convolutions_table_says_per_step_which_layer_shapes_take_the_time():
    conv = torch.nn.Conv2d(3, 4, 3)
    small, large = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 64, 64)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):
            conv(small).sum().backward()
            conv(large), conv(large)
    rows = rows_below_header(bench.convolutions_table(prof.events(), 2, gpu=False))
    assert [float(row[1]) for row in rows] == sorted((float(row[1]) for row in rows), reverse=True)  # most time first
    assert sorted((row[0], *row[2:]) for row in rows) == [('1', 'backward', '2×3×8×8', '4×3×3×3'),
                                                          ('1', 'forward', '2×3×8×8', '4×3×3×3'),
                                                          ('2', 'forward', '2×3×64×64', '4×3×3×3')]
    first = bench.convolutions_table(prof.events(), 2, gpu=False, rows=1)
    assert rows_below_header(first) == rows[:1] and first.endswith('\n(2 smaller groups left out)')
    assert 'left out' not in bench.convolutions_table(prof.events(), 2, gpu=False, rows=3)  # all 3 shown


def test_a_torch_that_records_no_dtypes_or_strides_gets_the_copies_table_without_conversions():
    copy = SimpleNamespace(name='aten::copy_', input_shapes=[[2, 3], [2, 3], []], cpu_parent=None, cpu_time_total=5.0)
    rows = rows_below_header(bench.copies_table([copy, copy], 2, gpu=False))
    assert rows == [['1', '0.005', 'Python code (no op above it)', '2×3', 'not recorded by this torch']]


@pytest.mark.parametrize('shape, strides, layout', [
    ((2, 3, 4, 5), (60, 20, 5, 1), 'NCHW'), ((2, 3, 4, 5), (60, 1, 15, 3), 'NHWC'),
    ((2, 3, 4, 5), (60, 20, 1, 4), 'strided'),  # H and W swapped
    ((2, 1, 4, 5), (20, 1, 5, 1), 'NCHW'),  # one channel: both at once, NCHW first
    ((2, 1, 4, 5), (20, 7, 5, 1), 'NCHW'),  # the stride of a size-1 axis does not count
    ((2, 3), (3, 1), ''), ((2, 3, 4, 5), None, '')])
def test_layouts_are_named_from_strides(shape, strides, layout):
    assert bench.layout_of(shape, strides) == layout


def test_the_generation_line_gives_the_rate_of_the_masks_pixels_in_the_time_taken(capsys):
    bench.main(['--only', 'generate', '--device', 'cpu', '--mask_size', '300', '--gen_batch', '3'])
    out = capsys.readouterr().out
    assert '300×300 mask, 256² windows, overlap 0.5, batch 3, fp32, cpu' in out
    seconds, rate = map(float, re.search(r'^one call: ([\d.]+) s, ([\d.]+) megapixels/s, peak memory \d+ MB '
                                         r'\(process RSS\)$', out, re.M).groups())
    assert rate == pytest.approx(300 ** 2 / seconds / 1e6, rel=0.05, abs=0.006)  # both rounded to hundredths


def test_an_overlap_outside_0_1_is_refused():
    with pytest.raises(UserError, match=re.escape('--gen_overlap -0.5: must be a fraction in [0, 1)')):
        bench.main(['--only', 'generate', '--gen_overlap', '-0.5'])


@pytest.mark.parametrize('option, message', [
    (['--threads', '-3'], '--threads must be >= 1, got -3'),  # a RuntimeError traceback
    (['--threads', '0'], '--threads must be >= 1, got 0'),  # silently ignored
    (['--iters', '0'], '--iters must be >= 1, got 0'),
    (['--warmup', '-1'], '--warmup must be >= 0, got -1'),
    (['--peak_tflops', 'nan'], '--peak_tflops must be a positive number, got nan'),  # printed "nan %"
])
def test_bad_options_are_one_line_errors(option, message):
    with pytest.raises(UserError, match=re.escape(message)):
        bench.main(QUICK + option)


@pytest.mark.parametrize('rows', [['0'], ['1', str(len(bench.STEPS) + 1)]])
def test_rows_outside_the_table_are_refused(rows):
    with pytest.raises(UserError, match=re.escape(f'--rows must be between 1 and {len(bench.STEPS)}')):
        bench.main(QUICK + ['--rows', *rows])


def test_the_cuda_graphs_row_asked_for_on_the_cpu_is_refused():
    row = next(i for i, (label, _) in enumerate(bench.STEPS, 1) if 'CUDA graphs' in label)
    with pytest.raises(UserError, match=re.escape(f'--rows {row} (CUDA graphs) needs a CUDA device')):
        bench.main(QUICK + ['--rows', '1', str(row)])


@pytest.mark.parametrize('name, peak', [('NVIDIA H100 80GB HBM3', 989.4), ('NVIDIA H200', 989.4),
                                        ('NVIDIA H100 PCIe', 756.0), ('NVIDIA H100 NVL', 835.0),
                                        ('NVIDIA H200 NVL', 835.0), ('NVIDIA H100 80GB HBM3 MIG 1g.10gb', None),
                                        ('NVIDIA A100-SXM4-80GB', None), ('CPU', None)])
def test_mfu_uses_the_cards_own_peak(name, peak):
    assert bench.card_peak_tflops(name) == peak


@pytest.mark.skipif(not os.access('/proc/self/clear_refs', os.W_OK), reason='Linux resets the peak RSS there')
def test_a_cpu_rows_peak_memory_is_its_own_not_the_highest_of_the_rows_before_it():
    """ru_maxrss never goes down: every CPU row reported the peak of all rows before it too (1936 → 2953 MB)."""
    cpu = torch.device('cpu')
    # 300 MB, touched, then freed. Mapped from the OS and unmapped, not a tensor: malloc can serve a big block from a
    # hole in its heap whose pages stay resident after the free, and then the peak had nothing to forget
    earlier_row = mmap.mmap(-1, 300 * 2 ** 20)
    for offset in range(0, len(earlier_row), mmap.PAGESIZE):
        earlier_row[offset] = 1
    earlier_row.close()
    before = bench.peak_memory_mb(cpu)
    bench.reset_peak_memory(cpu)
    assert bench.peak_memory_mb(cpu) < before - 250
