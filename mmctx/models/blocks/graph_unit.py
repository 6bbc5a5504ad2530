"""GCU: graph convolutional units — project a feature map onto a few learnt Gaussian
vertices, reason over them, re-project.

* Beyond Grids: Learning Graph Representations for Visual Recognition (Li & Gupta,
  NeurIPS 2018) — https://papers.nips.cc/paper/8135; official code not found.

Low-rank steps (:mod:`mmctx.models.blocks.low_rank`), for each graph unit ``u`` with
``K_u`` vertices, centres ``w_k`` and scales ``σ_k`` (both ``(C,)``, learnt), on the
flattened input ``x_i`` ``(C,)``:

=================  ==========================================================
features           ``value = x`` (no reduction: the vertices live in the input
                   space)
projection         soft assignment ``q_i^k = softmax_k(−½ ‖(x_i − w_k) / σ_k‖²)``
                   over the unit's ``K_u`` vertices; ``gather_ki = q_i^k / Σ_j q_j^k``
description        ``z_k = normalize₂(Σ_i gather_ki (x_i − w_k) / σ_k)``
interaction        ``Z̃ = ReLU(A Z W_g)``, ``A = softmax_row(Z Zᵀ)`` (``adjacency=
                   'softmax'``) or ``Z Zᵀ`` (``'dot'``), ``W_g`` ``C → unit_channels``
re-projection      ``X̃_i = Σ_k q_i^k z̃_k`` — the same assignments ``Q``
fusion             units concatenated → ``x + γ·norm(conv1×1(·))`` ``→ C``, ``γ = 0``
=================  ==========================================================

All units run in one pass: their vertices are stacked (``K = Σ K_u``), the assignment
softmax runs within each unit's vertices, and the interaction returns a block-diagonal
``(K, U·unit_channels)`` matrix, so the shared re-projection writes each unit's
output into its own channels (the concatenation).

[NF] choices (the paper's exact forms are not known):

* **Units**: several at once, as the paper (graphs of 2, 4, 8 and 32 vertices, default
  ``num_nodes=(2, 4, 8, 32)``), each with ``C // U`` output channels so the width of
  the concatenation is C whatever the number of units.
* **Adjacency** from vertex affinity: ``softmax_row(Z Zᵀ)`` by default (``z`` are unit
  vectors, so ``Z Zᵀ`` is their cosine similarity; as LatentGNN's latent graph).
* **Fusion**: add with a zero-initialised ``γ`` (the block starts as the identity and
  keeps C channels, the plugin contract) instead of the paper's concatenation with the
  input; in :class:`~mmctx.models.heads.ContextHead` with ``concat_input=True`` the
  head concatenates its input with the block's output anyway.
* **Init**: centres ``N(0, 1/C)`` (inner products with the input of order 1 whatever
  C), ``σ = 1`` (parametrised as ``log σ``, so it stays positive), ``W_g`` and the
  output conv PyTorch's default, ``γ = 0``. No BN inside the graph convolution.

The assignment logits, the softmax and the descriptors run in fp32 with autocast
disabled (``‖·‖²`` over C channels overflows fp16). The effective map of
:meth:`forward_with_attention` is the average over units of ``Q_u G_u`` (rows sum to
1): the map before the graph convolution, which is not linear.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from ._base import check_choice, check_int, no_autocast, pointwise, upcast
from .low_rank import LowRankBlock, build_norm

ADJACENCIES = ('softmax', 'dot')


@MODELS.register_module()
class GraphUnitBlock(LowRankBlock):
    """Graph convolutional units (GCU).

    Args:
        in_channels: input channels C (also the vertex feature width).
        num_nodes: vertices ``K_u`` of each unit (an int for one unit).
        unit_channels: output channels of each unit's graph convolution; default
            ``C // len(num_nodes)``.
        adjacency: ``'softmax'`` (row-softmax of ``Z Zᵀ``) or ``'dot'`` (``Z Zᵀ``).
        norm_cfg: the norm after the output conv (``None``: conv with bias).
        dim: spatial rank of the input (1, 2 or 3).

    Shape:
        ``(N, C, *S)`` → ``(N, C, *S)``.
    """

    _abbr_ = 'gcu_block'

    def __init__(self, in_channels: int, num_nodes: Union[int, Sequence[int]] = (2, 4, 8, 32),
                 unit_channels: Optional[int] = None, adjacency: str = 'softmax',
                 norm_cfg: Optional[dict] = dict(type='BN'), dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        if isinstance(num_nodes, int) and not isinstance(num_nodes, bool):
            num_nodes = [num_nodes]
        if not isinstance(num_nodes, (list, tuple)) or not num_nodes:
            raise TypeError(f'num_nodes must be an int or a list of ints (one per unit), '
                            f'got {num_nodes!r}')
        self.num_nodes = tuple(check_int(f'num_nodes[{i}]', k) for i, k in enumerate(num_nodes))
        units = len(self.num_nodes)
        if unit_channels is None:
            unit_channels = in_channels // units
            if unit_channels < 1:
                raise ValueError(f'unit_channels defaults to in_channels // {units} units, '
                                 f'0 for in_channels={in_channels}: set unit_channels')
        self.unit_channels = check_int('unit_channels', unit_channels)
        self.adjacency = check_choice('adjacency', adjacency, ADJACENCIES)
        total = sum(self.num_nodes)
        self.centres = nn.Parameter(torch.empty(total, in_channels))
        self.log_sigma = nn.Parameter(torch.empty(total, in_channels))
        self.graph_convs = nn.ModuleList(
            nn.Linear(in_channels, unit_channels, bias=False) for _ in self.num_nodes)
        self.conv_out = pointwise(dim, units * unit_channels, in_channels,
                                  bias=norm_cfg is None)
        self.norm = None if norm_cfg is None else build_norm(norm_cfg, in_channels, dim)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.centres, std=self.in_channels ** -0.5)
        nn.init.zeros_(self.log_sigma)
        for m in (*self.graph_convs, self.conv_out, self.norm):
            if m is not None:
                m.reset_parameters()
        nn.init.zeros_(self.gamma)

    def features(self, x):
        return {'value': x.reshape(x.shape[0], self.in_channels, -1)}  # (N, C, L)

    def project(self, f):
        """Assignments ``q`` (per unit a softmax over its vertices) → ``f['assign']``
        ``(N, K, L)``; returns ``gather`` = ``q`` normalised over positions."""
        with no_autocast(f['value']):
            v = upcast(f['value'])  # (N, C, L)
            inv_var = torch.exp(-2 * self.log_sigma).to(v.dtype)  # (K, C) 1/σ²
            w = self.centres.to(v.dtype)
            # ‖(x − w_k)/σ_k‖² = (1/σ_k²)·x² − 2 (w_k/σ_k²)·x + Σ_c w_k²/σ_k²
            dist = (torch.matmul(inv_var, v * v) - 2 * torch.matmul(w * inv_var, v)
                    + (w * w * inv_var).sum(-1, keepdim=True))  # (N, K, L)
            q = torch.cat([t.softmax(dim=1) for t in (-0.5 * dist).split(self.num_nodes, 1)],
                          dim=1)
            f['assign'] = q
            return q / q.sum(-1, keepdim=True).clamp_min(1e-12)

    def describe(self, f, gather):
        """``z_k = normalize₂((Σ_i gather_ki x_i − (Σ_i gather_ki) w_k) / σ_k)`` (the
        second sum is 1 unless vertex ``k`` has no mass)."""
        with no_autocast(gather):
            v = upcast(f['value']).to(gather.dtype)
            mean = torch.bmm(gather, v.transpose(1, 2))  # (N, K, C)
            z = (mean - gather.sum(-1, keepdim=True) * self.centres.to(mean.dtype)) \
                * torch.exp(-self.log_sigma).to(mean.dtype)
            return F.normalize(z, dim=-1)

    def interact(self, desc, f):
        """Per unit ``Z̃_u = ReLU(A_u Z_u W_u)``, written block-diagonally into
        ``(N, K, U·unit_channels)``."""
        n, d = desc.shape[0], self.unit_channels
        out = desc.new_zeros(n, desc.shape[1], len(self.num_nodes) * d)
        start = 0
        with no_autocast(desc):
            for u, (k, conv) in enumerate(zip(self.num_nodes, self.graph_convs)):
                z = desc[:, start:start + k]  # (N, K_u, C)
                adj = torch.bmm(z, z.transpose(1, 2))  # (N, K_u, K_u)
                if self.adjacency == 'softmax':
                    adj = adj.softmax(dim=-1)
                h = torch.bmm(adj, z) @ conv.weight.to(z.dtype).t()  # (N, K_u, d)
                out[:, start:start + k, u * d:(u + 1) * d] = torch.relu(h)
                start += k
        return out

    def reproject(self, f, gather):
        return f['assign'].transpose(1, 2)  # (N, L, K): the same Q

    def fuse(self, x, y):
        y = self.conv_out(y.to(x.dtype))
        return x + self.gamma * (y if self.norm is None else self.norm(y))

    def forward_with_attention(self, x):
        """The output and ``{'pairwise': (N, L, L)}``, the mean over units of
        ``Q_u G_u`` (rows sum to 1); the assignments themselves:
        :meth:`assignments` (``'gather'`` ``(N, K, L)``, ``'distribute'`` = ``Q``
        ``(N, L, K)``, the units' vertices stacked)."""
        out, maps = super().forward_with_attention(x)
        maps['pairwise'] = maps['pairwise'] / len(self.num_nodes)
        return out, maps

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, num_nodes={self.num_nodes}, '
                f'unit_channels={self.unit_channels}, adjacency={self.adjacency!r}')


__all__ = ['GraphUnitBlock']
