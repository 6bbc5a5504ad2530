"""Speed and peak memory of mmctx's blocks against the upstream blocks.

Compares, with the same weights and in one run:

* mmctx ``NonLocalBlock``            vs mmcv ``NonLocal2d``            (embedded Gaussian)
* mmctx ``DisentangledNonLocalBlock`` vs mmseg ``DisentangledNonLocal2d`` (mmseg recipe)
* mmctx ``GlobalContextBlock``       vs mmcv ``ContextBlock``           (ratio 1/4)
* mmctx ``LESABlock`` (memory-efficient) vs its explicit path (the official
  computation): the 2-D relative form (``lesa``, batch 1) and the flattened-index
  ImageNet form (``lesa-cls``, 14×14, batch 32 as the ImageNet recipe's per-GPU batch)
* the low-rank family (``a2``, ``ema``, ``glore``, ``latentgnn``, ``cgnl``, ``ham``; the
  registry defaults) against mmctx's ``NonLocalBlock`` at 64×128 and 128×256, and EMA /
  Hamburger against mmseg's ``EMAModule`` (with EMAHead's convs around it) / ``Hamburger``;
  a second table prints the log-log slopes of time and memory over the sizes
* the rest of the survey at 64×128 and 128×256: ``CrissCrossBlock`` vs mmcv
  ``CrissCrossAttention`` (``cc``, one pass), ``DualAttentionBlock(cam=False)`` vs
  mmseg's ``PAM`` (``pam``), ``InterlacedSparseBlock`` vs mmseg's ``ISAHead`` without its
  input conv and classifier (``isa``)

for inference (``torch.inference_mode``) and forward+backward, over a sweep of
feature sizes, C=512 (the segmentation heads' width), batch 1. Every measurement
runs in a fresh process: peak memory is the rise of the resident set (VmHWM reset
before the call) over the process's resident set before it. The run also measures
the machine's sgemm GFLOP/s and the GFLOP/s of the attention core (one
``scaled_dot_product_attention`` call at the largest size), and prints ratios
mmctx / upstream. Results: ``<out>/benchmark.md``, ``.json`` and a log-log ``.png``.

    python tools/benchmark_blocks.py                 # full sweep (~10 min on 2 cores)
    python tools/benchmark_blocks.py --quick         # small sizes only (~1 min)
"""
import os.path as _osp
import sys as _sys

_sys.path.insert(0, _osp.dirname(_osp.abspath(__file__)))
import _quiet  # noqa: E402  first: hides the known upstream deprecation warnings

import argparse
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import time

#: the low-rank family, each against mmctx's NL at the same size (``lowrank-nl``) and,
#: where one exists, its upstream implementation (mmseg EMAModule / Hamburger)
LOW_RANK = {'a2': 'DoubleAttentionBlock', 'ema': 'EMABlock', 'glore': 'GloReBlock',
            'latentgnn': 'LatentGNNBlock', 'cgnl': 'CGNLBlock', 'ham': 'HamburgerBlock'}
LOW_RANK_UPSTREAM = {'ema': 'mmseg EMAModule (+ its head convs)', 'ham': 'mmseg Hamburger'}
LOW_RANK_SIZES = ('64x128', '128x256')
#: measured once beside them: mmctx's NL, and a linear-time reference (1×1 conv C→C + BN +
#: ReLU + residual add) whose slope shows what the machine's caches do to a linear op
LOW_RANK_REFS = {'lowrank-nl': 'NonLocalBlock (reference)',
                 'lowrank-conv': '1×1 conv + BN + ReLU + add (linear reference)'}
#: the rest of the survey, each against its upstream implementation with the same weights
SURVEY = {'cc': 'CC vs mmcv CrissCrossAttention (1 pass)',
          'pam': 'DANet PAM vs mmseg PAM', 'isa': 'ISA vs mmseg ISAHead (its ISA part)'}
SURVEY_SIZES = ('64x128', '128x256')
PAIRS = ('nl', 'dnl', 'gc', 'lesa', 'lesa-cls') + tuple(LOW_RANK) + tuple(SURVEY)
SIZES = ('32x64', '64x128', '96x192', '128x256')
TRAIN_SIZES = ('32x64', '48x96', '64x128')
#: LESA: ImageNet's 14×14 and stage 3 of a 1024² / 1333×800 detection input
LESA_SIZES = ('14x14', '50x84', '64x64')
LESA_CHANNELS = 256  # 8 heads
#: LESA's classification form: ImageNet's stage-3 size, the recipe's 32 images per GPU
LESA_CLS_SIZE, LESA_CLS_BATCH = (14, 14), 32


class _Explicit:
    """A block's explicit path (the official computation, every map kept)."""

    def __init__(self, block):
        self.block = block

    def __call__(self, x):
        return self.block.forward_with_attention(x)[0]

    def train(self, mode=True):
        self.block.train(mode)
        return self


# ---------------------------------------------------------------- one worker
def _build(pair: str, impl: str, channels: int, size=None):
    import torch

    from mmctx.models.blocks import (DisentangledNonLocalBlock, GlobalContextBlock,
                                     NonLocalBlock)
    from mmctx.models.blocks.convert import convert_block_state_dict
    torch.manual_seed(0)
    if pair == 'lesa':  # memory-efficient vs explicit (the official computation)
        from mmctx.models.blocks import LESABlock
        block = LESABlock(channels, pe_size=(64, 64))
        return block if impl == 'mmctx' else _Explicit(block)
    if pair in LOW_RANK or pair in LOW_RANK_REFS:
        return _build_low_rank(pair, impl, channels)
    if pair in SURVEY:
        return _build_survey(pair, impl, channels)
    if pair == 'lesa-cls':  # tied to one size: the tables are made for it
        from mmctx.models.blocks import LESABlock
        block = LESABlock(channels, pe_type='classification', pe_size=size)
        return block if impl == 'mmctx' else _Explicit(block)
    if pair == 'nl':
        from mmcv.cnn import NonLocal2d
        up = NonLocal2d(channels, norm_cfg=dict(type='BN'))
        ours, kind = NonLocalBlock(channels, norm_cfg=dict(type='BN')), 'mmcv_nonlocal'
    elif pair == 'dnl':
        from mmseg.models.decode_heads.dnl_head import DisentangledNonLocal2d
        up = DisentangledNonLocal2d(channels, temperature=0.05, norm_cfg=dict(type='BN'))
        ours, kind = DisentangledNonLocalBlock(channels, norm_cfg=dict(type='BN')), 'mmseg_dnl'
    else:
        from mmcv.cnn import ContextBlock
        up = ContextBlock(channels, 1. / 4)
        ours, kind = GlobalContextBlock(channels, 1. / 4), 'mmcv_context_block'
    with torch.no_grad():  # non-trivial, shared weights
        for p in up.parameters():
            p.normal_(0, 0.02)
    ours.load_state_dict(convert_block_state_dict(up.state_dict(), kind))
    return up if impl == 'upstream' else ours


def _mmseg_ema(channels: int):
    """The part of mmseg's EMAHead that EMABlock is: ema_mid_conv → EMAModule → ReLU →
    ema_out_conv → ReLU(identity + ·)."""
    import torch
    import torch.nn.functional as F
    from mmcv.cnn import ConvModule
    from mmseg.models.decode_heads.ema_head import EMAModule

    class Unit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ema_mid_conv = ConvModule(channels, channels, 1, norm_cfg=None,
                                           act_cfg=None)
            self.ema_module = EMAModule(channels, 64, 3, 0.1)
            self.ema_out_conv = ConvModule(channels, channels, 1,
                                           norm_cfg=dict(type='BN'), act_cfg=None)

        def forward(self, x):
            y = F.relu(self.ema_module(self.ema_mid_conv(x)))
            return F.relu(x + self.ema_out_conv(y))

    return Unit()


def _build_low_rank(pair: str, impl: str, channels: int):
    import torch

    from mmctx.registry import MODELS
    torch.manual_seed(0)
    if pair == 'lowrank-nl':
        from mmctx.models.blocks import NonLocalBlock
        return NonLocalBlock(channels, norm_cfg=dict(type='BN'))
    if pair == 'lowrank-conv':
        conv = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 1),
                                   torch.nn.BatchNorm2d(channels), torch.nn.ReLU())

        class Residual(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.body = conv

            def forward(self, x):
                return x + self.body(x)

        return Residual()
    if impl == 'upstream':
        if pair == 'ema':
            return _mmseg_ema(channels)
        from mmseg.models.decode_heads.ham_head import Hamburger
        return Hamburger(channels, dict(MD_R=64), norm_cfg=dict(type='GN', num_groups=32))
    extra = dict(preset='mmseg') if pair == 'ema' else {}
    return MODELS.build(dict(type=f'mmctx.{LOW_RANK[pair]}', in_channels=channels, **extra))


def _build_survey(pair: str, impl: str, channels: int):
    """CC / PAM / ISA: the upstream module and mmctx's block with its weights."""
    import torch

    torch.manual_seed(0)

    def shared(up, ours, state):
        with torch.no_grad():  # non-trivial, shared weights (γ = 1: attention counts)
            for name, p in up.named_parameters():
                p.normal_(0, 0.02) if 'gamma' not in name else p.fill_(1.)
        ours.load_state_dict(state(up.state_dict()))
        return up if impl == 'upstream' else ours

    if pair == 'cc':
        from mmcv.ops import CrissCrossAttention

        from mmctx.models.blocks import CrissCrossBlock, convert_mmcv_criss_cross
        return shared(CrissCrossAttention(channels), CrissCrossBlock(channels),
                      convert_mmcv_criss_cross)
    if pair == 'pam':
        from mmseg.models.decode_heads.da_head import PAM

        from mmctx.models.blocks import DualAttentionBlock
        from mmctx.models.blocks.dual_attention import convert_mmseg_da_state_dict
        block = DualAttentionBlock(channels, cam=False)
        return shared(PAM(channels, channels // 8), block,
                      lambda sd: convert_mmseg_da_state_dict(pam=sd))
    from mmseg.models.decode_heads.isa_head import ISAHead

    from mmctx.models.convert import convert_mmseg_segmentor
    from mmctx.registry import MODELS

    # mmseg's ISAHead without its in_conv and classifier = the ISA part that
    # InterlacedSparseBlock is (isa_channels 256, down_factor (8, 8): mmseg's config)
    head = ISAHead(isa_channels=256, in_channels=channels, channels=channels, num_classes=2,
                   norm_cfg=dict(type='BN'))
    head.in_conv = torch.nn.Identity()
    head.cls_seg = lambda x: x

    class Unit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head([x])

    block = MODELS.build(dict(type='mmctx.InterlacedSparseBlock', in_channels=channels,
                              isa_channels=256))

    def state(sd):
        sd = {'decode_head.' + k[len('head.'):]: v for k, v in sd.items()}
        sd['decode_head.in_conv.conv.weight'] = torch.zeros(1)  # identifies the head
        out, _ = convert_mmseg_segmentor(sd)
        return {k[len('decode_head.isa_block.'):]: v for k, v in out.items()
                if k.startswith('decode_head.isa_block.')}

    return shared(Unit(), block, state)


def _rss_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _reset_peak() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    import torch
    model = _build(spec['pair'], spec['impl'], spec['channels'], spec['size'])
    h, w = spec['size']
    x = torch.randn(spec.get('batch', 1), spec['channels'], h, w)
    train = spec['mode'] == 'train'
    model.train(train)

    def step():
        if train:
            xi = x.detach().requires_grad_()
            out = model(xi)
            out.backward(torch.ones_like(out))
        else:
            with torch.inference_mode():
                model(x)

    before = _rss_kib('VmRSS')
    exact = _reset_peak()
    start = time.perf_counter()
    step()  # the first call: peak memory (and warm-up)
    first = time.perf_counter() - start
    peak = _rss_kib('VmHWM') - before  # without the reset: the process's lifetime peak
    times = []  # at least `repeats` calls and 1 s of calls (small blocks are noisy)
    while first < 5 and (len(times) < spec['repeats'] or sum(times) < 1.) \
            and len(times) < 200:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times = sorted(times or [first])
    return dict(spec, time_s=times[len(times) // 2], peak_mib=max(peak, 0) / 1024,
                exact_peak=exact)


# -------------------------------------------------------------- measurements
def measure_gflops(length: int, d: int) -> dict:
    """sgemm 4096³ and the attention core (SDPA, contiguous (1, 1, L, d)) GFLOP/s."""
    import torch
    import torch.nn.functional as F

    def best(fn, n=3):
        fn()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return min(out)

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    sgemm = 2 * 4096**3 / best(lambda: a @ b) / 1e9
    q, k, v = (torch.randn(1, 1, length, d) for _ in range(3))
    with torch.inference_mode():
        t = best(lambda: F.scaled_dot_product_attention(q, k, v, scale=0.1), n=2)
    attn = 4 * length * length * d / t / 1e9
    return dict(sgemm_gflops=sgemm, attention_gflops=attn, attention_length=length,
                attention_dim=d, attention_ratio=attn / sgemm)


def run_worker(spec: dict) -> dict:
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', str(os.cpu_count()))
    proc = subprocess.run([sys.executable, __file__, '--worker', json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return dict(spec, error=(proc.stderr.strip().splitlines() or ['?'])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'sizes are HxW such as 64x128, got {text!r}')
    return h, w


# ------------------------------------------------------------------- report
def ratio(ours: dict, up: dict, key: str) -> str:
    if 'error' in ours or 'error' in up:
        return 'n/a'
    return f'{up[key] / max(ours[key], 1e-9):.2f}×'


def report(results, flops, args) -> str:
    import torch
    lines = [
        '# mmctx block benchmark', '',
        f'- machine: {platform.machine()}, {os.cpu_count()} CPU threads, '
        f'{platform.processor() or platform.platform()}; torch {torch.__version__}, '
        f'{torch.get_num_threads()} intra-op threads',
        f'- command: `python tools/benchmark_blocks.py {" ".join(args.argv)}`'.rstrip(),
        f'- C={args.channels} (LESA: C={LESA_CHANNELS}, 8 heads), batch 1 (lesa-cls: {LESA_CLS_BATCH}), fp32; time = median of at least {args.repeats} calls '
        '(and at least 1 s of calls) after one warm-up call, or the single call when it '
        'takes > 5 s; peak = rise of the resident set during the first call',
        f'- sgemm 4096³: **{flops["sgemm_gflops"]:.0f} GFLOP/s**; attention core (SDPA, '
        f'L={flops["attention_length"]}, d={flops["attention_dim"]}): '
        f'**{flops["attention_gflops"]:.0f} GFLOP/s = {100 * flops["attention_ratio"]:.0f}% '
        'of sgemm**']
    if any(p not in LOW_RANK for p in args.pairs):
        lines += ['', '| block | mode | size (positions) | mmctx time | upstream time | '
                  'speed-up | mmctx peak | upstream peak | memory ratio (upstream/mmctx) |',
                  '|---|---|---|---|---|---|---|---|---|']
    names = dict(nl='NL vs mmcv NonLocal2d', dnl='DNL vs mmseg DisentangledNonLocal2d',
                 gc='GC vs mmcv ContextBlock',
                 lesa=f'LESA (C={LESA_CHANNELS}) vs its explicit path (official computation)',
                 **{'lesa-cls': f'LESA classification form (C={LESA_CHANNELS}, batch '
                                f'{LESA_CLS_BATCH}) vs its explicit path'}, **SURVEY)
    for pair in [p for p in args.pairs if p not in LOW_RANK]:
        for mode in ('inference', 'train'):
            for size in sizes_for(pair, mode, args):
                get = lambda impl: next(r for r in results if (
                    r['pair'], r['mode'], tuple(r['size']), r['impl']) == (
                        pair, mode, size, impl))
                ours, up = get('mmctx'), get('upstream')
                fmt_t = lambda r: r.get('error') or f'{r["time_s"] * 1e3:.1f} ms'
                fmt_m = lambda r: r.get('error') or f'{r["peak_mib"]:.1f} MiB'
                lines.append(
                    f'| {names[pair]} | {"forward" if mode == "inference" else "fwd+bwd"} '
                    f'| {size[0]}×{size[1]} ({size[0] * size[1]}) | {fmt_t(ours)} | '
                    f'{fmt_t(up)} | {ratio(ours, up, "time_s")} | {fmt_m(ours)} | '
                    f'{fmt_m(up)} | {ratio(ours, up, "peak_mib")} |')
    low = [p for p in args.pairs if p in LOW_RANK]
    if low:
        lines += low_rank_report(results, low, args)
    return '\n'.join(lines) + '\n'


def _slope(a: dict, b: dict, key: str) -> str:
    """log-log slope of ``key`` between two sizes (1 = linear in positions)."""
    import math
    if 'error' in a or 'error' in b or a[key] <= 0 or b[key] <= 0:
        return 'n/a'
    la, lb = (r['size'][0] * r['size'][1] for r in (a, b))
    return f'{math.log(b[key] / a[key]) / math.log(lb / la):.2f}'


def low_rank_report(results, pairs, args) -> list:
    """The low-rank family against mmctx's NL (and mmseg's EMA / Hamburger), and the
    log-log slopes of time and peak memory over the sizes."""
    def get(pair, mode, size, impl='mmctx'):
        return next((r for r in results if (r['pair'], r['mode'], tuple(r['size']),
                                             r['impl']) == (pair, mode, size, impl)), None)

    fmt_t = lambda r: '—' if r is None else r.get('error') or f'{r["time_s"] * 1e3:.1f} ms'
    fmt_m = lambda r: '—' if r is None else r.get('error') or f'{r["peak_mib"]:.1f} MiB'
    rat = lambda a, b, k: '—' if a is None or b is None else ratio(a, b, k)
    sizes = args.low_rank_sizes
    lines = ['', f'Low-rank blocks (C={args.channels}, the registry defaults; EMA: '
             "preset 'mmseg') against mmctx's NonLocalBlock (memory-efficient) at the "
             'same size and, where one exists, the upstream implementation:', '',
             '| block | mode | size (positions) | time | NL time | NL / block | upstream '
             'time | upstream / block | peak | NL peak | upstream peak |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for pair in pairs:
        for mode in ('inference', 'train'):
            for size in sizes:
                ours, nl = get(pair, mode, size), get('lowrank-nl', mode, size)
                up = get(pair, mode, size, 'upstream')
                lines.append(
                    f'| {LOW_RANK[pair]} | {"forward" if mode == "inference" else "fwd+bwd"}'
                    f' | {size[0]}×{size[1]} ({size[0] * size[1]}) | {fmt_t(ours)} | '
                    f'{fmt_t(nl)} | {rat(ours, nl, "time_s")} | {fmt_t(up)} | '
                    f'{rat(ours, up, "time_s")} | {fmt_m(ours)} | {fmt_m(nl)} | {fmt_m(up)} |')
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        lines += ['', f'Log-log slopes from {a[0]}×{a[1]} to {b[0]}×{b[1]} (1.0 = linear in '
                  'the number of positions; NL: 2 in time for the attention part; the 1×1 '
                  'conv row is what the caches make of a linear op at these sizes):', '',
                  '| block | time slope (forward) | time slope (fwd+bwd) | memory slope '
                  '(fwd+bwd) |', '|---|---|---|---|']
        for pair in pairs + list(LOW_RANK_REFS):
            name = LOW_RANK.get(pair) or LOW_RANK_REFS[pair]
            cells = [_slope(get(pair, m, a), get(pair, m, b), 'time_s')
                     if get(pair, m, a) and get(pair, m, b) else 'n/a'
                     for m in ('inference', 'train')]
            ta, tb = get(pair, 'train', a), get(pair, 'train', b)
            cells.append(_slope(ta, tb, 'peak_mib') if ta and tb else 'n/a')
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return lines


def sizes_for(pair: str, mode: str, args):
    if pair == 'lesa':
        return args.lesa_sizes
    if pair == 'lesa-cls':
        return [LESA_CLS_SIZE]
    if pair in LOW_RANK or pair in LOW_RANK_REFS:
        return args.low_rank_sizes
    if pair in SURVEY:
        return args.survey_sizes
    return args.sizes if mode == 'inference' else args.train_sizes


def plot(results, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, mode in enumerate(('inference', 'train')):
        for row, key in enumerate(('time_s', 'peak_mib')):
            ax = axes[row][col]
            for pair in [p for p in PAIRS if p not in LOW_RANK]:
                for impl, style in (('mmctx', '-o'), ('upstream', '--x')):
                    pts = sorted((r['size'][0] * r['size'][1], r[key]) for r in results
                                 if r['pair'] == pair and r['mode'] == mode
                                 and r['impl'] == impl and 'error' not in r)
                    if pts:
                        ax.loglog(*zip(*pts), style, label=f'{pair} {impl}')
            ax.set_xlabel('positions (H×W)')
            ax.set_ylabel('time (s)' if key == 'time_s' else 'peak memory (MiB)')
            ax.set_title(f'{"forward" if mode == "inference" else "forward+backward"}')
            ax.grid(True, which='both', alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle('mmctx vs upstream blocks, C=512, batch 1, CPU fp32')
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == '--worker':
        spec = json.loads(argv[1])
        spec['size'] = tuple(spec['size'])
        print(json.dumps(worker(spec)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=parse_size, nargs='+',
                        default=[parse_size(s) for s in SIZES], help='inference sizes HxW')
    _quiet.add_flag(parser)
    parser.add_argument('--train-sizes', type=parse_size, nargs='+',
                        default=[parse_size(s) for s in TRAIN_SIZES],
                        help='forward+backward sizes HxW')
    parser.add_argument('--lesa-sizes', type=parse_size, nargs='+',
                        default=[parse_size(s) for s in LESA_SIZES],
                        help='LESA sizes HxW (inference and forward+backward, C=256)')
    parser.add_argument('--low-rank-sizes', type=parse_size, nargs='+',
                        default=[parse_size(s) for s in LOW_RANK_SIZES],
                        help='sizes HxW of the low-rank blocks (inference and fwd+bwd)')
    parser.add_argument('--survey-sizes', type=parse_size, nargs='+',
                        default=[parse_size(s) for s in SURVEY_SIZES],
                        help='sizes HxW of CC / PAM / ISA (inference and fwd+bwd)')
    parser.add_argument('--pairs', nargs='+', choices=PAIRS, default=list(PAIRS),
                        help='which comparisons to run (default: all)')
    parser.add_argument('--channels', type=int, default=512)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--quick', action='store_true', help='32x64 and 48x96 only')
    parser.add_argument('--out-dir', default='work_dirs/benchmark',
                        help='where benchmark.md/.json/.png go (default: %(default)s)')
    args = parser.parse_args(argv)
    args.argv = argv
    if args.channels < 2 or args.repeats < 1:
        parser.error('--channels must be >= 2 and --repeats >= 1')
    if args.quick:
        args.sizes = args.train_sizes = [(32, 64), (48, 96)]
        args.lesa_sizes = [(14, 14), (32, 32)]
        args.low_rank_sizes = [(32, 64), (64, 128)]
        args.survey_sizes = [(32, 64), (64, 128)]
    args.survey_sizes = [tuple(s) for s in args.survey_sizes]
    args.low_rank_sizes = [tuple(s) for s in args.low_rank_sizes]
    args.sizes = [tuple(s) for s in args.sizes]
    args.train_sizes = [tuple(s) for s in args.train_sizes]
    args.lesa_sizes = [tuple(s) for s in args.lesa_sizes]
    os.makedirs(args.out_dir, exist_ok=True)

    def impls(pair):
        if pair in LOW_RANK:
            return ('mmctx', 'upstream') if pair in LOW_RANK_UPSTREAM else ('mmctx', )
        return ('mmctx', ) if pair in LOW_RANK_REFS else ('mmctx', 'upstream')

    pairs = list(args.pairs) + (list(LOW_RANK_REFS) if any(p in LOW_RANK for p in args.pairs)
                                else [])
    specs = [dict(pair=p, impl=i, mode=m, size=s,
                  channels=LESA_CHANNELS if p.startswith('lesa') else args.channels,
                  batch=LESA_CLS_BATCH if p == 'lesa-cls' else 1,
                  repeats=args.repeats)
             for p in pairs for m in ('inference', 'train')
             for s in sizes_for(p, m, args)
             for i in impls(p)]
    results = []
    for n, spec in enumerate(specs, 1):
        r = run_worker(spec)
        results.append(r)
        what = r.get('error') or f'{r["time_s"] * 1e3:9.1f} ms  {r["peak_mib"]:8.1f} MiB'
        print(f'[{n:2d}/{len(specs)}] {spec["pair"]:10s} {spec["mode"]:9s} '
              f'{spec["size"][0]:3d}x{spec["size"][1]:<3d} {spec["impl"]:8s} {what}',
              flush=True)
    largest = max(args.sizes, key=lambda s: s[0] * s[1])
    flops = measure_gflops(largest[0] * largest[1], args.channels // 2)  # DNL: C/2
    text = report(results, flops, args)
    with open(osp.join(args.out_dir, 'benchmark.md'), 'w') as f:
        f.write(text)
    with open(osp.join(args.out_dir, 'benchmark.json'), 'w') as f:
        json.dump(dict(results=results, flops=flops), f, indent=1)
    plot(results, osp.join(args.out_dir, 'benchmark.png'))
    print('\n' + text)
    print('written: ' + ', '.join(osp.join(args.out_dir, f'benchmark.{ext}')
                                  for ext in ('md', 'json', 'png')))
    return 0


if __name__ == '__main__':
    sys.exit(main())
