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
mmctx / upstream. Each mmctx block row also has its arithmetic floor: the FLOPs of the
block's matmul-like ops (counted on a trace of one call by mmctx's counter; forward+
backward by the rule in ``BACKWARD_RULE``) at the sgemm rate of the same run, and
time / floor. Results: ``<out>/benchmark.md``, ``.json`` and a log-log ``.png``.

``--whole-model`` adds (or, without ``--pairs``, runs alone) a whole-model section:
whole-image Cityscapes inference (1024×2048, batch 1, ``encode_decode``) of one mmctx
R-50-D8 config per family (``WHOLE_MODEL``), mmseg's model of the same family where it
has one and mmseg's context-free FCN, each in a fresh process: time, peak memory, time
added over FCN, memory / FCN's, and the added time against the block's floor at the
decode head's feature size.

    python tools/benchmark_blocks.py                 # full sweep (~10 min on 2 cores)
    python tools/benchmark_blocks.py --quick         # small sizes only (~1 min)
    python tools/benchmark_blocks.py --whole-model   # whole models only (~50 min)
    python tools/benchmark_blocks.py --whole-model --whole-families nl dnl \
        --whole-size 512 1024                        # some families, a smaller input
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
from typing import Dict, Tuple

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
#: the whole-model section (``--whole-model``): per family, one mmctx R-50-D8 Cityscapes
#: 512×1024 config (under configs/) and mmseg's config of the same model where mmseg has
#: one (the pairs the converter tests use), each against mmseg's context-free FCN
WHOLE_FCN = 'mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py'
WHOLE_MODEL = {
    'nl': ('nonlocal/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py',
           'nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    'snl': ('snl/snl_r50-d8_4xb2-40k_cityscapes-512x1024.py', None),
    'dnl': ('dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py',
            'dnlnet/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    'gc': ('gcnet/gcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
           'gcnet/gcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    'lesa': ('lesa/lesa_r50-d8_4xb2-80k_cityscapes-512x1024.py', None),
    'ema': ('emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
            'emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'cc': ('ccnet/ccnet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
           'ccnet/ccnet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'a2': ('a2net/a2net_r50-d8_4xb2-80k_cityscapes-512x1024.py', None),
    'ann': ('ann/ann_r50-d8_4xb2-80k_cityscapes-512x1024.py',
            'ann/ann_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'apc': ('apcnet/apcnet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
            'apcnet/apcnet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'cgnl': ('cgnl/cgnl_r50-d8_4xb2-80k_cityscapes-512x1024.py', None),
    'da': ('danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
           'danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'glore': ('glore/glore_r50-d8_4xb2-80k_cityscapes-512x1024.py', None),
    'ham': ('hamnet/hamnet_r50-d8_4xb2-80k_cityscapes-512x1024.py', None),
    'isa': ('isanet/isanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
            'isanet/isanet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'latentgnn': ('latentgnn/latentgnn_r50-d8_4xb2-80k_cityscapes-512x1024.py', None),
    # mmseg's R-D8 OCRNet configs are R-101 only: the model base they share, at R-50
    'ocr': ('ocrnet/ocrnet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
            '_base_/models/ocrnet_r50-d8.py'),
    'psa': ('psanet/psanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
            'psanet/psanet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
}
WHOLE_SIZE = (1024, 2048)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def whole_configs(family: str) -> Dict[str, str]:
    """``{'mmctx': path[, 'mmseg': 'mmseg::...']}`` of a family of :data:`WHOLE_MODEL`."""
    ours, theirs = WHOLE_MODEL[family]
    out = dict(mmctx=osp.join(ROOT, 'configs', ours))
    if theirs is not None:
        out['mmseg'] = 'mmseg::' + theirs
    return out


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
    compiled = spec['impl'] == 'compiled'  # mmctx's block under torch.compile (inductor)
    model = _build(spec['pair'], 'mmctx' if compiled else spec['impl'], spec['channels'],
                   spec['size'])
    h, w = spec['size']
    x = torch.randn(spec.get('batch', 1), spec['channels'], h, w)
    train = spec['mode'] == 'train'
    model.train(train)
    run = torch.compile(model) if compiled else model

    def step():
        if train:
            xi = x.detach().requires_grad_()
            out = run(xi)
            out.backward(torch.ones_like(out))
        elif compiled:  # inference_mode tensors cannot enter a compiled graph's guards
            with torch.no_grad():
                run(x)
        else:
            with torch.inference_mode():
                model(x)

    first, peak, exact = _first_call(step)
    out = dict(spec, time_s=_median_time(step, first, spec['repeats'],
                                         at_least=2 if compiled else 0),
               peak_mib=peak, exact_peak=exact)
    if compiled:  # the first call compiled: its time and memory are the compiler's
        out.update(compile_s=first, peak_mib=None)
        return out
    if spec['impl'] == 'mmctx':  # the work of the arithmetic floor: one traced call more
        try:
            out['flop_count'] = block_flops(model, x, train)
        except Exception as e:  # keep the measurement; the report shows why
            out['flop_error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:120]
    return out


def _first_call(step) -> Tuple[float, float, bool]:
    """Time (s) and peak memory (MiB: the rise of VmHWM over the resident set before
    it) of the first call, and whether VmHWM could be reset (without the reset: the
    process's lifetime peak)."""
    before = _rss_kib('VmRSS')
    exact = _reset_peak()
    start = time.perf_counter()
    step()  # the first call: peak memory (and warm-up)
    first = time.perf_counter() - start
    return first, max(_rss_kib('VmHWM') - before, 0) / 1024, exact


def _median_time(step, first: float, repeats: int, at_least: int = 0) -> float:
    """Median time of the calls after the first: at least ``repeats`` calls and 1 s of
    calls (small blocks are noisy; at most 200) unless the first took > 5 s, and at least
    ``at_least`` calls in any case; no call: the first."""
    times = []
    while len(times) < at_least or (first < 5 and (
            len(times) < repeats or sum(times) < 1.) and len(times) < 200):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times = sorted(times or [first])
    return times[len(times) // 2]


# --------------------------------------------------------- arithmetic floor
#: the matmul-like ops of mmengine's counter -> (its handle in mmengine's jit_handles,
#: the positions of the two operands; einsum: its operand list); the fused attention
#: is counted by mmctx's handle
MATMUL_OPS = {'aten::_convolution': ('conv_flop_jit', (0, 1)),
              'aten::addmm': ('addmm_flop_jit', (1, 2)), 'aten::bmm': ('bmm_flop_jit', (0, 1)),
              'aten::matmul': ('matmul_flop_jit', (0, 1)),
              'aten::mm': ('matmul_flop_jit', (0, 1)),
              'aten::linear': ('linear_flop_jit', (0, 1)),
              'aten::einsum': ('einsum_flop_jit', None)}
SDPA_OP = 'aten::scaled_dot_product_attention'
#: what the floor's note says about forward+backward (the rule of ``matmul_flops``)
BACKWARD_RULE = (
    'fwd+bwd adds, for each matmul on the gradient path, one matmul of its size per '
    'operand that needs a gradient (a conv or matmul whose input and weight both do: '
    '3× its forward); the attention (counted at the widths of q/k and v, not '
    'zero-padded to one as a traced graph\'s fused call) recomputes QKᵀ in backward, then '
    'dP = dO·Vᵀ, dQ, dK, dV (3.5× its forward at equal widths); '
    'when the map fits the map budget (512 MiB by default: 64×128 at batch 1 and 2) '
    'mmctx keeps it instead and backward runs dV, dP, dQ, dK (3× its forward); '
    'ops off the gradient path (no_grad, detached: EMA\'s EM) count once')


def _requires_grad(value) -> bool:
    """Whether a traced value carries a gradient (non-tensors pass their tensors' on).

    Note: the tracer records ``aten::_convolution`` below autograd, so a conv's output is
    typed ``requires_grad=0`` whatever its input and weight; it is read from them.
    """
    import torch
    node = value.node()
    if node.kind() == 'aten::_convolution':
        return any(_requires_grad(v) for v in list(node.inputs())[:2])
    kind = value.type()
    if isinstance(kind, torch._C.TensorType):
        return kind.requires_grad() is not False
    return True


def _map_kept(values, grads) -> bool:
    """Whether mmctx's softmax attention keeps the map of a traced SDPA call (``q``
    ``(B, 1, Lq, d)``, ``k`` ``(B, 1, Lk, d)``) for backward: a gradient is needed and the
    map fits the process's map budget (mmctx traces the fused op in any case)."""
    from mmctx.models.blocks.attention import map_budget_bytes
    q, k = (v.type().sizes() for v in values[:2])
    if not any(grads) or q is None or k is None:
        return False
    return q[0] * q[1] * q[2] * k[2] * 4 <= map_budget_bytes()


def _unpadded_width(value) -> int:
    """The last size of an SDPA operand before mmctx's zero-padding to one width
    (traced as ``aten::pad`` → ``aten::unsqueeze``): the eager path computes
    at that width (query chunks, :class:`~mmctx.models.blocks.attention.ChunkedAttention`),
    only traced graphs run the padded products."""
    node = value.node()
    if node.kind() == 'aten::unsqueeze':
        node = list(node.inputs())[0].node()
    if node.kind() in ('aten::constant_pad_nd', 'aten::pad'):
        sizes = list(node.inputs())[0].type().sizes()
        if sizes:
            return sizes[-1]
    return value.type().sizes()[-1]


def _sdpa_flops(values, grads, kept: bool) -> Tuple[int, int]:
    """Forward and backward FLOPs of one SDPA call at its unpadded widths ``d`` (q, k),
    ``dv``: forward ``q kᵀ`` and ``· v``; backward ``dP = dy vᵀ`` (if q or k needs a
    gradient), ``dv = Pᵀ dy``, ``dq``, ``dk`` as needed, and ``q kᵀ`` recomputed unless
    the map is kept."""
    q, k = values[0].type().sizes(), values[1].type().sizes()
    pairs = 1
    for s in q[:-1]:
        pairs *= s
    pairs *= k[-2]
    d, dv = _unpadded_width(values[0]), _unpadded_width(values[2])
    backward = ((0 if kept else d) + (dv if any(grads[:2]) else 0)
                + grads[0] * d + grads[1] * d + grads[2] * dv)
    return 2 * pairs * (d + dv), 2 * pairs * backward


def _gradient_path(graph_block) -> set:
    """Ids of the values of a traced graph through which the output's gradient flows."""
    live = {v.unique() for v in graph_block.outputs()}
    for node in reversed(list(graph_block.nodes())):
        if any(o.unique() in live for o in node.outputs()):
            live.update(v.unique() for v in node.inputs() if _requires_grad(v))
    return live


def matmul_flops(model, inputs: Tuple, backward: bool = False) -> Dict[str, int]:
    """FLOPs (2 per multiply-add) of the matmul-like ops of one ``model(*inputs)``.

    The ops are those of mmctx's counter (:mod:`mmctx.analysis.complexity`: mmengine's
    ``FlopAnalyzer`` with mmctx's handle for ``scaled_dot_product_attention``), counted on
    a trace of one call (the call runs) as the model runs them: convs, ``(b)mm``,
    ``matmul``, ``linear``, ``einsum`` and the fused attention; norms and element-wise
    ops are left out. Returns ``forward``, ``attention`` (the fused-attention part of
    it) and ``backward`` (0 unless ``backward``; the rule is :data:`BACKWARD_RULE`, read
    from the trace's ``requires_grad`` flags: trace in training mode with inputs that
    require a gradient).
    """
    from mmengine.analysis import FlopAnalyzer, jit_handles

    from mmctx.analysis.complexity import ATTENTION_OPS
    totals = dict(forward=0, attention=0, backward=0)
    path = []  # the gradient path, found at the first op

    def operands(name, values):
        if name == SDPA_OP:
            return values[:3]
        if name == 'aten::einsum':
            listed = values[1].node()
            return list(listed.inputs()) if listed.kind() == 'prim::ListConstruct' else []
        return [values[i] for i in MATMUL_OPS[name][1]]

    def wrap(name, handle):
        def count(values, outputs):
            result = handle(values, outputs)  # a number, or a Counter by operator
            macs = int(sum(result.values()) if hasattr(result, 'values') else result)
            on_path = False
            if backward:
                if not path:
                    path.append(_gradient_path(outputs[0].node().owningBlock()))
                on_path = outputs[0].unique() in path[0]
            grads = ([_requires_grad(v) for v in operands(name, values)] if on_path
                     else [False] * 3)
            if name == SDPA_OP:  # at the widths the eager path runs (no zero-padding)
                flops, back = _sdpa_flops(values, grads, _map_kept(values, grads))
                totals['attention'] += flops
            else:
                flops, back = 2 * macs, 2 * macs * sum(grads)
            totals['forward'] += flops
            if on_path:
                totals['backward'] += back
            return result
        return count

    handles = {name: getattr(jit_handles, handle) for name, (handle, _) in MATMUL_OPS.items()}
    handles[SDPA_OP] = ATTENTION_OPS[SDPA_OP]
    analyzer = FlopAnalyzer(model, inputs).set_op_handle(
        **{name: wrap(name, handle) for name, handle in handles.items()})
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.total()
    return totals


def block_flops(model, x, train: bool) -> Dict[str, int]:
    """:func:`matmul_flops` of a block on ``x`` as the benchmark runs it (training mode
    and an input that needs a gradient for forward+backward, else eval and no_grad)."""
    import torch
    model.train(train)
    if hasattr(model, 'term_macs'):
        return term_flops(model, x.shape, train)
    if train:
        return matmul_flops(model, (x.detach().requires_grad_(), ), backward=True)
    with torch.no_grad():
        return matmul_flops(model, (x, ))


def term_flops(block, shape, train: bool) -> Dict[str, int]:
    """LESA's count (a block with ``term_macs``): the work of its eager path on an input
    of ``shape`` (a trace takes the fused form, ``H + W`` more dimensions per head);
    backward: 2 products per forward one (both operands need a gradient) and what the
    backward recomputes: the 2-D relative form's ``q kᵀ`` (``RelativeAttention``), the
    classification form's whole chunks (checkpointed), the fused call's ``q kᵀ`` and
    ``· v`` (no relative term)."""
    macs = block.term_macs(shape[0], *shape[2:])
    attention = macs.get('attention', 0)
    if block.pe_type == 'detection_qr':
        d = block.qk_channels
        recomputed = attention * d // (d + block.v_channels)
    elif block.pe_type == 'classification':
        recomputed = attention + macs.get('relative', 0)
    else:
        recomputed = attention
    return dict(forward=2 * sum(macs.values()),
                backward=4 * sum(macs.values()) + 2 * recomputed if train else 0)


def floor_s(count: Dict[str, int], sgemm_gflops: float) -> float:
    """The arithmetic floor: the counted FLOPs at the sgemm rate."""
    return (count['forward'] + count['backward']) / (sgemm_gflops * 1e9)


# ------------------------------------------------------------ whole models
def build_segmentor(config: str):
    """A config's segmentor in eval mode, SyncBN → BN, no pretrained weights: the
    analysis tools' builder (``tools/analysis/complexity.py``) on a two-line config that
    inherits ``config`` (a path or ``mmseg::...``) in mmseg's scope."""
    import importlib.util
    import tempfile
    spec = importlib.util.spec_from_file_location(
        '_complexity_tool', osp.join(ROOT, 'tools', 'analysis', 'complexity.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'whole_model.py')
        with open(path, 'w') as f:
            f.write(f"_base_ = [{config!r}]\ndefault_scope = 'mmseg'\n")
        model, _ = tool.build_from_config(path, {'model.backbone.init_cfg': None})
    return model.eval()


def outer_blocks(model) -> Dict[str, object]:
    """The model's mmctx context blocks, those inside another one left out."""
    from mmctx.models.blocks._base import ContextBlockBase
    found = {}
    for name, module in model.named_modules():  # parents come first
        if isinstance(module, ContextBlockBase) and not any(
                name.startswith(p + '.') for p in found):
            found[name] = module
    return found


#: blocks that a head calls through other methods than ``forward`` (DANet's head: one
#: per branch)
BLOCK_ENTRIES = {'DualAttentionBlock': ('position_attention', 'channel_attention')}


def whole_worker(spec: dict) -> dict:
    """One whole-image inference of a segmentor (``encode_decode``: backbone, decode
    head and the resize to the input; no auxiliary head): time, peak memory, and the
    matmul FLOPs of its mmctx blocks with the inputs they got."""
    import torch

    class Entry(torch.nn.Module):  # a block's entry point as a module, for the tracer
        def __init__(self, block, method):
            super().__init__()
            self.block, self.method = block, method

        def forward(self, *args):
            return getattr(self.block, self.method)(*args)

    model = build_segmentor(spec['config'])
    h, w = spec['size']
    x = torch.randn(1, 3, h, w)  # a normalised image
    metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))]
    blocks, calls = outer_blocks(model), []

    def recorder(name, method, fn):
        def call(*args):
            calls.append((name, method, [tuple(a.shape) for a in args
                                         if isinstance(a, torch.Tensor)]))
            return fn(*args)
        return call

    entries = [(name, method) for name, block in blocks.items()
               for method in BLOCK_ENTRIES.get(type(block).__name__, ('forward', ))]
    for name, method in entries:  # instance attributes over the class's methods
        setattr(blocks[name], method, recorder(name, method, getattr(blocks[name], method)))

    def step():
        with torch.inference_mode():
            model.encode_decode(x, metas)

    first, peak, exact = _first_call(step)  # the warm-up call
    for name, method in entries:
        delattr(blocks[name], method)
    time_s = _median_time(step, first, spec['repeats'], at_least=1)
    process_peak = _rss_kib('VmHWM') / 1024  # weights and all, since the warm-up call
    count, error = 0, {}  # the blocks' matmul FLOPs, each on inputs of the shapes it got
    try:
        for name, method, shapes in calls:
            block = blocks[name]
            if hasattr(block, 'term_macs'):
                count += term_flops(block, shapes[0], train=False)['forward']
                continue
            with torch.no_grad():
                count += matmul_flops(Entry(block, method),
                                      tuple(torch.randn(s) for s in shapes))['forward']
    except Exception as e:  # keep the measurement; the report shows why
        count, error = 0, dict(flop_error=f'{type(e).__name__}: {e}'.splitlines()[0][:120])
    head = model.decode_head  # a cascade (OCRNet): the last head is the context head
    head = head[-1] if isinstance(head, torch.nn.ModuleList) else head
    return dict(spec, time_s=time_s, first_s=first, peak_mib=peak, exact_peak=exact,
                process_peak_mib=process_peak, head=type(head).__name__,
                blocks=sorted({type(b).__name__ for b in blocks.values()}),
                block_inputs=[shapes for _, _, shapes in calls], block_flops=count,
                **error)


def whole_specs(args) -> list:
    """FCN first, then each family's mmctx and mmseg models."""
    common = dict(kind='whole', size=tuple(args.whole_size), repeats=args.repeats)
    specs = [dict(common, family='fcn', impl='fcn', config=WHOLE_FCN)]
    for family in args.whole_families:
        specs += [dict(common, family=family, impl=impl, config=config)
                  for impl, config in whole_configs(family).items()]
    return specs


def whole_report(rows, flops, args) -> list:
    """The whole-model table: time and peak against FCN's, and the added time against
    the family's block floor."""
    h, w = args.whole_size
    sgemm = flops['sgemm_gflops']
    fcn = next(r for r in rows if r['impl'] == 'fcn')
    ok = lambda r: r is not None and 'error' not in r
    lines = [
        '', f'## Whole-model inference, {h}×{w}', '',
        f'- input: one random normalised 1×3×{h}×{w} image, batch 1, fp32, eval mode, '
        '`torch.inference_mode`, the segmentor\'s `encode_decode` (backbone, decode head, '
        'resize to the input; no auxiliary head); no pretrained weights, SyncBN → BN; '
        'each model in a fresh process',
        f'- time = one forward after one warm-up call (the median of more calls when they '
        f'are short: at least {args.repeats} and 1 s of calls unless the warm-up call takes '
        '> 5 s); peak = rise of the resident set during the warm-up call (the weights are '
        'in the set before it; the process\'s whole peak is in the JSON)',
        '- floor s = the FLOPs of the matmul-like ops of the mmctx model\'s context '
        'block(s), traced on inputs of the shapes they got in the warm-up call (block input: '
        f'the first call\'s (C, H, W) each, H×W = {h}×{w}/8), at the sgemm rate of this '
        'run (LESA: 2 × its `term_macs`, the work of its eager path; a trace would '
        'take the fused form); an mmseg row has its family\'s mmctx floor (the same '
        'block and shapes); '
        'added / floor = '
        '(time − FCN\'s time) / floor s. The heads also differ from FCN\'s outside the '
        'block (EMA, ANN, APC, OCR, PSA: other convs and widths): that is in the added '
        'time too; a block whose floor is below the spread of the model\'s time (GC: '
        'milliseconds against seconds) has an added / floor that is noise',
        '- goal (issue #15): every family within 1.15× of its floor and at most 1.2× '
        'FCN\'s peak', '',
        '| family | model | block input | time | added over FCN | peak | peak / FCN\'s | '
        'block GFLOP | floor s | added / floor |',
        '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        ours = next((o for o in rows if o['family'] == r['family']
                     and o['impl'] == 'mmctx'), None)
        name = dict(fcn='mmseg FCN', mmctx='mmctx', mmseg='mmseg')[r['impl']]
        if ok(r):
            name += f' ({r["head"]}' + (f': {", ".join(r["blocks"])}' if r['blocks']
                                         else '') + ')'
        shapes = '—'
        if ok(ours) and ours['block_inputs']:  # the first call's inputs, (C, H, W) each
            shapes = '; '.join('×'.join(map(str, s[1:])) for s in ours['block_inputs'][0])
        if not ok(r):
            lines.append(f'| {r["family"]} | {name} | {shapes} | {r.get("error")} | | | | '
                         '| | |')
            continue
        added = r['time_s'] - fcn['time_s'] if ok(fcn) else None
        cells = [f'{r["time_s"]:.3f} s',
                 '—' if added is None or r is fcn else f'{added:+.3f} s',
                 f'{r["peak_mib"]:.0f} MiB',
                 f'{r["peak_mib"] / fcn["peak_mib"]:.2f}×' if ok(fcn) and r is not fcn
                 and fcn['peak_mib'] > 0 else '—']
        if ok(ours) and 'flop_error' in ours:
            cells += [f'not counted ({ours["flop_error"]})', '—', '—']
        elif r is fcn or not ok(ours) or not ours['block_flops']:
            cells += ['—', '—', '—']
        else:
            floor = ours['block_flops'] / (sgemm * 1e9)
            cells += [f'{ours["block_flops"] / 1e9:.4g}', f'{floor:.4g}',
                      '—' if added is None else f'{added / max(floor, 1e-12):.2f}×']
        lines.append(f'| {r["family"]} | {name} | {shapes} | ' + ' | '.join(cells) + ' |')
    return lines


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


#: below each table with floors
FLOOR_NOTE = (
    "floor s = the mmctx block's arithmetic floor: the FLOPs of its matmul-like ops "
    '(convs, (b)mm, linear, einsum, fused attention; 2 per multiply-add; counted on a trace '
    "of the block at that size, as mmctx's path runs them, by mmctx's counter; LESA: "
    "2 × its `term_macs`, the work of its eager chunks, whose backward recomputes "
    "q kᵀ (2-D relative form) or whole chunks (classification form)) at the "
    f'sgemm rate measured in this run; {BACKWARD_RULE}. time / floor = mmctx time / '
    'floor s (1.00× = matmuls at sgemm speed and nothing else).')


def fmt_floor(r) -> str:
    """``floor s | time / floor`` cells of a result (``—`` without a count)."""
    if r is not None and 'flop_error' in r:
        return f'not counted ({r["flop_error"]}) | —'
    if r is None or 'error' in r or 'floor_s' not in r:
        return '— | —'
    return f'{r["floor_s"]:.4g} | {r["time_s"] / max(r["floor_s"], 1e-12):.2f}×'


COMPILED_NOTE = (
    "compiled time = the mmctx block under `torch.compile` (inductor's CPU backend, "
    'default mode), median of the calls after the first (the first compiles; its time '
    'is in benchmark.json as compile_s); eager / compiled > 1: compiling is faster. In a '
    'compiled graph the softmax attention is the fused kernel whatever the map budget')


def fmt_compiled(eager, compiled) -> str:
    """`` compiled time | eager / compiled |`` cells."""
    if compiled is None:
        return ' — | — |'
    if 'error' in compiled:
        return f' {compiled["error"][:80]} | — |'
    return (f' {compiled["time_s"] * 1e3:.1f} ms | '
            f'{ratio(compiled, eager, "time_s") if eager else "—"} |')


def report(results, flops, args) -> str:
    import torch
    lines = [
        '# mmctx block benchmark', '',
        f'- machine: {platform.machine()}, {os.cpu_count()} CPU threads, '
        f'{platform.processor() or platform.platform()}; torch {torch.__version__}, '
        f'{torch.get_num_threads()} intra-op threads',
        f'- command: `python tools/benchmark_blocks.py {" ".join(args.argv)}`'.rstrip()]
    if args.pairs:
        lines.append(
            f'- C={args.channels} (LESA: C={LESA_CHANNELS}, 8 heads), batch 1 (lesa-cls: '
            f'{LESA_CLS_BATCH}), fp32; time = median of at least {args.repeats} calls (and '
            'at least 1 s of calls) after one warm-up call, or the single call when it '
            'takes > 5 s; peak = rise of the resident set during the first call')
    lines.append(
        f'- sgemm 4096³: **{flops["sgemm_gflops"]:.0f} GFLOP/s**; attention core (SDPA, '
        f'L={flops["attention_length"]}, d={flops["attention_dim"]}): '
        f'**{flops["attention_gflops"]:.0f} GFLOP/s = {100 * flops["attention_ratio"]:.0f}% '
        'of sgemm**')
    if args.pairs:
        lines.append('- ' + FLOOR_NOTE)
    if args.compiled:
        lines.append('- ' + COMPILED_NOTE)
    extra = ' compiled time | eager / compiled |' if args.compiled else ''
    if any(p not in LOW_RANK for p in args.pairs):
        lines += ['', '| block | mode | size (positions) | mmctx time | upstream time | '
                  'speed-up | mmctx peak | upstream peak | memory ratio (upstream/mmctx) | '
                  'floor s | time / floor |' + extra,
                  '|---|---|---|---|---|---|---|---|---|---|---|' + '---|' * (
                      2 * args.compiled)]
    names = dict(nl='NL vs mmcv NonLocal2d', dnl='DNL vs mmseg DisentangledNonLocal2d',
                 gc='GC vs mmcv ContextBlock',
                 lesa=f'LESA (C={LESA_CHANNELS}) vs its explicit path (official computation)',
                 **{'lesa-cls': f'LESA classification form (C={LESA_CHANNELS}, batch '
                                f'{LESA_CLS_BATCH}) vs its explicit path'}, **SURVEY)
    for pair in [p for p in args.pairs if p not in LOW_RANK]:
        for mode in ('inference', 'train'):
            for size in sizes_for(pair, mode, args):
                get = lambda impl: next((r for r in results if (
                    r['pair'], r['mode'], tuple(r['size']), r['impl']) == (
                        pair, mode, size, impl)), None)
                ours, up = get('mmctx'), get('upstream')
                fmt_t = lambda r: r.get('error') or f'{r["time_s"] * 1e3:.1f} ms'
                fmt_m = lambda r: r.get('error') or f'{r["peak_mib"]:.1f} MiB'
                lines.append(
                    f'| {names[pair]} | {"forward" if mode == "inference" else "fwd+bwd"} '
                    f'| {size[0]}×{size[1]} ({size[0] * size[1]}) | {fmt_t(ours)} | '
                    f'{fmt_t(up)} | {ratio(ours, up, "time_s")} | {fmt_m(ours)} | '
                    f'{fmt_m(up)} | {ratio(ours, up, "peak_mib")} | {fmt_floor(ours)} |'
                    + (fmt_compiled(ours, get('compiled')) if args.compiled else ''))
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
             'time | upstream / block | peak | NL peak | upstream peak | floor s | '
             'time / floor |' + (' compiled time | eager / compiled |' if args.compiled
                                 else ''),
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|' + '---|' * (
                 2 * args.compiled)]
    for pair in pairs:
        for mode in ('inference', 'train'):
            for size in sizes:
                ours, nl = get(pair, mode, size), get('lowrank-nl', mode, size)
                up = get(pair, mode, size, 'upstream')
                lines.append(
                    f'| {LOW_RANK[pair]} | {"forward" if mode == "inference" else "fwd+bwd"}'
                    f' | {size[0]}×{size[1]} ({size[0] * size[1]}) | {fmt_t(ours)} | '
                    f'{fmt_t(nl)} | {rat(ours, nl, "time_s")} | {fmt_t(up)} | '
                    f'{rat(ours, up, "time_s")} | {fmt_m(ours)} | {fmt_m(nl)} | {fmt_m(up)} | '
                    f'{fmt_floor(ours)} |' + (fmt_compiled(ours, get(pair, mode, size,
                                                                     'compiled'))
                                              if args.compiled else ''))
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
        print(json.dumps((whole_worker if spec.get('kind') == 'whole' else worker)(spec)))
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
    parser.add_argument('--pairs', nargs='+', choices=PAIRS, default=None,
                        help='which comparisons to run (default: all; with --whole-model: '
                        'none)')
    parser.add_argument('--whole-model', action='store_true',
                        help='add the whole-model section: one R-50-D8 Cityscapes model '
                        "per family against mmseg's FCN and mmseg's own head (with no "
                        '--pairs: that section only)')
    parser.add_argument('--whole-size', type=int, nargs=2, metavar=('H', 'W'),
                        default=list(WHOLE_SIZE),
                        help='whole-model input size (default: %(default)s)')
    parser.add_argument('--whole-families', nargs='+', choices=list(WHOLE_MODEL),
                        default=list(WHOLE_MODEL),
                        help='whole-model families (default: all)')
    parser.add_argument('--compiled', action='store_true',
                        help='add a column: the mmctx block under torch.compile (inductor; '
                        'median time after the compiling first call, and the compile time)')
    parser.add_argument('--channels', type=int, default=512)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--quick', action='store_true', help='32x64 and 48x96 only')
    parser.add_argument('--out-dir', default='work_dirs/benchmark',
                        help='where benchmark.md/.json/.png go (default: %(default)s)')
    args = parser.parse_args(argv)
    args.argv = argv
    if args.channels < 2 or args.repeats < 1:
        parser.error('--channels must be >= 2 and --repeats >= 1')
    if min(args.whole_size) < 32:
        parser.error(f'--whole-size must be at least 32 32 (R-50-D8 halves it 3 times), '
                     f'got {" ".join(map(str, args.whole_size))}')
    if args.pairs is None:
        args.pairs = [] if args.whole_model else list(PAIRS)
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
        compiled = ('compiled', ) if args.compiled and pair not in LOW_RANK_REFS else ()
        if pair in LOW_RANK:
            return ('mmctx', 'upstream')[:2 if pair in LOW_RANK_UPSTREAM else 1] + compiled
        return ('mmctx', ) if pair in LOW_RANK_REFS else ('mmctx', 'upstream') + compiled

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
        what = r.get('error') or (
            f'{r["time_s"] * 1e3:9.1f} ms  (compiled in {r["compile_s"]:.1f} s)'
            if 'compile_s' in r else f'{r["time_s"] * 1e3:9.1f} ms  {r["peak_mib"]:8.1f} MiB')
        print(f'[{n:2d}/{len(specs)}] {spec["pair"]:10s} {spec["mode"]:9s} '
              f'{spec["size"][0]:3d}x{spec["size"][1]:<3d} {spec["impl"]:8s} {what}',
              flush=True)
    whole = []
    for n, spec in enumerate(whole_specs(args) if args.whole_model else [], 1):
        r = run_worker(spec)
        whole.append(r)
        what = r.get('error') or f'{r["time_s"]:8.3f} s  {r["peak_mib"]:8.1f} MiB'
        print(f'[whole {n:2d}] {spec["family"]:9s} {spec["impl"]:5s} {what}', flush=True)
    h, w = args.whole_size
    length = (max(s[0] * s[1] for s in args.sizes) if args.pairs
              else (h // 8) * (w // 8))  # the attention core at the largest size run
    flops = measure_gflops(length, args.channels // 2)  # DNL: C/2
    for r in results:
        if 'flop_count' in r:
            r['floor_s'] = floor_s(r['flop_count'], flops['sgemm_gflops'])
    text = report(results, flops, args)
    if whole:
        text += '\n'.join(whole_report(whole, flops, args)) + '\n'
    written = [osp.join(args.out_dir, f'benchmark.{ext}') for ext in ('md', 'json')]
    with open(written[0], 'w') as f:
        f.write(text)
    with open(written[1], 'w') as f:
        json.dump(dict(results=results, flops=flops, whole=whole), f, indent=1)
    if results:
        written.append(osp.join(args.out_dir, 'benchmark.png'))
        plot(results, written[-1])
    print('\n' + text)
    print('written: ' + ', '.join(written))
    return 0


if __name__ == '__main__':
    sys.exit(main())
