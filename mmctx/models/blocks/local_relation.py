"""Local relation: a k×k window aggregation whose weights come from the features.

* Local Relation Networks for Image Recognition (Han Hu, Zheng Zhang, Zhenda Xie,
  Stephen Lin, ICCV 2019) — https://arxiv.org/abs/1904.11491. No official code was
  found; this is written from the paper's equations (unofficial versions read for
  comparison: ``gan3sh500/local-relational-nets``).

A local relation layer replaces a spatial convolution. For an output position ``p'``
and the positions ``p`` of its ``k×k`` window Ω(p'), with ``G = C_out / m`` weight
groups (channel sharing: ``m`` channels share one aggregation weight):

==================  =========================================================
step                computation (``LocalRelationBlock``)
==================  =========================================================
key / query         ``k = W_k x``, ``q = W_q x`` — 1×1 convs, ``C_in → G``: one
                    scalar key and query per group and position
appearance          ``Φ_g(p', p) = −(q_g(p') − k_g(p))²`` (``composability=
                    'squared_difference'``; also ``'absolute_difference'``
                    ``−|q − k|`` and ``'product'`` ``q·k``)
geometry prior      ``G_g(p − p') = MLP(Δy, Δx)`` — ``Linear(2, hidden) → ReLU →
                    Linear(hidden, G)`` on the ``k²`` relative positions, normalised
                    to ``[−1, 1]`` (``Δ / (k // 2)``); shared over positions and
                    computed once per forward: a ``(G, k, k)`` table
weights             ``ω_g(p', p) = softmax_{p ∈ Ω(p')} (Φ_g(p', p) + G_g(p − p'))``
aggregation         ``y_c(p') = Σ_{p ∈ Ω(p')} ω_{g(c)}(p', p) · v_c(p)``, channel ``c``
                    in group ``g(c) = c // m``
==================  =========================================================

``v`` is the input itself when ``out_channels == in_channels`` (the paper's
``y = Σ ω x``; in a ResNet Bottleneck the 1×1 conv after it is the projection), else a
1×1 conv ``C_in → C_out`` (no bias) applied before the aggregation.

Borders: the window runs over the zero-padded input (padding ``k // 2``), and the
padded positions are **masked out of the softmax** (logit ``−∞``): the weights of
every output position sum to 1 over the window positions inside the image (a border
output is not pulled toward zero). ``stride`` computes only the outputs at
``p' = stride · o`` (queries there, windows around them), so the output has the size
``⌈H / stride⌉ × ⌈W / stride⌉`` of the strided ``k×k`` conv it replaces.

**Memory** (``forward``): the output rows are computed in chunks; a chunk unfolds
(``F.unfold``) only the band of input rows its windows cover, at most
``chunk_elements`` values ``(N, C_out, k², rows, W')``, and with ``with_cp`` (default)
each chunk is recomputed in backward (``torch.utils.checkpoint``), so neither forward
nor backward keeps the whole ``(N, C, k², H, W)`` unfolded tensor: autograd keeps the
padded key/value maps and the queries (tested). ``with_cp=False`` keeps every chunk's
unfolded values for backward (faster, ``k²`` times the input's memory).
``forward_with_attention`` is the plain path (one chunk, no recomputation) and also
returns the weights ``{'local': (N, G, k², H', W')}``. Logits, softmax and the
aggregation run in fp32 under autocast; the output has the input's dtype.

Choices where the paper is not specific or not found [NF] (written down here):

* ``Φ``: the squared difference is the default (the paper compares several forms;
  which one its tables use is [NF] for us); the other two are options.
* Channel sharing groups are **contiguous** channels (``c // m``, as grouped convs and
  GroupNorm; the unofficial code interleaves them, ``c % G``).
* Key/query 1×1 convs have no bias and start ``N(0, 1/C_in)`` (logits of order 1 for
  unit-variance inputs); the value conv starts Kaiming normal (fan_out, as the ResNet
  convs it sits among); the geometry MLP PyTorch's default ``nn.Linear`` init, its
  hidden width ``geometry_channels`` (default ``G``).
* No 1×1 conv after the aggregation (the unofficial code has one): where the layer
  replaces a Bottleneck's 3×3 conv, the Bottleneck's own 1×1 conv follows.
* The geometry prior is added to the logits before the softmax (the paper's
  ``softmax(Φ + G)``); ``appearance=False`` / ``geometry=False`` are the paper's
  ablation arms (geometry-only / appearance-only), one of them must stay.

There is no upstream (mmcv/mmseg/mmdet) module to convert from: no key map.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from ...registry import MODELS
from ._base import (ContextBlockBase, check_bool, check_choice, check_int, exporting,
                    no_autocast, upcast)

COMPOSABILITIES = ('squared_difference', 'absolute_difference', 'product')


def composability(q: torch.Tensor, k: torch.Tensor, kind: str) -> torch.Tensor:
    """``Φ(q, k)`` elementwise (one scalar query and key per group)."""
    if kind == 'squared_difference':
        return -(q - k).square()
    if kind == 'absolute_difference':
        return -(q - k).abs()
    return q * k


def window_mask(h: int, w: int, kernel: int, stride: int, device: torch.device,
                rows: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """``(k², H', W')`` bool: whether window offset ``j`` of output ``(oy, ox)`` falls
    inside the ``h × w`` input (``j = (Δy + k//2)·k + (Δx + k//2)``, row-major); with
    ``rows=(start, stop)`` only those output rows."""
    pad = kernel // 2
    offsets = torch.arange(kernel, device=device) - pad  # (k, )
    start, stop = (0, (h - 1) // stride + 1) if rows is None else rows
    rows = stride * torch.arange(start, stop, device=device)  # window centres
    cols = stride * torch.arange((w - 1) // stride + 1, device=device)
    in_rows = ((rows.view(1, -1) + offsets.view(-1, 1)) >= 0) & \
        ((rows.view(1, -1) + offsets.view(-1, 1)) < h)  # (k, H')
    in_cols = ((cols.view(1, -1) + offsets.view(-1, 1)) >= 0) & \
        ((cols.view(1, -1) + offsets.view(-1, 1)) < w)  # (k, W')
    mask = in_rows.view(kernel, 1, -1, 1) & in_cols.view(1, kernel, 1, -1)
    return mask.reshape(kernel * kernel, rows.numel(), cols.numel())


@MODELS.register_module()
class LocalRelationBlock(ContextBlockBase):
    """A local relation layer (a replacement for a ``k×k`` conv); see the module
    docstring for the equations and choices.

    Args:
        in_channels: input channels.
        out_channels: output channels (default ``in_channels``: the value is the input
            itself; otherwise a 1×1 value conv ``in → out``). Must be a multiple of
            ``channel_sharing``.
        dim: must be 2.
        kernel_size: the window ``k`` (odd; the paper's preferred 7).
        channel_sharing: ``m``, channels that share one aggregation weight (the
            paper's 8); ``G = out_channels // m`` weight groups, key/query channels.
        stride: outputs at every ``stride``-th position (the strided conv it replaces).
        composability: ``Φ``, ``'squared_difference'``, ``'absolute_difference'`` or
            ``'product'``.
        appearance: use the key/query term ``Φ``.
        geometry: use the geometry prior ``G``.
        geometry_channels: hidden width of the geometry MLP (default ``G``).
        chunk_elements: at most this many unfolded values (``N·C_out·k²·rows·W'``)
            per chunk of output rows on the memory-efficient path.
        with_cp: recompute each chunk in backward instead of keeping its weights.

    Shape:
        ``(N, in_channels, H, W)`` → ``(N, out_channels, ⌈H/stride⌉, ⌈W/stride⌉)``.
    """

    _abbr_ = 'local_relation'
    residual = False  # it replaces a conv: its output is not its input plus something

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, dim: int = 2,
                 kernel_size: int = 7, channel_sharing: int = 8, stride: int = 1,
                 composability: str = 'squared_difference', appearance: bool = True,
                 geometry: bool = True, geometry_channels: Optional[int] = None,
                 chunk_elements: int = 1 << 26, with_cp: bool = True) -> None:
        super().__init__(in_channels, dim)
        if dim != 2:
            raise ValueError('LocalRelationBlock is 2-D (k×k windows, 2-D relative '
                             f'positions): dim must be 2, got {dim}')
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = check_int('out_channels', out_channels)
        self.kernel_size = check_int('kernel_size', kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd (a window centred on each output), '
                             f'got {kernel_size}')
        self.channel_sharing = check_int('channel_sharing', channel_sharing)
        if out_channels % channel_sharing:
            raise ValueError(
                f'LocalRelationBlock needs out_channels divisible by channel_sharing '
                f'(m channels share one weight); got out_channels={out_channels}, '
                f'channel_sharing={channel_sharing}')
        self.groups = out_channels // channel_sharing
        self.stride = check_int('stride', stride)
        self.composability = check_choice('composability', composability, COMPOSABILITIES)
        self.appearance = check_bool('appearance', appearance)
        self.geometry = check_bool('geometry', geometry)
        if not (appearance or geometry):
            raise ValueError('LocalRelationBlock needs the appearance or the geometry term '
                             '(or both); got appearance=False, geometry=False')
        self.chunk_elements = check_int('chunk_elements', chunk_elements)
        self.with_cp = check_bool('with_cp', with_cp)
        g = self.groups
        if appearance:
            self.query_conv = nn.Conv2d(in_channels, g, 1, bias=False)
            self.key_conv = nn.Conv2d(in_channels, g, 1, bias=False)
        else:
            self.query_conv = self.key_conv = None
        if geometry:
            hidden = g if geometry_channels is None else geometry_channels
            self.geometry_channels = check_int('geometry_channels', hidden)
            self.geometry_mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(),
                                              nn.Linear(hidden, g))
            pad = kernel_size // 2
            delta = torch.arange(kernel_size, dtype=torch.float32) - pad
            delta = delta / max(pad, 1)
            dy, dx = torch.meshgrid(delta, delta, indexing='ij')
            # (k², 2): (Δy, Δx) of window offset j, row-major
            self.register_buffer('positions', torch.stack([dy, dx], -1).view(-1, 2),
                                 persistent=False)
        else:
            if geometry_channels is not None:
                raise ValueError(f'geometry_channels={geometry_channels} sizes the geometry '
                                 'prior, which geometry=False switches off: remove one')
            self.geometry_channels, self.geometry_mlp = None, None
        self.value_conv = (nn.Conv2d(in_channels, out_channels, 1, bias=False)
                           if out_channels != in_channels else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.query_conv, self.key_conv):
            if conv is not None:
                nn.init.normal_(conv.weight, 0., self.in_channels ** -0.5)
        if self.value_conv is not None:
            nn.init.kaiming_normal_(self.value_conv.weight, mode='fan_out',
                                    nonlinearity='relu')
        if self.geometry_mlp is not None:
            for layer in self.geometry_mlp:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    # --- the steps ------------------------------------------------------------------
    def geometry_table(self) -> Optional[torch.Tensor]:
        """The geometry prior ``(G, k²)`` (``None`` without it), window offsets
        row-major; ``.view(G, k, k)`` is the table over ``(Δy, Δx)``."""
        if self.geometry_mlp is None:
            return None
        return self.geometry_mlp(self.positions).t()

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        return (h - 1) // self.stride + 1, (w - 1) // self.stride + 1

    def _chunk(self, v_pad: torch.Tensor, q: Optional[torch.Tensor],
               k_pad: Optional[torch.Tensor], table: Optional[torch.Tensor],
               size: Tuple[int, int], start: int, stop: int, need_weights: bool):
        """Output rows ``start..stop−1``: ``y (N, C_out, rows, W')`` and, with
        ``need_weights``, ``ω (N, G, k², rows, W')``.

        ``v_pad`` / ``k_pad`` are the zero-padded value and key maps, ``q`` the queries
        at the output positions, ``size`` the input's ``(H, W)``. Only the band of input
        rows these outputs see is unfolded."""
        s, kk, g = self.stride, self.kernel_size, self.groups
        n, c = v_pad.shape[:2]
        mask = window_mask(*size, kk, s, v_pad.device, rows=(start, stop))
        rows, width = stop - start, mask.shape[-1]
        length, k2 = rows * width, kk * kk

        def unfold(t: torch.Tensor) -> torch.Tensor:
            band = t[:, :, s * start:s * (stop - 1) + kk]  # the rows the windows cover
            # (N, ch·k², rows·W') -> (N, ch, k², rows·W'), offsets row-major
            return F.unfold(band, kk, stride=s).view(n, t.shape[1], k2, length)

        if q is not None:
            qc = q[:, :, start:stop].reshape(n, g, 1, length)
            logits = composability(qc, unfold(k_pad), self.composability)  # (N, G, k², L)
            if table is not None:
                logits = logits + table.view(1, g, k2, 1)
        else:
            logits = table.view(1, g, k2, 1).expand(n, -1, -1, length)
        logits = logits.masked_fill(~mask.view(1, 1, k2, length),
                                    float('-inf'))
        weights = logits.softmax(dim=2)  # (N, G, k², L)
        # (N, G, m, k², L) * (N, G, 1, k², L), summed over the window: m channels share
        value = unfold(v_pad).view(n, g, c // g, k2, length)
        out = (value * weights.unsqueeze(2)).sum(3).view(n, c, rows, width)
        if need_weights:
            return out, weights.view(n, g, k2, rows, width)
        return out

    def _forward(self, x: torch.Tensor, explicit: bool):
        self.check_input(x)
        h, w = x.shape[-2:]
        s, pad = self.stride, self.kernel_size // 2
        ho, wo = self.output_size(h, w)
        v = x if self.value_conv is None else self.value_conv(x)
        q = k = None
        if self.appearance:
            q = self.query_conv(x[:, :, ::s, ::s] if s > 1 else x)  # (N, G, H', W')
            k = self.key_conv(x)  # (N, G, H, W)
        with no_autocast(x):
            table = self.geometry_table()
            if table is not None:
                table = upcast(table)
            v_pad = F.pad(upcast(v), (pad, pad, pad, pad))
            if q is not None:
                q, k = upcast(q), F.pad(upcast(k), (pad, pad, pad, pad))
            if explicit:
                out, weights = self._chunk(v_pad, q, k, table, (h, w), 0, ho, True)
                return out.to(x.dtype), weights
            if exporting():  # one chunk (see exporting()): the chunk count depends on H'
                return self._chunk(v_pad, q, k, table, (h, w), 0, ho, False).to(x.dtype), None
            per_row = x.shape[0] * self.out_channels * self.kernel_size ** 2 * wo
            chunk = max(1, self.chunk_elements // per_row)
            grad = torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (v_pad, q, k, table))
            parts: List[torch.Tensor] = []
            for start in range(0, ho, chunk):
                args = (v_pad, q, k, table, (h, w), start, min(start + chunk, ho), False)
                parts.append(cp.checkpoint(self._chunk, *args, use_reentrant=False)
                             if grad and self.with_cp else self._chunk(*args))
            out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return out.to(x.dtype), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Memory-efficient path (chunks of rows, recomputed in backward)."""
        return self._forward(x, explicit=False)[0]

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict]:
        """Plain path: the output and ``{'local': ω (N, G, k², H', W')}``, the window
        weights of every output position (window offsets row-major, ``j = (Δy + k//2)·k
        + (Δx + k//2)``; zero at padded positions). Not a ``'pairwise'`` map: each
        query sees only its window."""
        out, weights = self._forward(x, explicit=True)
        return out, {'local': weights}

    def term_macs(self, batch: int, h: int, w: int) -> Dict[str, int]:
        """Multiply-adds of each term for a ``batch × in_channels × h × w`` input
        (softmax and the geometry MLP, ``k²·(2·hidden + hidden·G)``, not counted; the
        elementwise ``Φ`` and aggregation are what jit-based counters miss):

        * ``key_query``: the two 1×1 convs (keys at all ``H·W``, queries at the outputs);
        * ``value``: the 1×1 value conv (only when ``out_channels != in_channels``);
        * ``composability``: one per (group, output, window offset);
        * ``aggregation``: one per (channel, output, window offset).
        """
        ho, wo = self.output_size(h, w)
        n, g, kk = batch, self.groups, self.kernel_size ** 2
        out = dict(key_query=0, value=0, composability=0,
                   aggregation=n * self.out_channels * ho * wo * kk)
        if self.appearance:
            out['key_query'] = n * self.in_channels * g * (h * w + ho * wo)
            out['composability'] = n * g * ho * wo * kk
        if self.value_conv is not None:
            out['value'] = n * h * w * self.in_channels * self.out_channels
        return out

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'channel_sharing={self.channel_sharing}, stride={self.stride}, '
                f'composability={self.composability!r}, appearance={self.appearance}, '
                f'geometry={self.geometry}')
