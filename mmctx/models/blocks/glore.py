"""GloRe: graph-based global reasoning unit.

* Graph-Based Global Reasoning Networks (Chen et al., CVPR 2019) —
  https://arxiv.org/abs/1811.12814; official code ``facebookresearch/GloRe``
  (``network/global_reasoning_unit.py``), whose parameter names this block keeps.

Low-rank steps (:mod:`mmctx.models.blocks.low_rank`):

=================  ==========================================================
features           state ``X_s = conv_state(x)`` (``2·num_mid`` channels) and
                   projection ``B = conv_proj(x)`` (``num_mid`` nodes), 1×1 with bias
projection         ``V = X_s Bᵀ`` — raw ``B``, no softmax; ``× 1/L`` with
                   ``normalize=True`` (the official switch for inputs whose size
                   varies)
interaction        graph convolution: ``h = Conv1d_nodes(V) + V`` (the
                   node-wise adjacency with the identity inside), ``ReLU``, then the
                   state-wise ``Conv1d`` without bias
re-projection      the same ``B``: ``Y = V' B``
fusion             ``x + BN(conv_extend(Y))``, BN eps 1e-4, its weight zero-initialised
=================  ==========================================================

Init as the official network: convs Xavier-uniform with zero biases, BN γ=1, β=0,
then the last BN's γ = 0 (the block starts as the identity). The default
``normalize=False`` is the official one; set it for segmentation / detection, where
input sizes vary (without it the descriptors scale with the number of positions).
The effective map of :meth:`forward_with_attention` is ``Bᵀ B`` (× 1/L): the map
before the graph convolution, which is not linear.
"""
from typing import Optional

import torch
import torch.nn as nn

from ...registry import MODELS
from ._base import check_bool, check_int, no_autocast, pointwise, upcast
from .low_rank import LowRankBlock, build_norm


class GraphConvolution(nn.Module):
    """GloRe's GCN over ``num_node`` nodes of ``num_state`` channels (official names
    ``conv1`` node-wise, ``conv2`` state-wise)."""

    def __init__(self, num_state: int, num_node: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(num_node, num_node, kernel_size=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(num_state, num_state, kernel_size=1, bias=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """``v (N, num_node, num_state)`` → the same shape."""
        h = self.conv1(v) + v  # (I + A_g) V: the adjacency acts on the node axis
        return self.conv2(self.relu(h).transpose(1, 2)).transpose(1, 2)


@MODELS.register_module()
class GloReBlock(LowRankBlock):
    """GloRe unit.

    Args:
        in_channels: input channels C.
        num_mid: number of nodes (the state has ``2·num_mid`` channels); default
            ``C // 4`` (the official placements: C=512 → 128, C=1024 → 256).
        normalize: multiply the projection by ``1/L`` (variable input sizes).
        norm_cfg: the zero-initialised output norm (official: BN, eps 1e-4).
        dim: spatial rank of the input (1, 2 or 3).
    """

    _abbr_ = 'glore_block'

    def __init__(self, in_channels: int, num_mid: Optional[int] = None,
                 normalize: bool = False,
                 norm_cfg: Optional[dict] = dict(type='BN', eps=1e-4),
                 dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        if num_mid is None:
            num_mid = in_channels // 4
            if num_mid < 1:
                raise ValueError(f'num_mid defaults to in_channels // 4, 0 for '
                                 f'in_channels={in_channels}: set num_mid')
        self.num_mid = check_int('num_mid', num_mid)
        self.normalize = check_bool('normalize', normalize)
        if norm_cfg is None:
            raise ValueError('GloReBlock needs norm_cfg: its output norm is what starts '
                             'the block as the identity (weight 0)')
        self.num_s, self.num_n = 2 * num_mid, num_mid
        self.conv_state = pointwise(dim, in_channels, self.num_s)
        self.conv_proj = pointwise(dim, in_channels, self.num_n)
        self.gcn = GraphConvolution(self.num_s, self.num_n)
        self.conv_extend = pointwise(dim, self.num_s, in_channels, bias=False)
        self.blocker = build_norm(norm_cfg, in_channels, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(m.weight, gain=1.)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.blocker.reset_parameters()
        nn.init.zeros_(self.blocker.weight)

    def features(self, x):
        n = x.shape[0]
        return {'value': self.conv_state(x).reshape(n, self.num_s, -1),
                'proj': self.conv_proj(x).reshape(n, self.num_n, -1)}

    def project(self, f):
        b = f['proj']
        return b * (1. / b.shape[-1]) if self.normalize else b

    def describe(self, f, gather):
        with no_autocast(gather):  # a sum over all positions: fp32
            return torch.bmm(upcast(gather), upcast(f['value']).transpose(1, 2))

    def interact(self, desc, f):
        return self.gcn(desc.to(f['value'].dtype))

    def reproject(self, f, gather):
        return f['proj'].transpose(1, 2).to(gather.dtype)  # the same B, without 1/L

    def fuse(self, x, y):
        return x + self.blocker(self.conv_extend(y.to(x.dtype)))

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, num_mid={self.num_mid}, normalize={self.normalize}'
