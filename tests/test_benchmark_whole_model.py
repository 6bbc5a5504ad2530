"""tools/benchmark_blocks.py: the arithmetic floors (the blocks' matmul FLOPs at the sgemm
rate of the run) and the whole-model section (``--whole-model``), at tiny sizes."""
import glob
import importlib.util
import json
import math
import os.path as osp
import re

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location(
        'benchmark_blocks', osp.join(ROOT, 'tools', 'benchmark_blocks.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()


def nl_flops(length: int, channels: int, train: bool = False, kept: bool = True) -> float:
    """Embedded Gaussian NL by hand: 4 1×1 convs (θ, φ, g: C→d; out: d→C) of
    2·L·C·d FLOPs each, attention QKᵀ and AV 2·L²·d each; forward+backward: the convs
    3× (grad of input and weight), the attention 3× with the map kept (4 matmuls) or
    3.5× with the fused kernel (recompute + 4 matmuls)."""
    d = channels // 2
    convs, attention = 4 * 2 * length * channels * d, 4 * length * length * d
    return 3 * convs + (3 if kept else 3.5) * attention if train else convs + attention


def test_invalid_arguments(capsys):
    with pytest.raises(SystemExit):
        bench.main(['--whole-model', '--whole-size', '16', '64'])
    assert '--whole-size must be at least 32 32' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(['--whole-model', '--whole-families', 'nonlocal'])
    assert "invalid choice: 'nonlocal'" in capsys.readouterr().err


@pytest.mark.parametrize('batch', [1, 2])
def test_nl_flop_count_is_the_formula(batch):
    from mmctx.models.blocks import NonLocalBlock
    block = NonLocalBlock(12, norm_cfg=dict(type='BN'))
    x = torch.randn(batch, 12, 5, 7)  # L = 35, d = 6
    count = bench.block_flops(block, x, train=False)
    assert count == dict(forward=batch * nl_flops(35, 12), backward=0,
                         attention=batch * 4 * 35 * 35 * 6)
    count = bench.block_flops(block, x, train=True)  # the map fits: kept
    assert count['forward'] + count['backward'] == batch * nl_flops(35, 12, train=True)
    from mmctx.models.blocks.attention import map_budget
    with map_budget(0):  # the fused kernel recomputes the map in backward
        count = bench.block_flops(block, x, train=True)
    assert count['forward'] + count['backward'] == batch * nl_flops(35, 12, True, False)


@pytest.mark.parametrize('budget', [512, 0])
def test_pam_flop_count_is_at_its_unpadded_widths(budget):
    """DANet's PAM (q/k C/8 = 2 wide, v C = 16 wide): the trace's fused call has q/k
    zero-padded to 16, but the floor counts the eager path's products, ``2·L²·(d +
    dv)`` forward; backward dP (dv), dV (dv), dQ, dK (d) and, beyond the map budget,
    the recomputed ``q kᵀ`` (d). Convs: q, k (C→d), v (C→C), 3× with backward."""
    from mmctx.models.blocks import DualAttentionBlock
    from mmctx.models.blocks.attention import map_budget
    c, d, length = 16, 2, 5 * 7
    block = DualAttentionBlock(c, cam=False)
    x = torch.randn(1, c, 5, 7)
    convs = 2 * length * c * (2 * d + c)
    attention = 2 * length * length * (d + c)
    assert bench.block_flops(block, x, train=False) == dict(
        forward=convs + attention, backward=0, attention=attention)
    with map_budget(budget):
        count = bench.block_flops(block, x, train=True)
    back = 2 * length * length * (2 * c + 2 * d + (0 if budget else d))
    assert count == dict(forward=convs + attention, backward=2 * convs + back,
                         attention=attention)


def test_backward_counts_the_gradient_path_only():
    """A conv whose input and weight need gradients: 3×; a matmul under no_grad: 1×; a
    conv on a detached input: 2× (its weight's gradient); a frozen conv: 2× (input)."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Conv2d(4, 4, 1, bias=False)
                                      for _ in range(3))
            self.c.weight.requires_grad_(False)

        def forward(self, x):
            y = self.a(x)
            with torch.no_grad():
                gram = torch.bmm(y.flatten(2), y.flatten(2).transpose(1, 2))  # (1, 4, 4)
            z = self.b(y.detach() * gram.mean())
            return self.c(y) + z

    x = torch.randn(1, 4, 3, 5)
    conv, gram = 2 * 15 * 4 * 4, 2 * 4 * 15 * 4
    count = bench.block_flops(Net(), x, train=True)
    assert count['forward'] == 3 * conv + gram
    assert count['backward'] == 2 * conv + conv + conv


def test_whole_model_table_names_a_config_per_family():
    """Every family's configs exist, and every configs/ folder with an R-50-D8
    Cityscapes 512×1024 config has a family in the table."""
    mim = osp.join(osp.dirname(importlib.util.find_spec('mmseg').origin), '.mim', 'configs')
    assert osp.isfile(osp.join(mim, bench.WHOLE_FCN[len('mmseg::'):]))
    folders = set()
    for family in bench.WHOLE_MODEL:
        paths = bench.whole_configs(family)
        assert osp.isfile(paths['mmctx']), paths['mmctx']
        folders.add(osp.basename(osp.dirname(paths['mmctx'])))
        if 'mmseg' in paths:
            assert osp.isfile(osp.join(mim, paths['mmseg'][len('mmseg::'):])), paths
    found = {osp.basename(osp.dirname(p)) for p in glob.glob(
        osp.join(ROOT, 'configs', '*', '*_r50-d8_*_cityscapes-512x1024.py'))}
    assert found and found <= folders, found - folders
    assert {'nl', 'dnl', 'gc', 'lesa', 'ema', 'cc'} <= set(bench.WHOLE_MODEL)


def _cells(text: str, start: str) -> list:
    rows = [line for line in text.splitlines() if line.startswith(start)]
    return [[c.strip() for c in row.strip('|').split('|')] for row in rows]


def _number(cell: str) -> float:
    return float(re.match(r'[-+]?[0-9.e+-]+', cell).group(0))


def _follows(ratio: str, num: float, num_step: float, den: str) -> bool:
    """``ratio`` (2 decimals) is ``num`` (printed to ``num_step``) over ``den`` (4
    significant digits), to rounding."""
    r, d = _number(ratio), _number(den)
    d_err = 0.5 * 10 ** (math.floor(math.log10(abs(d))) - 3)
    ends = [n / m for n in (num - num_step / 2, num + num_step / 2)
            for m in (d - d_err, d + d_err)]
    return min(ends) - 0.005 <= r <= max(ends) + 0.005


def test_report_floors_and_whole_model_rows(tmp_path, monkeypatch, capsys):
    """One run: ``--pairs nl`` at 16×32 (C=64) and ``--whole-model`` at 64×128 for NL.
    The floors are the hand formula at the run's sgemm rate (fixed here), each ratio is
    its printed time over its printed floor, the whole-model rows are there."""
    sgemm = 2.0  # GFLOP/s: the sgemm measurement (~10 s single-threaded) replaced
    monkeypatch.setattr(bench, 'measure_gflops', lambda length, d: dict(
        sgemm_gflops=sgemm, attention_gflops=1.0, attention_length=length,
        attention_dim=d, attention_ratio=1.0 / sgemm))
    out = tmp_path / 'bench'
    assert bench.main(['--pairs', 'nl', '--sizes', '16x32', '--train-sizes', '16x32',
                       '--channels', '64', '--repeats', '1', '--whole-model',
                       '--whole-size', '64', '128', '--whole-families', 'nl',
                       '--out-dir', str(out)]) == 0
    text = (out / 'benchmark.md').read_text()
    assert text in capsys.readouterr().out
    data = json.loads((out / 'benchmark.json').read_text())

    # the block table: two new columns; floor = the formula / sgemm; ratio = time / floor
    header = _cells(text, '| block |')[0]
    assert header[-2:] == ['floor s', 'time / floor'] and 'speed-up' in header
    rows = _cells(text, '| NL vs mmcv NonLocal2d |')
    assert [r[1] for r in rows] == ['forward', 'fwd+bwd']
    for row, train in zip(rows, (False, True)):
        floor = nl_flops(16 * 32, 64, train) / (sgemm * 1e9)
        assert _number(row[-2]) == pytest.approx(floor, rel=1e-3)
        assert _follows(row[-1], _number(row[3]) / 1e3, 1e-4, row[-2]), row
    counts = {r['mode']: r['flop_count'] for r in data['results'] if r['impl'] == 'mmctx'}
    assert counts['inference']['forward'] == nl_flops(16 * 32, 64)
    assert 'floor s = the mmctx block' in text and '3.5×' in text

    # the whole-model table: FCN, mmctx NL, mmseg NL; added = time − FCN's time
    assert '## Whole-model inference, 64×128' in text
    header = _cells(text, '| family |')[0]
    assert header[-3:] == ['block GFLOP', 'floor s', 'added / floor']
    rows = {(r[0], r[1].split()[0]): r for r in _cells(text, '| fcn |') + _cells(
        text, '| nl |')}
    assert set(rows) == {('fcn', 'mmseg'), ('nl', 'mmctx'), ('nl', 'mmseg')}, rows
    fcn = _number(rows['fcn', 'mmseg'][3])
    floor = nl_flops(8 * 16, 512) / (sgemm * 1e9)  # the head's 512 channels at 64×128/8
    for key in (('nl', 'mmctx'), ('nl', 'mmseg')):
        row = rows[key]
        assert row[2] == '512×8×16', row  # the block's input
        added = _number(row[4])
        assert added == pytest.approx(_number(row[3]) - fcn, abs=1.5e-3)
        assert _number(row[-2]) == pytest.approx(floor, rel=1e-3)
        assert _follows(row[-1], added, 1e-3, row[-2]), row
    assert 'NonLocalBlock' in rows['nl', 'mmctx'][1] and 'NLHead' in rows['nl', 'mmseg'][1]
    assert [w['impl'] for w in data['whole']] == ['fcn', 'mmctx', 'mmseg']
    assert all('error' not in w and w['peak_mib'] > 0 for w in data['whole'])


def test_compiled_column(tmp_path, monkeypatch, capsys):
    """``--compiled``: the mmctx block under torch.compile (a real inductor compile at
    32×64, C=32): its time in the table, eager / compiled = the two printed times."""
    monkeypatch.setattr(bench, 'measure_gflops', lambda length, d: dict(
        sgemm_gflops=2.0, attention_gflops=1.0, attention_length=length,
        attention_dim=d, attention_ratio=0.5))
    out = tmp_path / 'bench'
    assert bench.main(['--pairs', 'gc', '--sizes', '32x64', '--train-sizes', '32x64',
                       '--channels', '32', '--repeats', '1', '--compiled',
                       '--out-dir', str(out)]) == 0
    text = (out / 'benchmark.md').read_text()
    header = _cells(text, '| block |')[0]
    assert header[-2:] == ['compiled time', 'eager / compiled']
    rows = _cells(text, '| GC vs mmcv ContextBlock |')
    assert [r[1] for r in rows] == ['forward', 'fwd+bwd']
    for row in rows:
        eager, compiled = _number(row[3]), _number(row[-2])  # ms, printed to 0.1
        assert compiled > 0, row
        ends = [(eager + a) / max(compiled + b, 1e-9) for a in (-0.05, 0.05)
                for b in (-0.05, 0.05)]
        assert min(ends) - 0.005 <= _number(row[-1]) <= max(ends) + 0.005, row
    data = json.loads((out / 'benchmark.json').read_text())
    compiled = [r for r in data['results'] if r['impl'] == 'compiled']
    assert len(compiled) == 2 and all(r['compile_s'] > 0 and 'error' not in r
                                      for r in compiled)
    assert 'compiled time = the mmctx block under `torch.compile`' in text


def test_lesa_whole_model_floor_is_its_eager_work():
    """The LESA head's floor counts what its eager path computes (the unary 3×3 grouped
    + 1×1, the qkv 1×1, ``q·k`` and ``Σ a v`` per head, the per-offset relative logits,
    the gate's 1×1s), not the fused form a trace would take (H + W more dimensions)."""
    spec = dict(kind='whole', size=(64, 128), repeats=1, family='lesa', impl='mmctx',
                config=bench.whole_configs('lesa')['mmctx'])
    r = bench.whole_worker(spec)
    assert r['blocks'] == ['LESABlock'] and r['block_inputs'] == [[(1, 512, 8, 16)]]
    c, g, h, w = 512, 8, 8, 16
    length, d, dv = h * w, 32, 64  # 2C qkv channels = heads × (2d + dv), dv = C / heads
    macs = (length * c * (c // g) * 9 + length * c * c  # unary: grouped 3×3, 1×1
            + length * c * 2 * c  # qkv
            + g * length * length * (d + dv)  # attention
            + g * length * (2 * h - 1 + 2 * w - 1) * d  # per-offset relative logits
            + length * 3 * c * c)  # gate
    assert r['block_flops'] == 2 * macs
    assert 'flop_error' not in r and r['peak_mib'] > 0


@pytest.mark.parametrize('pe_type', ['detection_qr', 'classification'])
def test_lesa_block_floor_counts_the_eager_chunks(pe_type):
    """The block benchmark's LESA floor: the eager path's products, forward (what the
    chunks compute) and backward (two products per forward one, plus what is
    recomputed: ``q kᵀ`` by the 2-D form's hand-written backward, the whole chunks
    (attention and relative terms) by the classification form's checkpoints)."""
    from mmctx.models.blocks import LESABlock
    c, g, h, w = 32, 4, 5, 6
    block = LESABlock(c, num_heads=g, pe_type=pe_type, pe_size=(h, w))
    length, d, dv = h * w, c // g // 2, c // g
    attention = g * length * length * (d + dv)
    relative = (g * length * (2 * h - 1 + 2 * w - 1) * d if pe_type == 'detection_qr'
                else g * length * length * (2 * d + dv))
    convs = length * c * (c // g) * 9 + length * c * c + length * c * 2 * c + 3 * length * c * c
    total = convs + attention + relative
    x = torch.randn(1, c, h, w)
    assert bench.block_flops(block, x, train=False) == dict(forward=2 * total, backward=0)
    recomputed = (g * length * length * d if pe_type == 'detection_qr'
                  else attention + relative)
    assert bench.block_flops(block, x, train=True) == dict(
        forward=2 * total, backward=4 * total + 2 * recomputed)
