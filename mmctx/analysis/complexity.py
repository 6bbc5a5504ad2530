"""Parameters and FLOPs, *including* the attention that upstream counters miss.

mmengine's ``FlopAnalyzer`` (fvcore's jit counter) has no handle for
``aten::scaled_dot_product_attention`` — the op mmctx's pairwise blocks run — so it
reports those blocks as nearly free; mmcv's hook-based counter misses every matmul
inside a block (mmcv#2342, mmdet#4689). Here the analyzer gets a handle for it.

Convention: like fvcore/mmengine, one fused multiply-add counts as one "FLOP" (so
these are MACs); ``complexity_report`` prints both MACs and FLOPs = 2 × MACs.
"""
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape

from ..models.blocks._base import ContextBlockBase


def sdpa_macs(inputs: List[Any], outputs: List[Any]) -> int:
    """``softmax(q kᵀ) v``: ``B·H·Lq·Lk·(d + dv)`` multiply-adds."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    *batch, lq, d = q
    lk, dv = k[-2], v[-1]
    n = 1
    for b in batch:
        n *= b
    return n * lq * lk * (d + dv)


#: extra jit handles: op name -> MAC counter
ATTENTION_OPS = {'aten::scaled_dot_product_attention': sdpa_macs}


def count_complexity(model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Dict:
    """Params and MACs of ``model(*inputs)``, in total and per mmctx block.

    Returns ``dict(params, macs, uncounted, blocks=[dict(name, type, params, macs,
    attention_macs)])``; ``attention_macs`` is what mmengine alone would miss.
    """
    was_training = model.training
    model.eval()
    analyzer = FlopAnalyzer(model, inputs).set_op_handle(**ATTENTION_OPS)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = analyzer.by_module()
    by_op = analyzer.by_module_and_operator()
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, ContextBlockBase):
            ops = by_op.get(name, {})
            blocks.append(dict(
                name=name, type=type(module).__name__,
                params=sum(p.numel() for p in module.parameters()),
                macs=int(by_module.get(name, 0)),
                attention_macs=int(sum(v for k, v in ops.items()
                                       if 'aten::' + k in ATTENTION_OPS or k in ATTENTION_OPS))))
    model.train(was_training)
    return dict(params=sum(p.numel() for p in model.parameters()),
                macs=int(analyzer.total()), blocks=blocks,
                uncounted=dict(analyzer.unsupported_ops()))


def complexity_report(result: Dict, title: str) -> str:
    """A markdown report of :func:`count_complexity`'s result."""
    g = 1e9
    lines = [f'# Complexity: {title}', '',
             f'- parameters: **{result["params"] / 1e6:.2f} M**',
             f'- MACs: **{result["macs"] / g:.3f} G** (= {2 * result["macs"] / g:.3f} '
             'GFLOPs counting multiply and add separately)',
             '- convention: one multiply-add = one MAC; papers that write "FLOPs" for '
             'ResNets (GCNet: ResNet-50 3.86 G) count MACs', '']
    if result['blocks']:
        lines += ['| block | type | params | GMACs | of which attention | share of model |',
                  '|---|---|---|---|---|---|']
        for b in result['blocks']:
            lines.append(f'| {b["name"]} | {b["type"]} | {b["params"] / 1e3:.1f} k | '
                         f'{b["macs"] / g:.4f} | {b["attention_macs"] / g:.4f} | '
                         f'{100 * b["macs"] / max(result["macs"], 1):.2f} % |')
    if result['uncounted']:
        ops = ', '.join(f'{k} ×{v}' for k, v in sorted(result['uncounted'].items()))
        lines += ['', f'Not counted (element-wise ops without a handle): {ops}']
    return '\n'.join(lines) + '\n'
