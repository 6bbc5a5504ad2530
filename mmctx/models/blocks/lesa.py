"""LESA: locally enhanced self-attention.

* Combining Self-Attention and Convolution as Local and Context Terms / Locally
  Enhanced Self-Attention (Chenglin Yang et al., arXiv 2107.05637) —
  https://arxiv.org/abs/2107.05637; official code ``Chenglin-Yang/LESA_classification``
  (``lib/models/LESA.py``) and ``LESA_detection`` (the same module).

In GCNet's terms: context modeling is a **unary** (local) term and a **binary**
(context) term, and fusion is a learned per-position, per-channel gate:

=================  ==========================================================
step               computation (``LESABlock``)
=================  ==========================================================
unary              ``U = BN(conv1×1(conv3×3_groups=heads(x)))`` (``dcn``: the
                   3×3 is a deformable conv from mmcv.ops, as the detection code)
binary             ``qkv = BN1d(conv1×1(x))``; per head ``S_ij = BN_qk(q_i·k_j) +
                   BN_r(relative term)``, softmax over all keys ``j``;
                   ``B = BN1d(Σ_j a_ij v_j)`` (classification: ``+ BN1d(Σ_j a_ij
                   r^v_{i−j})``)
fusion             ``out = U + σ(BN(conv(ReLU(BN(conv_{2C→C}(ReLU([U, B])))))))) ⊙ B``,
                   then average pooling for ``stride > 1``
=================  ==========================================================

Relative positions (``pe_type``):

* ``'detection_qr'`` (default; BoTNet-style, the official detection form): per head
  ``q_i · (r^h[y_j − y_i] + r^w[x_j − x_i])`` with two tables of ``2·S − 1`` offsets.
  **Any input size** (beyond the official code, which fixes one square size): for a
  feature map of ``H × W`` the tables need ``2H − 1`` / ``2W − 1`` offsets; a table made
  for a larger size is cropped to its central offsets, one made for a smaller size is
  linearly interpolated along the offset axis (``align_corners=True``: the centre
  offset 0 and both ends stay where they were). At the size the tables were made for,
  neither happens and the block computes exactly the official function.
* ``'classification'`` (the official ImageNet form): relative embeddings for q, k and v
  over the *flattened* index ``i − j`` (axial-deeplab style). It is tied to the one
  size ``pe_size`` by construction, so another size raises a ``ValueError``.
* ``None``: no relative term.

**Memory-efficient path** (``forward``, training included; beyond the official code,
which materialises every ``(HW)²`` map): a per-head BN on logits is ``s·z + c`` with
a per-head ``c`` that cancels in the softmax, so only the scales matter. In eval they
come from the running statistics; in training from the batch mean and second moment
over all ``N·L²`` pairs, which need no map: for ``q_i·k_j`` they are ``(Σq)·(Σk)`` and
``⟨QᵀQ, KᵀK⟩``; for the 2-D relative term ``α_i[y] + β_i[x]`` (``α_i[y] =
q_i·r^h[y − y_i]``, ``β_i[x] = q_i·r^w[x − x_i]``) they are sums over ``α`` and ``β``.
The running statistics are updated as ``nn.BatchNorm2d`` does (unbiased variance).
The logits ``s_qk q_i·k_j + s_r (α_i[y_j] + β_i[x_j])`` are computed over chunks of
queries of one head of one image (at most ``relative_chunk_elements`` logits at a time,
each chunk's probabilities recomputed in backward by the block library's
:class:`~mmctx.models.blocks.attention.ChunkedAttention`, given ``α`` and ``β``;
``relative_inference_chunk_elements`` without a gradient): ``α`` and ``β`` written as
one broadcast sum over the key grid, ``q kᵀ`` accumulated onto them, the softmax, and
the product with ``v`` — the matmul work of the attention itself
(``2·L²·(d+dv)`` per head). In inference (eval statistics, no gradient) ``α`` and ``β``
are made per chunk from its queries, so the ``(L, H + W)`` relative logits of all
queries never exist, and one logits buffer serves every chunk (fresh per-chunk
allocations fragmented glibc's heap: 6–24 GiB at 128×256, C=512). The same logits are
one dot product of the augmented query ``[s_qk q_i, s_r α_i, s_r β_i]`` and the
augmented key ``[k_j, onehot(y_j), onehot(x_j)]``: exported and compiled graphs use
that form, one ``scaled_dot_product_attention`` call for any size (``H + W`` more
dimensions per head and zero-padded values: at 64×128, C=512, 8 heads, about 2.4× the
eager chunks' time here). The explicit path (``forward_with_attention``, the official computation)
returns the maps; all agree (tested: outputs, gradients, running statistics).

``pe_type='classification'``: its flattened-index terms ``q_i·r^q_{i−j}``,
``k_j·r^k_{j−i}`` and ``Σ_j a_ij r^v_{i−j}`` have no low-rank form, so the attention
runs over chunks of queries (at most ``chunk_elements`` logits at a time), each chunk
recomputed in backward (``torch.utils.checkpoint``). The BN scales come from moments
that need no map either: for query ``i`` the ``L`` offsets ``i − j`` are a window of
the table, so ``Σ_j q_i·r_{i−j}`` and ``Σ_j (q_i·r_{i−j})²`` are ``q_i·S_i`` and
``q_iᵀ M_i q_i`` with window sums ``S_i`` / ``M_i`` (of the columns / their outer
products) from cumulative sums.

Note:
    * The BN shift (``bias``) of ``bn_similarity`` cancels in the softmax: it gets no
      gradient on the memory-efficient path (exactly zero on the explicit one).
    * Comparison arms of the paper, trainable from configs (not in the official code):
      ``unary=False`` (self-attention only: ``out = B``), ``binary=False`` (conv only:
      ``out = U``), ``fusion='sum'`` (``out = U + B``).
    * Init as the official code: ``qkv`` weight ``N(0, 1/in_channels)``, the
      classification table ``N(0, 1/dv)``, the 2-D tables ``N(0, 1)·d^-½``; other convs
      Kaiming normal (fan_out, as the ResNet init it is built into), BN γ=1, β=0.
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from ...registry import MODELS
from ._base import (ContextBlockBase, check_bool, check_choice, check_int, no_autocast,
                    traced, upcast)
from .attention import ChunkedAttention, pad_keys, softmax_attention

PE_TYPES = ('detection_qr', 'classification', None)
FUSIONS = ('gate', 'sum')


def _pair(value, name: str) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f'{name} must be an int or a pair (H, W) of ints, got {value!r}')
    return tuple(check_int(f'{name}[{i}]', v) for i, v in enumerate(value))


def offset_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """A ``(2S − 1, d)`` relative table for ``2·size − 1`` offsets ``−(size−1)..size−1``.

    Cropped to the central offsets when ``size <= S``; linearly interpolated along the
    offset axis (``align_corners=True``) when ``size > S``.
    """
    made_for = (table.shape[0] + 1) // 2
    if size <= made_for:
        return table[made_for - size:made_for + size - 1]
    # (2S-1, d) -> (1, d, 2S-1) -> (1, d, 2·size-1) -> (2·size-1, d)
    return F.interpolate(table.t().unsqueeze(0), size=2 * size - 1, mode='linear',
                         align_corners=True).squeeze(0).t()


def axis_logits(q: torch.Tensor, table: torch.Tensor, axis: int) -> torch.Tensor:
    """``q_i · table[p_j − p_i]`` for every key coordinate ``p_j`` along one axis.

    Args:
        q: ``(..., H, W, d)`` queries on their grid.
        table: ``(2·n − 1, d)`` for ``n`` = H (``axis=0``) or W (``axis=1``); index
            ``o`` holds offset ``o − (n − 1)``.

    Returns:
        ``(..., H, W, n)``: entry ``p`` is the logit towards key coordinate ``p``.
    """
    n = q.shape[-3 + axis]
    per_offset = q @ table.t()  # (..., H, W, 2n-1)
    coords = torch.arange(n, device=q.device)
    index = coords.view(1, n) - coords.view(n, 1) + n - 1  # (query p_i, key p_j)
    shape = [1] * (q.dim() - 3) + ([n, 1, n] if axis == 0 else [1, n, n])
    index = index.view(shape).expand(*per_offset.shape[:-1], n)
    return per_offset.gather(-1, index)


def uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn`` normalises with the batch's statistics (as ``nn.BatchNorm2d``)."""
    return bn.training or not bn.track_running_stats


def bn_logit_scale(bn: nn.BatchNorm2d, mean: Optional[torch.Tensor],
                   sq_mean: Optional[torch.Tensor], count: int) -> torch.Tensor:
    """The per-channel scale that ``bn`` applies to logits (its shift cancels in a
    softmax), from the batch ``mean`` / ``sq_mean`` (second moment) over ``count``
    values in training, or the running statistics in eval. In training the running
    statistics are updated exactly as ``nn.BatchNorm2d`` updates them."""
    if uses_batch_stats(bn):
        var = (sq_mean - mean * mean).clamp_min(0)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                m = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                     else bn.momentum)
                unbiased = var * count / max(count - 1, 1)
                bn.running_mean.mul_(1 - m).add_(m * mean.to(bn.running_mean.dtype))
                bn.running_var.mul_(1 - m).add_(m * unbiased.to(bn.running_var.dtype))
    else:
        var = bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(scale.dtype)
    return scale


def pair_moments(q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and second moment of ``q_i · k_j`` over the batch and all pairs, per head.

    ``q (N, h, Lq, d)``, ``k (N, h, Lk, d)`` → two ``(h, )`` tensors, computed from
    ``(Σ_i q_i)·(Σ_j k_j)`` and ``⟨QᵀQ, KᵀK⟩`` in fp64: no ``Lq×Lk`` map.
    """
    q, k = q.double(), k.double()
    count = q.shape[0] * q.shape[2] * k.shape[2]
    mean = (q.sum(2) * k.sum(2)).sum(-1).sum(0) / count
    second = (q.transpose(-1, -2) @ q * (k.transpose(-1, -2) @ k)).sum((-1, -2)).sum(0)
    return mean, second / count


@MODELS.register_module()
class LESABlock(ContextBlockBase):
    """Locally enhanced self-attention (unary conv term + binary self-attention term +
    learned gate); see the module docstring for the equations.

    Args:
        in_channels: input channels.
        out_channels: output channels (default ``in_channels``; LESA replaces a 3×3
            conv, so they may differ).
        dim: must be 2 (the unary term is a 3×3 conv, the relative positions 2-D).
        num_heads: attention heads (= the unary 3×3 conv's groups); ``out_channels``
            must be a multiple of ``2·num_heads`` and ``in_channels`` of ``num_heads``.
        pe_type: ``'detection_qr'`` (2-D tables, any size), ``'classification'``
            (flattened-index embeddings, one size) or ``None``.
        pe_size: the feature-map size (``int`` or ``(H, W)``) the relative tables are
            made for; ``'classification'`` works at exactly this size.
        stride: average pooling after the block (the official stride-2 LESA block).
        unary, binary: the two terms (the paper's conv-only / SA-only arms switch one
            off; at least one must stay).
        fusion: ``'gate'`` (the learned gate on the binary term) or ``'sum'``.
        dcn: an mmcv conv config for the unary 3×3, e.g. ``dict(type='DCN',
            deform_groups=1)``.
        with_cp: checkpoint the unary and binary terms (``with_cp_UB_terms_only``).

    Shape:
        ``(N, in_channels, H, W)`` → ``(N, out_channels, ⌈H/stride⌉, ⌈W/stride⌉)``, the
        size of the strided 3×3 conv LESA replaces.
    """

    _abbr_ = 'lesa_block'
    residual = False  # it replaces a conv: its output is not its input plus something

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, dim: int = 2,
                 num_heads: int = 8, pe_type: Optional[str] = 'detection_qr',
                 pe_size: Union[int, Sequence[int]] = 32, stride: int = 1,
                 unary: bool = True, binary: bool = True, fusion: str = 'gate',
                 dcn: Optional[dict] = None, with_cp: bool = False) -> None:
        super().__init__(in_channels, dim)
        if dim != 2:
            raise ValueError(f'LESABlock is 2-D (a 3×3 unary conv, 2-D relative '
                             f'positions): dim must be 2, got {dim}')
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = check_int('out_channels', out_channels)
        self.num_heads = check_int('num_heads', num_heads)
        if out_channels % (2 * num_heads) or in_channels % num_heads:
            raise ValueError(
                f'LESABlock needs out_channels divisible by 2·num_heads={2 * num_heads} '
                f'(q and k take half a head each) and in_channels divisible by num_heads '
                f'(the grouped 3×3); got in_channels={in_channels}, '
                f'out_channels={out_channels}, num_heads={num_heads}')
        self.pe_type = check_choice('pe_type', pe_type, PE_TYPES)
        self.pe_size = _pair(pe_size, 'pe_size')
        self.stride = check_int('stride', stride)
        self.fusion = check_choice('fusion', fusion, FUSIONS)
        for name, value in (('unary', unary), ('binary', binary), ('with_cp', with_cp)):
            check_bool(name, value)
        if not (unary or binary):
            raise ValueError('LESABlock needs the unary or the binary term (or both); '
                             'got unary=False, binary=False')
        self.unary, self.binary, self.with_cp = unary, binary, with_cp
        if dcn is not None and not isinstance(dcn, dict):
            raise TypeError(f'dcn must be None or an mmcv conv config dict, got {dcn!r}')
        self.dcn = dcn
        c, g = self.out_channels, num_heads
        self.qk_channels, self.v_channels = c // g // 2, c // g

        if unary:
            if dcn is not None:
                from mmcv.cnn import build_conv_layer
                conv3 = build_conv_layer(dcn, in_channels, c, kernel_size=3, stride=1,
                                         padding=1, dilation=1, groups=g, bias=False)
            else:
                conv3 = nn.Conv2d(in_channels, c, 3, padding=1, groups=g, bias=False)
            layers = [conv3] + ([nn.Conv2d(c, c, 1, bias=False)] if g != 1 else [])
            self.x_transform = nn.Sequential(*layers)
            self.bn_x = nn.BatchNorm2d(c)
        if binary:
            self.qkv_transform = nn.Conv1d(in_channels, 2 * c, 1, bias=False)
            self.bn_qkv = nn.BatchNorm1d(2 * c)
            terms = {'detection_qr': 2, 'classification': 3, None: 1}[pe_type]
            self.bn_similarity = nn.BatchNorm2d(g * terms)
            self.bn_output = nn.BatchNorm1d(c * (2 if pe_type == 'classification' else 1))
            h, w = self.pe_size
            if pe_type == 'detection_qr':
                self.rel_height = nn.Parameter(torch.empty(2 * h - 1, self.qk_channels))
                self.rel_width = nn.Parameter(torch.empty(2 * w - 1, self.qk_channels))
            elif pe_type == 'classification':
                length = h * w
                self.relative = nn.Parameter(
                    torch.empty(2 * self.qk_channels + self.v_channels, 2 * length - 1))
                idx = torch.arange(length)
                # flatten_index[i, j] = i - j + L - 1: offset of query i to key j
                self.register_buffer(
                    'flatten_index', (idx.view(-1, 1) - idx.view(1, -1) + length - 1).view(-1),
                    persistent=False)
        if unary and binary and fusion == 'gate':
            self.reasoning = nn.Sequential(
                nn.ReLU(), nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            self.projection = nn.Sequential(nn.Conv2d(c, c, 1, bias=False),
                                            nn.BatchNorm2d(c))
        # ceil_mode: ⌈H/stride⌉ as the strided conv it replaces (odd sizes: a partial last
        # window); at the official even sizes this is the official AvgPool2d(stride)
        self.pooling = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else None
        self.reset_parameters()

    # --- init ---------------------------------------------------------------------
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv1d)):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
        for m in self.modules():  # mmcv.ops convs (DCN): their own init (zero offsets)
            if m is not self and type(m).__module__.startswith('mmcv.ops'):
                if getattr(m, 'weight', None) is not None:
                    nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                for init in ('init_weights', 'init_offset'):
                    if hasattr(m, init):
                        getattr(m, init)()
        if self.binary:
            nn.init.normal_(self.qkv_transform.weight, 0., math.sqrt(1. / self.in_channels))
            if self.pe_type == 'detection_qr':
                scale = self.qk_channels ** -0.5
                nn.init.normal_(self.rel_height, 0., scale)
                nn.init.normal_(self.rel_width, 0., scale)
            elif self.pe_type == 'classification':
                nn.init.normal_(self.relative, 0., math.sqrt(1. / self.v_channels))

    # --- shared steps -------------------------------------------------------------
    def check_size(self, h: int, w: int) -> None:
        if not (self.binary and self.pe_type == 'classification'):
            return
        if isinstance(h, torch.SymInt) or isinstance(w, torch.SymInt):  # traced, dynamic
            raise ValueError(
                "LESABlock(pe_type='classification') cannot have a dynamic size: its "
                'embeddings index the flattened position of a pe_size map, '
                f'pe_size={self.pe_size}; export it at that size')
        if (h, w) != self.pe_size:
            raise ValueError(
                f"LESABlock(pe_type='classification') is tied to the feature-map size it "
                f'was built for, pe_size={self.pe_size} (its embeddings index the '
                f'flattened position), got {h}×{w}; use pe_type=\'detection_qr\' for '
                'inputs of any size')

    def unary_term(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_x(self.x_transform(x))

    def qkv(self, x: torch.Tensor):
        """``q, k (N, h, L, d)``, ``v (N, h, L, dv)`` from the BN'd 1×1 projection."""
        n, _, hh, ww = x.shape
        qkv = self.bn_qkv(self.qkv_transform(x.flatten(2)))  # (N, 2C, L)
        qkv = qkv.view(n, self.num_heads, 2 * self.qk_channels + self.v_channels, hh * ww)
        q, k, v = qkv.split([self.qk_channels, self.qk_channels, self.v_channels], dim=2)
        return (q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))

    def relative_2d(self, q: torch.Tensor, h: int, w: int):
        """``α (N, heads, L, H)`` and ``β (N, heads, L, W)`` of the 2-D relative term."""
        grid = q.reshape(*q.shape[:2], h, w, q.shape[-1])
        alpha = axis_logits(grid, offset_table(self.rel_height, h).to(q.dtype), axis=0)
        beta = axis_logits(grid, offset_table(self.rel_width, w).to(q.dtype), axis=1)
        return alpha.flatten(2, 3), beta.flatten(2, 3)

    def _classification_embeddings(self):
        length = self.pe_size[0] * self.pe_size[1]
        emb = self.relative.index_select(1, self.flatten_index).view(-1, length, length)
        return emb.split([self.qk_channels, self.qk_channels, self.v_channels], dim=0)

    # --- binary term: explicit (the official computation) -------------------------
    def binary_explicit(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``B (N, C, H, W)`` and the attention ``(N, heads, L, L)``, maps materialised."""
        n, _, h, w = x.shape
        g, length = self.num_heads, h * w
        q, k, v = self.qkv(x)
        with no_autocast(x):
            q, k, v = upcast(q), upcast(k), upcast(v)
            logits = [q @ k.transpose(-1, -2)]  # (N, g, L, L)
            if self.pe_type == 'detection_qr':
                alpha, beta = self.relative_2d(q, h, w)
                rows = torch.arange(length, device=x.device) // w
                cols = torch.arange(length, device=x.device) % w
                logits.append(alpha[..., rows] + beta[..., cols])
            elif self.pe_type == 'classification':
                q_emb, k_emb, v_emb = self._classification_embeddings()
                logits.append(torch.einsum('ngid,dij->ngij', q, q_emb.to(q.dtype)))
                logits.append(torch.einsum('ngjd,dji->ngij', k, k_emb.to(q.dtype)))
            stacked = self.bn_similarity(torch.cat(logits, dim=1))
            attn = stacked.view(n, len(logits), g, length, length).sum(1).softmax(-1)
            sv = attn @ v  # (N, g, L, dv)
            if self.pe_type == 'classification':
                sve = torch.einsum('ngij,dij->ngid', attn, v_emb.to(q.dtype))
                # interleave (sv_c, sve_c) per output channel, as the official BN layout
                both = torch.stack([sv, sve], dim=-1)  # (N, g, L, dv, 2)
                both = both.permute(0, 1, 3, 4, 2).reshape(n, 2 * self.out_channels, length)
                out = self.bn_output(both).view(n, self.out_channels, 2, length).sum(2)
            else:
                out = self.bn_output(sv.permute(0, 1, 3, 2).reshape(n, -1, length))
        return out.view(n, -1, h, w).to(x.dtype), attn

    # --- binary term: memory-efficient, the flattened-index (classification) form -----
    def _window_moments(self, table: torch.Tensor, z: torch.Tensor):
        """Sums over ``j`` of ``z_i · table[:, i + L − 1 − j]`` and of its square, for
        the classification terms (``q_i·r^q_{i−j}``; ``k_j·r^k_{j−i}`` with the roles of
        ``i`` and ``j`` swapped): for each position the ``L`` offsets form a window
        ``t = i .. i + L − 1`` of the ``(d, 2L − 1)`` table, so the sums are ``z_i ·
        S_i`` and ``z_iᵀ M_i z_i`` with the window sums ``S_i`` (of the columns) and
        ``M_i`` (of their outer products), from cumulative sums: no ``L×L`` map.
        ``z (N, g, L, d)`` → two ``(g, )`` tensors (sums over the batch and positions)."""
        length = z.shape[2]
        t = table.double().t()  # (2L-1, d)
        zero = t.new_zeros(1, t.shape[1])
        csum = torch.cat([zero, t.cumsum(0)])  # (2L, d)
        window = csum[length:length + length] - csum[:length]  # S_i = Σ_{t=i}^{i+L-1}
        outer = (t.unsqueeze(-1) * t.unsqueeze(-2)).flatten(1)  # (2L-1, d²)
        osum = torch.cat([outer.new_zeros(1, outer.shape[1]), outer.cumsum(0)])
        moment = (osum[length:] - osum[:length]).view(length, *t.shape[1:], t.shape[1])
        zd = z.double()
        first = (zd * window).sum(-1).sum((0, 2))
        second = torch.einsum('ngid,ide,ngie->g', zd, moment, zd)
        return first, second

    def _classification_chunk(self, q, k, v, scale, start: int, stop: int):
        """Attention outputs ``Σ_j a_ij v_j`` and ``Σ_j a_ij r^v_{i−j}`` for queries
        ``start..stop−1`` (``(N, g, c, dv)`` each); the ``c×L`` logits live only here."""
        length, g = k.shape[2], self.num_heads
        dq, dv = self.qk_channels, self.v_channels
        rows = torch.arange(start, stop, device=q.device)
        cols = torch.arange(length, device=q.device)
        rel = self.relative.to(q.dtype)
        qi = q[:, :, start:stop]
        e_q = rel[:dq][:, rows.view(-1, 1) - cols.view(1, -1) + length - 1]  # (d, c, L)
        e_k = rel[dq:2 * dq][:, cols.view(1, -1) - rows.view(-1, 1) + length - 1]
        e_v = rel[2 * dq:][:, rows.view(-1, 1) - cols.view(1, -1) + length - 1]
        s_qk, s_q, s_k = (scale[i * g:(i + 1) * g].view(1, g, 1, 1) for i in range(3))
        logits = (qi * s_qk) @ k.transpose(-1, -2)
        logits = logits + torch.einsum('ngid,dij->ngij', qi * s_q, e_q)
        logits = logits + torch.einsum('ngjd,dij->ngij', k * s_k, e_k)
        attn = logits.softmax(-1)
        return attn @ v, torch.einsum('ngij,dij->ngid', attn, e_v)

    #: one chunk's logits hold at most this many elements (N·heads·queries·L)
    chunk_elements = 1 << 21

    def binary_efficient_classification(self, x: torch.Tensor) -> torch.Tensor:
        """``B`` for ``pe_type='classification'`` without a ``(HW)²`` map: the BN
        scales of the three logit terms from moments (:meth:`_window_moments`,
        :func:`pair_moments`), then the attention over chunks of queries, each
        recomputed in backward (``torch.utils.checkpoint``), so at most one chunk's
        ``c×L`` maps exist at a time."""
        n, _, h, w = x.shape
        g, length = self.num_heads, h * w
        dq = self.qk_channels
        q, k, v = self.qkv(x)
        with no_autocast(x):
            q, k, v = upcast(q), upcast(k), upcast(v)
            bn, pairs = self.bn_similarity, n * length * length
            mean = sq = None
            if uses_batch_stats(bn):
                m_qk, s_qk = pair_moments(q, k)
                m_q, s_q = self._window_moments(self.relative[:dq], q)
                m_k, s_k = self._window_moments(self.relative[dq:2 * dq], k)
                mean = torch.cat([m_qk, m_q / pairs, m_k / pairs])
                sq = torch.cat([s_qk, s_q / pairs, s_k / pairs])
            scale = bn_logit_scale(bn, mean, sq, pairs).to(q.dtype)
            chunk = max(1, self.chunk_elements // max(1, n * g * length))
            grad = torch.is_grad_enabled() and any(
                t.requires_grad for t in (q, k, v, scale, self.relative))
            parts = []
            for start in range(0, length, chunk):
                args = (q, k, v, scale, start, min(start + chunk, length))
                parts.append(cp.checkpoint(self._classification_chunk, *args,
                                           use_reentrant=False) if grad
                             else self._classification_chunk(*args))
            sv = torch.cat([p[0] for p in parts], dim=2)  # (N, g, L, dv)
            sve = torch.cat([p[1] for p in parts], dim=2)
            both = torch.stack([sv, sve], dim=-1)  # (sv_c, sve_c) per channel
            both = both.permute(0, 1, 3, 4, 2).reshape(n, 2 * self.out_channels, length)
            out = self.bn_output(both).view(n, self.out_channels, 2, length).sum(2)
        return out.view(n, -1, h, w).to(x.dtype)

    # --- binary term: memory-efficient --------------------------------------------
    #: the 2-D relative form's chunks with a gradient (:class:`ChunkedAttention`): one
    #: head of one image, at most this many logits (queries·L); two buffers of that size
    relative_chunk_elements = 1 << 24
    #: the same without a gradient (one logits buffer for all chunks): 2²⁴ = 512
    #: queries at 128×256
    relative_inference_chunk_elements = 1 << 24

    @staticmethod
    def _relative_chunk_into(q, k, v, alpha, beta, buffer, out) -> None:
        """A chunk of :class:`ChunkedAttention`'s relative form without a gradient, in
        place: ``q (c, d)``, ``k (L, d)``, ``v (L, dv)``, ``α (c, H)``, ``β (c, W)`` →
        ``out (c, dv)``. The relative logits ``α[y_j] + β[x_j]`` are written into
        ``buffer`` first (one broadcast sum) and ``q kᵀ`` is accumulated onto them by the
        product itself (``baddbmm``, no extra pass over the logits); softmax in place;
        ``· v`` into ``out``. Keys past the ``H·W`` grid are padding (probability 0)."""
        p = ChunkedAttention.probabilities(q[None], k[None], alpha[None], beta[None], buffer)
        torch.mm(p[0], v, out=out)

    def _relative_attention(self, q, k, v, terms, grad: bool):
        """The 2-D relative attention (scaled ``q``) over chunks of queries, so at most
        one chunk's ``c×L`` logits exist at a time: ``2·L²·(d + dv)`` matmul FLOPs per
        head, where the single fused call on the augmented ``[q, α, β]`` / ``[k,
        onehot(y), onehot(x)]`` runs ``2·L²·(d + H + W)`` and as much again on its
        zero-padded values (it remains the path of exported and compiled graphs: one
        op, any size). ``terms(start, c)`` gives the chunk's scaled ``α (B, c, H)`` and
        ``β (B, c, W)``. With ``grad``: :class:`ChunkedAttention` (chunks of
        ``relative_chunk_elements // L`` queries of one head, probabilities recomputed
        in its backward); without, one logits buffer serves every chunk (one head of
        one image each: ``relative_inference_chunk_elements // L`` queries) and they
        write into one output."""
        n, g, length, _ = q.shape
        b, dv = n * g, v.shape[-1]
        # (B, L, ·) and contiguous once: every chunk multiplies by all of k and v
        q, k, v = (t.reshape(b, length, t.shape[-1]).contiguous() for t in (q, k, v))
        if grad:
            alpha, beta = terms(0, length)
            rows = min(length, max(1, self.relative_chunk_elements // length))
            out = ChunkedAttention.apply(q, k, v, alpha, beta, 1., rows * length)
        else:
            # one head of one image per chunk, so a chunk of the same logits has more
            # queries (larger products) than one spanning all heads
            out = q.new_empty(b, length, dv)
            k, v = pad_keys(k, v)  # to a multiple of KEY_ALIGN keys (masked)
            keys = k.shape[1]
            rows = min(length, max(1, self.relative_inference_chunk_elements // keys))
            buffer = q.new_empty(rows * keys)
            for s in range(0, length, rows):
                c = min(rows, length - s)
                alpha, beta = terms(s, c)
                for i in range(b):
                    self._relative_chunk_into(q[i, s:s + c], k[i], v[i], alpha[i], beta[i],
                                              buffer, out[i, s:s + c])
        return out.view(n, g, length, dv)

    def _chunk_relative_terms(self, q_rel: torch.Tensor, h: int, w: int):
        """``terms(start, c)`` for :meth:`_relative_attention` that makes a chunk's ``α``
        and ``β`` from its own queries (``q_rel``: ``q`` scaled by the relative term's BN
        scale) by the per-offset products with the two tables (the official ``L·(2H − 1
        + 2W − 1)·d`` MACs), so the ``(L, H)`` and ``(L, W)`` tensors of all queries
        never exist (inference)."""
        n, g, length, d = q_rel.shape
        b = n * g
        q_rel = q_rel.reshape(b, length, d)
        table_h = offset_table(self.rel_height, h).to(q_rel.dtype).t()  # (d, 2H - 1)
        table_w = offset_table(self.rel_width, w).to(q_rel.dtype).t()
        offsets_h = torch.arange(h, device=q_rel.device) + (h - 1)  # key row + H - 1
        offsets_w = torch.arange(w, device=q_rel.device) + (w - 1)

        def terms(start: int, c: int):
            pos = torch.arange(start, start + c, device=q_rel.device).unsqueeze(1)
            qr = q_rel[:, start:start + c]
            # α_i[y] = q_i·r^h[y − y_i]: the per-offset products, then the H offsets
            alpha = torch.gather(qr @ table_h, -1, (offsets_h - pos // w).expand(b, c, h))
            beta = torch.gather(qr @ table_w, -1, (offsets_w - pos % w).expand(b, c, w))
            return alpha, beta
        return terms

    def binary_efficient(self, x: torch.Tensor) -> torch.Tensor:
        """``B (N, C, H, W)`` without an ``L×L`` map: chunks of queries (2-D relative
        form, eager) or one fused attention call."""
        if self.pe_type == 'classification':
            return self.binary_efficient_classification(x)
        n, _, h, w = x.shape
        g, length = self.num_heads, h * w
        q, k, v = self.qkv(x)
        with no_autocast(x):
            q, k, v = upcast(q), upcast(k), upcast(v)
            bn, pairs = self.bn_similarity, n * length * length
            stats = uses_batch_stats(bn)
            mean = sq = None
            if stats:
                mean, sq = pair_moments(q, k)
            if self.pe_type == 'detection_qr':
                # inference (eval statistics, no gradient, eager): α and β per chunk
                lazy = not (stats or traced() or torch.is_grad_enabled() and (
                    q.requires_grad or self.rel_height.requires_grad
                    or self.rel_width.requires_grad))
                alpha, beta = (None, None) if lazy else self.relative_2d(q, h, w)
                if stats:
                    a, b = alpha.double(), beta.double()
                    sa, sb = a.sum(-1), b.sum(-1)  # (N, g, L)
                    r_mean = (w * sa + h * sb).sum((0, 2)) / pairs
                    r_sq = (w * (a * a).sum(-1) + h * (b * b).sum(-1)
                            + 2 * sa * sb).sum((0, 2)) / pairs
                    mean, sq = torch.cat([mean, r_mean]), torch.cat([sq, r_sq])
                scale = bn_logit_scale(bn, mean, sq, pairs).to(q.dtype)
                s_qk, s_r = scale[:g].view(1, g, 1, 1), scale[g:].view(1, g, 1, 1)
                # traced graphs (export, compile, the jit-traced FLOP counter) keep the
                # one fused call: a trace would unroll thousands of chunks
                if lazy:
                    sv = self._relative_attention(
                        q * s_qk, k, v, self._chunk_relative_terms(q * s_r, h, w), False)
                    return self._binary_output(sv, h, w).to(x.dtype)
                if not traced():
                    ra, rb = ((t * s_r).reshape(n * g, length, t.shape[-1]).contiguous()
                              for t in (alpha, beta))
                    grad = torch.is_grad_enabled() and any(
                        t.requires_grad for t in (q, k, v, ra, rb))
                    sv = self._relative_attention(
                        q * s_qk, k, v, lambda s, c: (ra[:, s:s + c], rb[:, s:s + c]), grad)
                    return self._binary_output(sv, h, w).to(x.dtype)
                # one-hot row / column of each position (a comparison, not F.one_hot,
                # whose class count would fix H and W in an exported graph)
                pos = torch.arange(length, device=x.device).unsqueeze(1)  # (L, 1)
                rows = (pos // w == torch.arange(h, device=x.device)).to(q.dtype)  # (L, H)
                cols = (pos - pos // w * w == torch.arange(w, device=x.device)).to(q.dtype)
                query = torch.cat([q * s_qk, alpha * s_r, beta * s_r], dim=-1)
                key = torch.cat([k, rows.expand(n, g, -1, -1), cols.expand(n, g, -1, -1)],
                                dim=-1)
            else:
                scale = bn_logit_scale(bn, mean, sq, pairs).to(q.dtype)
                query, key = q * scale.view(1, g, 1, 1), k
            sv, _ = softmax_attention(query.reshape(n * g, length, -1),
                                      key.reshape(n * g, length, -1),
                                      v.reshape(n * g, length, -1), scale=1.0)
            out = self._binary_output(sv.view(n, g, length, self.v_channels), h, w)
        return out.to(x.dtype)

    def _binary_output(self, sv: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The heads' outputs ``(N, g, L, dv)`` as ``BN(B) (N, C, H, W)``."""
        n = sv.shape[0]
        return self.bn_output(sv.permute(0, 1, 3, 2).reshape(n, -1, h * w)).view(n, -1, h, w)

    # --- the block ------------------------------------------------------------------
    def fuse(self, unary: Optional[torch.Tensor], binary: Optional[torch.Tensor]):
        """``(out, gate)``: ``U + g ⊙ B`` (``gate``), ``U + B`` (``sum``) or one term."""
        if unary is None:
            return binary, None
        if binary is None:
            return unary, None
        if self.fusion == 'sum':
            return unary + binary, None
        gate = torch.sigmoid(self.projection(self.reasoning(torch.cat([unary, binary], 1))))
        return unary + gate * binary, gate

    def _run(self, fn, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def _forward(self, x: torch.Tensor, explicit: bool):
        self.check_input(x)
        h, w = x.shape[-2:]
        self.check_size(h, w)
        unary = self._run(self.unary_term, x) if self.unary else None
        binary, attn = None, None
        if self.binary:
            if explicit:
                binary, attn = self.binary_explicit(x)
            else:
                binary = self._run(self.binary_efficient, x)
        out, gate = self.fuse(unary, binary)
        if self.pooling is not None:
            out = self.pooling(out)
        return out, dict(attention=attn, unary=unary, binary=binary, gate=gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Memory-efficient path."""
        return self._forward(x, explicit=False)[0]

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict]:
        """Explicit path: the output and the maps in the analysis tools' vocabulary,
        ``{'pairwise': (N, L, L)}`` — the attention averaged over the heads (empty for
        the conv-only arm). Per-head maps and the terms: :meth:`terms`."""
        out, terms = self._forward(x, explicit=True)
        attn = terms['attention']
        return out, ({} if attn is None else {'pairwise': attn.mean(1)})

    def terms(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Explicit path: ``{'output', 'attention' (N, heads, L, L), 'unary', 'binary',
        'gate' (N, C, H, W)}`` — the terms this block has (before pooling)."""
        out, terms = self._forward(x, explicit=True)
        return dict({k: v for k, v in terms.items() if v is not None}, output=out)

    def term_macs(self, batch: int, h: int, w: int) -> Dict[str, int]:
        """Multiply-adds of each term for a ``batch × in_channels × h × w`` input, as
        the official computation does them (BN, softmax, pooling and the deformable
        sampling not counted):

        * ``unary``: the grouped 3×3 (a DCN adds its offset 3×3 conv) and the 1×1;
        * ``qkv``: the 1×1 projection; ``attention``: ``q·k`` and ``Σ a v``,
          ``N·heads·L²·(d + dv)``;
        * ``relative``: ``detection_qr`` ``q`` against both tables, ``N·heads·L·(2H − 1
          + 2W − 1)·d`` (the official per-offset logits; mmctx's fused path instead
          carries them as ``H + W`` extra query/key dimensions, ``N·heads·L²·(H + W)``
          inside the attention call); ``classification`` ``q·r^q``, ``k·r^k`` and
          ``Σ a r^v``, ``N·heads·L²·(2d + dv)``;
        * ``gate``: the two 1×1 convs of the dynamic fusion.
        """
        n, length, g = batch, h * w, self.num_heads
        c, cin, d, dv = self.out_channels, self.in_channels, self.qk_channels, self.v_channels
        out = {}
        if self.unary:
            unary = n * length * c * (cin // g) * 9 + (n * length * c * c if g != 1 else 0)
            if self.dcn is not None:
                offsets = 2 * 9 * int(self.dcn.get('deform_groups', 1))
                unary += n * length * offsets * cin * 9
            out['unary'] = unary
        if self.binary:
            out['qkv'] = n * length * cin * 2 * c
            out['attention'] = n * g * length * length * (d + dv)
            if self.pe_type == 'detection_qr':
                out['relative'] = n * g * length * (2 * h - 1 + 2 * w - 1) * d
            elif self.pe_type == 'classification':
                out['relative'] = n * g * length * length * (2 * d + dv)
            else:
                out['relative'] = 0
        if self.unary and self.binary and self.fusion == 'gate':
            out['gate'] = n * length * (2 * c * c + c * c)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Loads 2-D relative tables made for another size (cropped / interpolated to
        this block's ``pe_size`` as in :func:`offset_table`, e.g. an ImageNet or 1024²
        checkpoint into a model for other sizes) and ignores the official code's
        ``flatten_index`` buffer (recomputed here)."""
        for name in ('rel_height', 'rel_width'):
            key, own = prefix + name, getattr(self, name, None)
            table = state_dict.get(key)
            if own is not None and table is not None and table.dim() == 2 \
                    and table.shape[1] == own.shape[1] and table.shape[0] != own.shape[0] \
                    and table.shape[0] % 2 == 1:
                state_dict[key] = offset_table(table, (own.shape[0] + 1) // 2)
        state_dict.pop(prefix + 'flatten_index', None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, num_heads={self.num_heads}, '
                f'pe_type={self.pe_type!r}, pe_size={self.pe_size}, stride={self.stride}, '
                f'unary={self.unary}, binary={self.binary}, fusion={self.fusion!r}')
