"""CCNet: criss-cross attention.

* CCNet: Criss-Cross Attention for Semantic Segmentation (Huang et al., ICCV 2019 /
  TPAMI 2020) — https://arxiv.org/abs/1811.11721; official code
  ``speedinghzl/CCNet`` (``cc_attention/functions.py``, pure PyTorch), whose parameter
  names this block keeps; mmcv ``mmcv.ops.CrissCrossAttention`` (2.1, pure PyTorch)
  computes the same function.

Each position attends only to the positions that share all but one of its coordinates:
its row and column in 2-D (``H + W − 1`` keys), its row, column and tube in 3-D
(``T + H + W − 2`` keys), itself counted once. In GCNet's terms:

=================  ==========================================================
projection         ``q = query_conv(x)``, ``k = key_conv(x)`` (1×1, C→C/r, with
                   bias), ``v = value_conv(x)`` (1×1, C→C, with bias)
context modeling   one logit per key on each axis line through ``p``:
                   ``E_a[p, i] = q_pᵀ k_{p[a←i]}`` (no ``1/√d``), with ``E_a[p,
                   p_a] = −∞`` (a large negative) on every axis but the last, so
                   ``p`` itself is counted once, in the last (W) branch; **one
                   softmax** over the concatenated branches: ``A = softmax([E_1,
                   …, E_D])``
aggregation        ``o_p = Σ_a Σ_i A_a[p, i] v_{p[a←i]}``
fusion             ``y = x + γ·o``, scalar ``γ`` initialised to 0 (identity at init)
recurrence         ``recurrence`` R applies the whole step R times with the same
                   weights and γ (the RCCA module: R = 2, full-image context)
=================  ==========================================================

``p[a←i]`` is ``p`` with its coordinate on axis ``a`` replaced by ``i``.

Note:
    * The excluded diagonal is *set* to ``torch.finfo(fp32).min`` (not ``-inf`` added
      as in the official code and mmcv): it has the same softmax (exactly 0 weight),
      exports to ONNX and cannot make a NaN. Logits, softmax and aggregation run in
      fp32 with autocast disabled (fp64 inputs stay fp64); the 1×1 convolutions follow
      autocast.
    * 1-D inputs are refused: on a single axis the "criss-cross" is the whole line,
      i.e. a non-local block (use :class:`~mmctx.models.blocks.NonLocalBlock`).

Checkpoints: the official CCNet ``CrissCrossAttention`` keys (``query_conv``,
``key_conv``, ``value_conv``, ``gamma`` of shape ``(1,)``) load as they are; mmcv's
need :func:`convert_mmcv_criss_cross` (``gamma.scale`` of shape ``()`` → ``gamma``).
"""
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from ._base import ContextBlockBase, check_int, no_autocast, pointwise, traced, upcast


def _diagonal_mask(size: int, device: torch.device) -> torch.Tensor:
    return torch.eye(size, dtype=torch.bool, device=device)


def _logits_last(q: torch.Tensor, k: torch.Tensor) -> List[torch.Tensor]:
    """:func:`criss_cross_logits` of channels-last ``q``, ``k`` ``(N, *S, d)``.

    The lines along an axis are views ``(N, *others, S_a, d)`` whose channel stride is
    1, so every product is a batched matrix product of the tensors in place (no copy
    when the batch dimensions merge into one, e.g. for one image in 2-D)."""
    dim = q.dim() - 2
    neg = torch.finfo(q.dtype).min
    logits = []
    for axis in range(dim):
        d = 1 + axis  # the axis's dimension in (N, *S, d)
        e = torch.matmul(q.movedim(d, -2), k.movedim(d, -2).transpose(-1, -2))
        if axis < dim - 1:  # (N, *others, S_a query, S_a key), a fresh tensor
            e = e.masked_fill_(_diagonal_mask(e.shape[-1], e.device), neg)
        logits.append(e.movedim(-2, d))  # (N, *S, S_a)
    return logits


def _logits_2d_into(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """:func:`criss_cross_logits` of one image's channels-last ``q``, ``k`` ``(1, H, W,
    d)`` without a gradient, concatenated: ``(1, H, W, H + W)``, each axis's products
    written into their slice of one tensor (no concatenation copy)."""
    _, h, w, _ = q.shape
    logits = q.new_empty(1, h, w, h + w)
    qi, ki = q[0], k[0]  # (H, W, d)
    column = logits[0, :, :, :h]  # (H query row, W, H key row)
    torch.bmm(qi.transpose(0, 1), ki.transpose(0, 1).transpose(1, 2),
              out=column.transpose(0, 1))
    column.diagonal(dim1=0, dim2=2).fill_(torch.finfo(q.dtype).min)  # p itself: once
    torch.bmm(qi, ki.transpose(1, 2), out=logits[0, :, :, h:])
    return logits


def _aggregate_last(attn: List[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """:func:`criss_cross_aggregate` of channels-last ``v`` ``(N, *S, C)`` →
    ``(N, *S, C)``, contiguous (the last axis's product is already in that layout;
    the others are added into it)."""
    out = None
    for axis in reversed(range(len(attn))):
        d = 1 + axis
        o = torch.matmul(attn[axis].movedim(d, -2), v.movedim(d, -2)).movedim(-2, d)
        out = o if out is None else out.add_(o)
    return out


def criss_cross_logits(q: torch.Tensor, k: torch.Tensor) -> List[torch.Tensor]:
    """The per-axis logits ``E_a`` ``(N, *S, S_a)``, the diagonal masked on every axis
    but the last. ``q``, ``k``: ``(N, d, *S)``, in the dtype the logits should have."""
    return _logits_last(q.movedim(1, -1), k.movedim(1, -1))


def criss_cross_aggregate(attn: List[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """``o_p = Σ_a Σ_i A_a[p, i] v_{p[a←i]}``: ``attn[a]`` ``(N, *S, S_a)``, ``v``
    ``(N, C, *S)`` → ``(N, C, *S)``."""
    return _aggregate_last(attn, v.movedim(1, -1)).movedim(-1, 1)


def criss_cross_dense(attn: List[torch.Tensor]) -> torch.Tensor:
    """The sparse criss-cross weights written into a dense ``(N, L, L)`` map (rows:
    query positions, columns: key positions, both flattened row-major)."""
    n, spatial = attn[0].shape[0], tuple(attn[0].shape[1:-1])
    length = 1
    for s in spatial:
        length *= s
    device = attn[0].device
    grid = torch.arange(length, device=device).reshape(spatial)
    dense = attn[0].new_zeros(n, length, length)
    for axis, a in enumerate(attn):
        size = spatial[axis]
        lines = grid.movedim(axis, -1).unsqueeze(-2)  # (*others, 1, S_a key)
        lines = lines.expand(*lines.shape[:-2], size, size).movedim(-2, axis)  # (*S, S_a)
        index = lines.reshape(1, length, size).expand(n, -1, -1)
        dense.scatter_add_(2, index, a.reshape(n, length, size))
    return dense


@MODELS.register_module()
class CrissCrossBlock(ContextBlockBase):
    """Criss-cross attention (CCNet's CCA; RCCA with ``recurrence=2``).

    Args:
        in_channels: input channels C.
        reduction: query/key width is ``C // reduction`` (the official and mmcv C/8);
            must leave at least one channel.
        recurrence: how many times the step is applied with the same weights.
            1 is one CCA module (mmcv's ``CrissCrossAttention``); the RCCA head and
            mmseg's ``CCHead`` use 2 (each pass has its own residual ``+ x``, as
            the official loop ``for i in range(R): out = cca(out)``).
        dim: spatial rank of the input, 2 ``(N, C, H, W)`` or 3 ``(N, C, T, H, W)``.

    Shape:
        ``(N, C, *S)`` → ``(N, C, *S)``.
    """

    _abbr_ = 'cc_block'

    def __init__(self, in_channels: int, reduction: int = 8, recurrence: int = 1,
                 dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        if dim == 1:
            raise ValueError(
                'CrissCrossBlock needs dim=2 or 3: on one axis the criss-cross is the '
                'whole line, i.e. full attention; use NonLocalBlock(dim=1), got dim=1')
        self.reduction = check_int('reduction', reduction)
        self.inter_channels = in_channels // reduction
        if self.inter_channels < 1:
            raise ValueError(f'reduction={reduction} leaves 0 query/key channels for '
                             f'in_channels={in_channels}; use reduction <= {in_channels}')
        self.recurrence = check_int('recurrence', recurrence)
        self.query_conv = pointwise(dim, in_channels, self.inter_channels)
        self.key_conv = pointwise(dim, in_channels, self.inter_channels)
        self.value_conv = pointwise(dim, in_channels, in_channels)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the official code and mmcv: PyTorch's default conv init, ``γ = 0``."""
        for conv in (self.query_conv, self.key_conv, self.value_conv):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    def _pass(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """One pass ``x + γ·o`` on ``x`` ``(N, C, *S)`` → the output in ``x``'s layout
        and the weights ``A_a`` ``(N, *S, S_a)`` (fp32 or fp64; they sum to 1 over all
        branches).

        The three 1×1 convolutions run as one product with their weights stacked on the
        channels-last view of ``x`` (``(N, *S, C) × (C, 2C/r + C)``): q, k, v come out
        channels-last, the layout in which every line's product reads them in place;
        ``o`` is made channels-last and added to ``x`` as a transposed view (one pass
        that writes the output in ``x``'s layout: no copy of ``x`` or ``o``)."""
        convs = (self.query_conv, self.key_conv, self.value_conv)
        weight = torch.cat([c.weight.flatten(1) for c in convs])
        bias = torch.cat([c.bias for c in convs])
        q, k, v = F.linear(x.movedim(1, -1), weight, bias).split(
            [self.inter_channels, self.inter_channels, self.in_channels], dim=-1)
        with no_autocast(x):
            q, k = upcast(q), upcast(k)
            sizes = list(q.shape[1:-1])
            if (len(sizes) == 2 and q.shape[0] == 1 and not traced()
                    and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))):
                # no gradient: the logits written into one buffer (no concatenation)
                # and the softmax in place
                logits = _logits_2d_into(q, k)
                torch.ops.aten._softmax.out(logits, -1, False, out=logits)
            else:
                logits = torch.cat(_logits_last(q, k), dim=-1).softmax(dim=-1)
            attn = list(logits.split(sizes, dim=-1))
            out = _aggregate_last(attn, upcast(v).to(attn[0].dtype)).movedim(-1, 1)
        if out.dtype == x.dtype:
            return torch.addcmul(x, out, self.gamma), attn  # x + γ·o in one pass
        return (self.gamma * out).to(x.dtype) + x, attn

    def _run(self, x: torch.Tensor, passes: int,
             keep_weights: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``passes`` passes on ``x`` ``(N, C, *S)``; the last pass's weights if
        ``keep_weights``. In eager mode images go one at a time (their lines' batch
        dimensions then merge and no operand is copied), each made contiguous (a
        channels_last input is copied once: the output is contiguous); traced graphs
        keep the batch."""
        if traced():  # one graph for any batch size
            for _ in range(passes):
                x, weights = self._pass(x)
            return x, weights if keep_weights else []
        outs, weights = [], []
        for y in x.split(1):
            y = y.contiguous()  # the output's layout (NCHW) whatever the input's
            for _ in range(passes):
                y, attn = self._pass(y)
            outs.append(y)
            if keep_weights:
                weights.append(attn)
        if keep_weights:
            weights = [torch.cat(a) for a in zip(*weights)]
        return outs[0] if len(outs) == 1 else torch.cat(outs), weights

    def step(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """One pass ``x + γ·o`` (``(N, C, *S)``) and its weights ``A_a`` ``(N, *S,
        S_a)``."""
        return self._run(x, 1, keep_weights=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Memory ``O(L·ΣS_a)``: no ``L×L`` map is formed."""
        self.check_input(x)
        return self._run(x, self.recurrence, keep_weights=False)[0]

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict]:
        """The output and ``{'pairwise': (N, L, L)}``: the criss-cross weights written
        into a dense map, zero off each position's row/column (tube).

        With ``recurrence > 1`` the map is the **last** pass's, the one applied to the
        previous pass's output ``x_{R−1}``: ``out = x_{R−1} + γ·(M v(x_{R−1}))``. (The
        composed R-hop map ``M_R ⋯ M_1`` is not what the block computes, since every
        pass adds its input and applies ``value_conv``.)
        """
        self.check_input(x)
        x, attn = self._run(x, self.recurrence, keep_weights=True)
        return x, {'pairwise': criss_cross_dense(attn)}

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, reduction={self.reduction}, '
                f'recurrence={self.recurrence}')


def convert_mmcv_criss_cross(state_dict: Mapping[str, torch.Tensor],
                             prefix_in: str = '',
                             prefix_out: str = '') -> 'OrderedDict[str, torch.Tensor]':
    """Keys of mmcv's ``CrissCrossAttention`` under ``prefix_in`` → ``CrissCrossBlock``
    keys under ``prefix_out``.

    ===========================  ==========================
    mmcv                         mmctx
    ===========================  ==========================
    ``query_conv.weight/bias``   unchanged
    ``key_conv.weight/bias``     unchanged
    ``value_conv.weight/bias``   unchanged
    ``gamma.scale`` (shape ())   ``gamma`` (shape (1,))
    ===========================  ==========================

    Keys outside ``prefix_in`` are copied unchanged, so the function can be applied
    block by block to a whole model's state dict (e.g. mmseg ``CCHead``:
    ``prefix_in='decode_head.cca.'``).
    """
    from .convert import convert_block_state_dict
    return convert_block_state_dict(state_dict, 'mmcv_criss_cross', prefix_in, prefix_out)
