"""DGMN: dynamic graph message passing over sampled neighbourhoods.

* Dynamic Graph Message Passing Networks (Zhang et al., CVPR 2020) —
  https://arxiv.org/abs/1908.06955; official code ``lzrobots/dgmn`` (a
  maskrcnn-benchmark fork), ``maskrcnn_benchmark/layers/dynamic_weight.py``
  (``ReDynamicWeightsCat11`` / ``ReDynamicWeightsCat33``).

Not a low-rank block: every position passes messages from its own ``S × K`` sampled
neighbours (``K = k²`` taps of a ``k × k`` grid at each of ``S`` dilations, moved by
predicted offsets), with weights predicted for that position. With ``x`` the input
``(N, C, H, W)``:

=================  ==========================================================
reduction          ``h = ReLU(norm(conv1×1(x)))``, ``C' = C / reduction``
                   (``reduction=1``: ``h = x``, no layer)
sampling           for dilation ``d_s``, tap ``k = (i, j)`` and position ``p``:
                   ``n_k(p) = p + d_s·(i − r, j − r) + Δ_{s,k}(p)``, ``r = (k−1)/2``;
                   offsets ``Δ_s = offset_conv_s(h)`` (3×3, dilation ``d_s``, 2K
                   channels ``(Δy, Δx)`` per tap, mmcv's layout); ``h̃_{s,k}(p) =
                   h(n_k(p))``, bilinear, zero outside the map
filters            ``[f_s; a_s] = kernel_conv_s(h̃_s)``: a *deformable* conv, the
                   ``k × k`` weights applied to the sampled neighbours (mmcv
                   ``DeformConv2d`` with the same offsets), ``G·K`` filter and ``K``
                   affinity logits per position;
                   ``w_{s,g,k} = act_f(f_{s,g,·})_k · act_a(a_{s,·})_k`` (``act_f``:
                   softmax over the K taps per channel group, ``act_a``: sigmoid)
messages           ``m_s(p)[c ∈ g] = Σ_k w_{s,g,k}(p) · h̃_{s,k}(p)[c]``
fusion             ``out = x + expand(h + Σ_s β_s·m_s)``, ``β_s = 1`` at init;
                   ``expand`` = ``ReLU(norm(conv1×1))`` ``C' → C`` (``reduction=1``:
                   ``out = x + Σ_s β_s·m_s``)
=================  ==========================================================

``deform=False`` fixes ``Δ = 0`` (no offset convs): the plain dilated grid, filters
from an ordinary dilated conv (the official ``deform='none'``).

Which official variant this is: ``reduction > 1`` is ``ReDynamicWeightsCat11``
(reduce, ``β``-weighted sum with ``h``, ``scale3`` back to C, ``+ x``);
``reduction=1`` is ``ReDynamicWeightsCat33``, the module the official Mask R-CNN
configs (``configs/dw/*``: res5 only, ``GROUP 4``, ``DEFORM 'deformatt'``,
``INSERT_POS 'after3x3'``) build inside each Bottleneck after the 3×3 conv, on the
``planes`` channels. Both keep ``β_s`` initialised to 1 (so the block is not the
identity at init, as the official).

Note:
    * ``filter_act`` / ``affinity_act`` default to softmax filters and sigmoid
      affinities (the official ``DynamicWeightsCat11``; which form the paper's
      equations take was not checked here, [NF]). The official
      ``Re*`` modules with ``'deformatt'`` use raw filter logits times a **softmax**
      over the K taps of the affinity logits: ``filter_act=None,
      affinity_act='softmax'`` (what ``configs/dgmn`` sets). ``affinity_act=None``
      drops the affinity (the official ``'deform'``).
    * The official ``Re*`` ``'deformatt'`` code takes the 4th dilation's affinity from
      the last 9 *filter* logits (``att4 = dynamic_filter4[:, -9:]``); here every
      dilation uses its affinity logits.
    * The offset convs are zero-initialised (the block starts on the dilated grid, as
      mmcv's ``DeformConv2dPack``); the official code leaves PyTorch's default init.
      The filter convs keep PyTorch's default init (the official ``DeformConv``'s
      ``U(±1/√(C'k²))`` is the same bound); no biases (official).
    * Pure PyTorch: sampling with ``grid_sample`` (``align_corners=False``, zero
      padding: mmcv's deformable bilinear kernel), one sampling per dilation shared by
      the filter conv and the messages. The sampling, filters and messages run in fp32
      with autocast disabled; the reduce / expand convs follow autocast.
    * The official ``shuffle`` (random permutation of the group filters in training)
      is off in every official config and not implemented.

Official key map (``ReDynamicWeightsCat11``; for ``Cat33`` no ``scale1`` /
``scale3``); the dilations ``a, b, c, d`` are ``0..3`` here:

=================================  ==================================
official                           ``DynamicGraphBlock``
=================================  ==================================
``scale1.0.weight``, ``scale1.1.*``  ``reduce.0.weight``, ``reduce.1.*``
``off_conv{a..d}.weight``          ``offset_convs.{0..3}.weight``
``kernel_conv{a..d}.weight``       ``kernel_convs.{0..3}.weight``
``gamma{1..4}`` (each ``(1,)``)    ``beta`` ``(S,)``
``scale3.0.weight``, ``scale3.1.*``  ``expand.0.weight``, ``expand.1.*``
=================================  ==================================

(no released DGMN checkpoints are known, so no converter is provided.)
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from ._base import (ContextBlockBase, check_bool, check_choice, check_int, no_autocast,
                    pointwise, upcast)
from .low_rank import build_norm

FILTER_ACTS = ('softmax', None)
AFFINITY_ACTS = ('sigmoid', 'softmax', None)


def deformable_unfold(x: torch.Tensor, offset: Optional[torch.Tensor], kernel_size: int,
                      dilation: int) -> torch.Tensor:
    """The ``k × k`` dilated neighbourhood of every position, each tap moved by its
    offset and read bilinearly (zero outside the map): mmcv's deformable im2col.

    Args:
        x: ``(N, C, H, W)``.
        offset: ``(N, 2K, H, W)``, ``(Δy, Δx)`` per tap (taps row-major), in pixels;
            ``None`` for the plain grid (``F.unfold``).
        kernel_size: odd ``k``; ``K = k²``.
        dilation: tap spacing ``d`` (the padding is ``d·(k−1)/2``: same size out).

    Returns:
        ``(N, C, K, H, W)``: tap ``k`` of position ``(y, x)`` reads
        ``x[y + d·(i − r) + Δy, x + d·(j − r) + Δx]``, ``(i, j) = divmod(k, k)``.
    """
    n, c, h, w = x.shape
    taps, r = kernel_size * kernel_size, (kernel_size - 1) // 2
    if offset is None:
        cols = F.unfold(x, kernel_size, dilation=dilation, padding=r * dilation)
        return cols.view(n, c, taps, h, w)  # (N, C·K, HW) → (N, C, K, H, W)
    step = (torch.arange(kernel_size, device=x.device, dtype=x.dtype) - r) * dilation
    ty, tx = torch.meshgrid(step, step, indexing='ij')  # (k, k) tap displacements
    off = offset.view(n, taps, 2, h, w)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1) \
        + ty.reshape(1, taps, 1, 1) + off[:, :, 0]  # (N, K, H, W) rows
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w) \
        + tx.reshape(1, taps, 1, 1) + off[:, :, 1]  # (N, K, H, W) columns
    # pixel index → grid_sample's [-1, 1] with align_corners=False (exact for any size)
    grid = torch.stack(((2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1), dim=-1)
    out = F.grid_sample(x, grid.view(n, taps * h, w, 2), mode='bilinear',
                        padding_mode='zeros', align_corners=False)  # (N, C, K·H, W)
    return out.view(n, c, taps, h, w)


def _conv_norm_relu(cin: int, cout: int, norm_cfg: Optional[dict]) -> nn.Sequential:
    layers = [pointwise(2, cin, cout, bias=norm_cfg is None)]
    if norm_cfg is not None:
        layers.append(build_norm(norm_cfg, cout, 2))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


@MODELS.register_module()
class DynamicGraphBlock(ContextBlockBase):
    """DGMN dynamic graph message passing (see the module docstring).

    Args:
        in_channels: input channels C.
        reduction: ``C' = C // reduction`` channels carry the messages; 1 = no reduce
            / expand layers (the official ``after3x3`` module).
        dilations: one sampled ``k × k`` neighbourhood per dilation (S of them).
        groups: channel groups G with their own filters (``C'`` divisible by G).
        kernel_size: odd ``k`` of the sampled grids (``K = k²`` neighbours each).
        deform: predict per-position offsets (``False``: the fixed dilated grid).
        filter_act: ``'softmax'`` over the K taps per group, or ``None`` (raw).
        affinity_act: ``'sigmoid'``, ``'softmax'`` over the K taps, or ``None`` (no
            affinity logits predicted).
        norm_cfg: norm of the reduce / expand convs (official: GN with 32 groups;
            BN by default here because GN(32) needs 32 | ``C'``, which small heads
            do not have); ``None``: convs with bias, no norm.
        dim: must be 2.

    Shape:
        ``(N, C, H, W)`` → ``(N, C, H, W)``.
    """

    _abbr_ = 'dgmn_block'

    def __init__(self, in_channels: int, reduction: int = 4,
                 dilations: Sequence[int] = (1, 4, 8, 12), groups: int = 4,
                 kernel_size: int = 3, deform: bool = True,
                 filter_act: Optional[str] = 'softmax',
                 affinity_act: Optional[str] = 'sigmoid',
                 norm_cfg: Optional[dict] = dict(type='BN'), dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        if dim != 2:
            raise ValueError(f'DynamicGraphBlock is 2-D only (it samples neighbours on '
                             f'an (H, W) grid): use dim=2, got dim={dim}')
        self.reduction = check_int('reduction', reduction)
        self.channels = in_channels // reduction
        if self.channels < 1:
            raise ValueError(f'reduction={reduction} leaves 0 channels for '
                             f'in_channels={in_channels}')
        if not isinstance(dilations, (list, tuple)) or not dilations:
            raise TypeError(f'dilations must be a non-empty list/tuple of ints, got '
                            f'{dilations!r}')
        self.dilations = tuple(check_int(f'dilations[{i}]', d) for i, d in enumerate(dilations))
        self.groups = check_int('groups', groups)
        if self.channels % groups:
            raise ValueError(f'groups={groups} must divide the message channels '
                             f'in_channels // reduction = {self.channels}')
        self.kernel_size = check_int('kernel_size', kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        self.deform = check_bool('deform', deform)
        self.filter_act = check_choice('filter_act', filter_act, FILTER_ACTS)
        self.affinity_act = check_choice('affinity_act', affinity_act, AFFINITY_ACTS)
        taps, c = kernel_size * kernel_size, self.channels
        self.taps = taps
        if reduction > 1:
            self.reduce = _conv_norm_relu(in_channels, c, norm_cfg)
            self.expand = _conv_norm_relu(c, in_channels, norm_cfg)
        else:
            self.reduce = self.expand = None

        def grid_conv(cout, d):
            return nn.Conv2d(c, cout, kernel_size, padding=d * (kernel_size - 1) // 2,
                             dilation=d, bias=False)

        num_logits = groups * taps + (taps if affinity_act is not None else 0)
        self.offset_convs = nn.ModuleList(
            grid_conv(2 * taps, d) for d in self.dilations) if deform else None
        self.kernel_convs = nn.ModuleList(grid_conv(num_logits, d) for d in self.dilations)
        self.beta = nn.Parameter(torch.ones(len(self.dilations)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                m.reset_parameters()
        if self.offset_convs is not None:
            for conv in self.offset_convs:
                nn.init.zeros_(conv.weight)
        nn.init.ones_(self.beta)

    def _weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Filter (+ affinity) logits ``(N, G·K [+ K], H, W)`` → ``w (N, G, K, H, W)``."""
        n, _, h, w = logits.shape
        g, k = self.groups, self.taps
        filters = logits[:, :g * k].view(n, g, k, h, w)
        if self.filter_act == 'softmax':
            filters = filters.softmax(dim=2)
        if self.affinity_act is None:
            return filters
        affinity = logits[:, g * k:].view(n, 1, k, h, w)
        affinity = affinity.sigmoid() if self.affinity_act == 'sigmoid' \
            else affinity.softmax(dim=2)
        return filters * affinity

    def message(self, h: torch.Tensor, s: int) -> Tuple[torch.Tensor, ...]:
        """Dilation ``s``'s message ``m_s (N, C', H, W)`` from ``h (N, C', H, W)``, its
        weights ``(N, G, K, H, W)`` and offsets ``(N, K, 2, H, W)`` (``None`` without
        ``deform``); fp32 (fp64 stays fp64) whatever the autocast state."""
        n, c, height, width = h.shape
        conv = self.kernel_convs[s]
        with no_autocast(h):
            h = upcast(h)
            offset = None if self.offset_convs is None else \
                F.conv2d(h, self.offset_convs[s].weight.to(h.dtype),
                         padding=self.offset_convs[s].padding,
                         dilation=self.offset_convs[s].dilation)
            sampled = deformable_unfold(h, offset, self.kernel_size, self.dilations[s])
            # the (deformable) filter conv: its k×k weights on the sampled taps,
            # (O, C'·K) @ (N, C'·K, HW) → (N, O, HW)
            logits = torch.matmul(conv.weight.to(h.dtype).flatten(1),
                                  sampled.view(n, c * self.taps, height * width))
            wts = self._weights(logits.view(n, -1, height, width))  # (N, G, K, H, W)
            grouped = sampled.view(n, self.groups, c // self.groups, self.taps,
                                   height, width)  # (N, G, C'/G, K, H, W)
            m = (grouped * wts.unsqueeze(2)).sum(3).view(n, c, height, width)
        offsets = None if offset is None else offset.view(n, self.taps, 2, height, width)
        return m, wts, offsets

    def _forward(self, x: torch.Tensor, need_maps: bool):
        self.check_input(x)
        h = x if self.reduce is None else self.reduce(x)
        total = 0
        weights, offsets = [], []
        for s in range(len(self.dilations)):
            m, wts, off = self.message(h, s)
            total = total + self.beta[s] * m
            if need_maps:
                weights.append(wts)
                offsets.append(off if off is not None else wts.new_zeros(
                    wts.shape[0], self.taps, 2, *wts.shape[-2:]))
        total = total.to(x.dtype)
        out = x + (total if self.expand is None else self.expand(h + total))
        maps = {}
        if need_maps:
            maps = {'neighbour_weights': torch.stack(weights, dim=1),
                    'offsets': torch.stack(offsets, dim=1)}
        return out, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, need_maps=False)[0]

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict]:
        """The output and ``{'neighbour_weights': w (N, S, G, K, H, W), 'offsets':
        (N, S, K, 2, H, W)}``: the weight of each group on each sampled neighbour
        (``m_s = Σ_k w ⊙ h̃``; before ``β_s``) and each tap's ``(Δy, Δx)`` in pixels
        (zeros with ``deform=False``). Not maps over all positions: there is no
        ``'pairwise'`` entry."""
        return self._forward(x, need_maps=True)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, reduction={self.reduction}, '
                f'dilations={self.dilations}, groups={self.groups}, '
                f'kernel_size={self.kernel_size}, deform={self.deform}, '
                f'filter_act={self.filter_act!r}, affinity_act={self.affinity_act!r}')


__all__ = ['DynamicGraphBlock', 'deformable_unfold']
