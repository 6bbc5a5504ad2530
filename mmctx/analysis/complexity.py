"""Parameters and FLOPs, *including* the attention that upstream counters miss.

mmengine's ``FlopAnalyzer`` (fvcore's jit counter) has no handle for
``aten::scaled_dot_product_attention`` — the op mmctx's pairwise blocks run — so it
reports those blocks as nearly free; mmcv's hook-based counter misses every matmul
inside a block (mmcv#2342, mmdet#4689). Here the analyzer gets a handle for it.

Convention: like fvcore/mmengine, one fused multiply-add counts as one "FLOP" (so
these are MACs); ``complexity_report`` prints both MACs and FLOPs = 2 × MACs.
"""
import contextlib
import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
    attention_macs[, terms])])``; ``attention_macs`` is what mmengine alone would miss;
    ``terms`` (blocks with a ``term_macs`` method: LESA) holds each term's MACs at the
    block's input size, as the paper's computation does them.
    """
    was_training = model.training
    model.eval()
    shapes: Dict[str, Tuple[int, ...]] = {}

    def record(name):
        def hook(module, args):  # returns None: the inputs stay as they are
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    handles = [m.register_forward_pre_hook(record(name))
               for name, m in model.named_modules() if hasattr(m, 'term_macs')]
    try:
        analyzer = FlopAnalyzer(model, inputs).set_op_handle(**ATTENTION_OPS)
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_module = analyzer.by_module()
        by_op = analyzer.by_module_and_operator()
    finally:
        for h in handles:
            h.remove()
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, ContextBlockBase):
            ops = by_op.get(name, {})
            row = dict(
                name=name, type=type(module).__name__,
                params=sum(p.numel() for p in module.parameters()),
                macs=int(by_module.get(name, 0)),
                attention_macs=int(sum(v for k, v in ops.items()
                                       if 'aten::' + k in ATTENTION_OPS or k in ATTENTION_OPS)))
            if name in shapes:  # LESA: each term, as the official computation does it
                n, _, h, w = shapes[name]
                row['terms'] = module.term_macs(n, h, w)
            blocks.append(row)
    model.train(was_training)
    return dict(params=sum(p.numel() for p in model.parameters()),
                macs=int(analyzer.total()), blocks=blocks,
                uncounted=dict(analyzer.unsupported_ops()))


#: default input (H, W) per task, as the upstream get_flops tools
DEFAULT_SHAPES = dict(segmentation=(512, 1024), detection=(800, 1333),
                      recognition=(224, 224))


def model_task(model: nn.Module) -> str:
    """``'segmentation'`` / ``'detection'`` / ``'recognition'`` for an mm model."""
    bases = []
    for module, cls, task in (('mmseg.models.segmentors', 'BaseSegmentor', 'segmentation'),
                              ('mmdet.models.detectors', 'BaseDetector', 'detection'),
                              ('mmaction.models.recognizers', 'BaseRecognizer',
                               'recognition')):
        try:
            base = getattr(__import__(module, fromlist=[cls]), cls)
        except (ImportError, AttributeError):
            continue
        bases.append(f'{module.split(".")[0]} {cls}')
        if isinstance(model, base):
            return task
    raise TypeError(
        f'cannot count a {type(model).__name__}: complexity is counted for whole '
        f'models of these kinds: {", ".join(bases)} (an mmseg segmentor, an mmdet '
        'detector or an mmaction2 recognizer config)')


def _pad(size: int, divisor: int) -> int:
    return int(math.ceil(size / divisor) * divisor) if divisor > 1 else size


def model_inputs(model: nn.Module, shape: Optional[Sequence[int]] = None,
                 clip_len: int = 32) -> Tuple[Tuple[torch.Tensor, ...], Dict, str]:
    """A random input, the keyword arguments ``forward`` needs in tensor mode, and a
    description of the input, for the model's task.

    * segmentation: ``(1, 3, H, W)``, ``forward(x)`` (tensor mode needs nothing else);
    * detection: ``(1, 3, H', W')`` padded as the data preprocessor pads
      (``pad_size_divisor``), with one ``DetDataSample`` of that shape: two-stage
      detectors need image metas in tensor mode (RPN proposals), as mmdet's
      ``get_flops.py`` passes them;
    * recognition: ``(1, 1, 3, T, H, W)`` for 3D recognizers (one clip of
      ``clip_len`` frames), ``(1, T, 3, H, W)`` for 2D ones, through the whole
      network (``stage='head'``).
    """
    task = model_task(model)
    h, w = shape if shape is not None else DEFAULT_SHAPES[task]
    if task == 'segmentation':
        return (torch.randn(1, 3, h, w), ), {}, f'1×3×{h}×{w}'
    if task == 'detection':
        from mmdet.structures import DetDataSample
        divisor = getattr(model.data_preprocessor, 'pad_size_divisor', 1) or 1
        ph, pw = _pad(h, divisor), _pad(w, divisor)
        sample = DetDataSample(metainfo=dict(
            img_shape=(h, w), ori_shape=(h, w), pad_shape=(ph, pw),
            batch_input_shape=(ph, pw), scale_factor=(1., 1.)))
        note = f'1×3×{ph}×{pw}' + (f' ({h}×{w} padded to a multiple of {divisor})'
                                   if (ph, pw) != (h, w) else '')
        return (torch.randn(1, 3, ph, pw), ), dict(data_samples=[sample],
                                                   mode='tensor'), note
    from mmaction.models.recognizers import Recognizer3D
    if isinstance(model, Recognizer3D):
        x = torch.randn(1, 1, 3, clip_len, h, w)
        note = f'1 clip of {clip_len} frames, 3×{clip_len}×{h}×{w}'
    else:
        x = torch.randn(1, clip_len, 3, h, w)
        note = f'{clip_len} segments of 3×{h}×{w}'
    return (x, ), dict(stage='head'), note


@contextlib.contextmanager
def _bound_forward(model: nn.Module, kwargs: Dict):
    """``model.forward`` with ``kwargs`` bound (the jit tracer passes tensors only)."""
    if not kwargs:
        yield
        return
    model.forward = functools.partial(type(model).forward, model, **kwargs)
    try:
        yield
    finally:
        del model.forward


def count_model_complexity(model: nn.Module, shape: Optional[Sequence[int]] = None,
                           clip_len: int = 32) -> Dict:
    """:func:`count_complexity` of a whole mmseg / mmdet / mmaction2 model on a
    random input for its task (:func:`model_inputs`); adds ``task`` and ``input``."""
    inputs, kwargs, note = model_inputs(model, shape, clip_len)
    with _bound_forward(model, kwargs):
        result = count_complexity(model, inputs)
    return dict(result, task=model_task(model), input=note)


def complexity_report(result: Dict, title: str) -> str:
    """A markdown report of :func:`count_complexity`'s result."""
    g = 1e9
    lines = [f'# Complexity: {title}', '']
    if result.get('input'):
        lines.append(f'- input ({result.get("task", "model")}): {result["input"]}')
    lines += [f'- parameters: **{result["params"] / 1e6:.2f} M**',
             f'- MACs: **{result["macs"] / g:.3f} G** (= {2 * result["macs"] / g:.3f} '
             'GFLOPs counting multiply and add separately)',
             '- convention: one multiply-add = one MAC; papers that write "FLOPs" for '
             'ResNets (GCNet: ResNet-50 3.86 G) count MACs', '']
    if result['blocks']:
        lines += ['| block | type | params | GMACs (as run) | of which attention | share of model |',
                  '|---|---|---|---|---|---|']
        for b in result['blocks']:
            lines.append(f'| {b["name"]} | {b["type"]} | {b["params"] / 1e3:.1f} k | '
                         f'{b["macs"] / g:.4f} | {b["attention_macs"] / g:.4f} | '
                         f'{100 * b["macs"] / max(result["macs"], 1):.2f} % |')
    termed = [b for b in result['blocks'] if b.get('terms')]
    if termed:
        names = []
        for b in termed:
            names += [t for t in b['terms'] if t not in names]
        lines += ['', '## Terms (LESA: as the official computation does them, GMACs)', '',
                  'unary = grouped 3×3 (+ DCN offsets) + 1×1; qkv = the 1×1 projection; '
                  'attention = q·k and Σ a·v; relative = the relative-position logits '
                  '(and Σ a·r^v for the classification form); gate = the two 1×1 convs '
                  'of the dynamic fusion. The "as run" column above counts what '
                  "mmctx's traced (fused) form runs (the 2-D relative term as H+W extra "
                  'query/key dimensions of the attention call, zero-padded heads; the '
                  'eager path runs chunks with the official arithmetic).', '',
                  '| block | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
        for b in termed:
            lines.append(f'| {b["name"]} | ' + ' | '.join(
                f'{b["terms"][t] / g:.4f}' if t in b['terms'] else '–' for t in names)
                + ' |')
    if result['uncounted']:
        ops = ', '.join(f'{k} ×{v}' for k, v in sorted(result['uncounted'].items()))
        lines += ['', f'Not counted (element-wise ops without a handle): {ops}']
    return '\n'.join(lines) + '\n'
