"""A²: double attention (gather, then distribute).

* A²-Nets: Double Attention Networks (Chen et al., NeurIPS 2018) —
  https://arxiv.org/abs/1810.11579. No official code was found (REFERENCE-2 §A.1).

Low-rank steps (:mod:`mmctx.models.blocks.low_rank`):

=================  ==========================================================
features           ``A = φ(x)`` (``m`` channels, the pooled features), ``B =
                   θ(x)`` and ``V = ρ(x)`` (``n`` channels each); 1×1 convs
projection         gather: each of the ``n`` rows of ``B`` **softmaxed over the
                   positions**; descriptors ``G = A · softmax_L(B)ᵀ`` (``m × n``)
re-projection      distribute: ``softmax over the n descriptors`` of ``V`` at each
                   position; ``z_i = Σ_k softmax_n(V)_ki g_k``
fusion             ``x + conv_out(z)`` (1×1 ``m → C``, optional norm)
=================  ==========================================================

The two softmax axes are the paper's (gather over positions, distribute over
descriptors); some unofficial code normalises the second over positions — wrong.
``G`` is computed first: nothing ``L × L`` is formed (a 32-frame 28² clip: ~1 MB).

Choices where the paper's details were not found ([NF] in REFERENCE-2): ``m = n =
C // reduction`` with ``reduction=4``; the convs have biases (PyTorch's default
init); the last layer of ``conv_out`` (its norm, or the conv without one) is
zero-initialised, so the block starts as the identity (safe in a pretrained
network), as mmctx's other residual blocks; softmaxes run in fp32 under autocast.
"""
from typing import Optional

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule

from ...registry import MODELS
from ._base import check_int, no_autocast, pointwise, upcast, zero_init_last
from .low_rank import LowRankBlock, norm_cfg_for


@MODELS.register_module()
class DoubleAttentionBlock(LowRankBlock):
    """A² block (gather over positions, distribute over descriptors).

    Args:
        in_channels: input channels C.
        reduction: ``m`` and ``n`` default to ``C // reduction``.
        feature_channels: ``m``, the channels of the gathered features (default
            ``C // reduction``).
        num_descriptors: ``n``, the number of global descriptors (default ``C //
            reduction``).
        norm_cfg: norm after ``conv_out`` (zero-initialised), e.g. ``dict(type='BN')``.
        dim: spatial rank of the input (1, 2 or 3).
    """

    _abbr_ = 'a2_block'

    def __init__(self, in_channels: int, reduction: int = 4,
                 feature_channels: Optional[int] = None,
                 num_descriptors: Optional[int] = None,
                 norm_cfg: Optional[dict] = None, dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        self.reduction = check_int('reduction', reduction)
        default = in_channels // reduction
        if default < 1 and (feature_channels is None or num_descriptors is None):
            raise ValueError(f'reduction={reduction} leaves 0 channels for '
                             f'in_channels={in_channels}; use reduction <= {in_channels}')
        m = check_int('feature_channels', default if feature_channels is None
                      else feature_channels)
        n = check_int('num_descriptors', default if num_descriptors is None
                      else num_descriptors)
        self.feature_channels, self.num_descriptors = m, n
        self.conv_a = pointwise(dim, in_channels, m)
        self.conv_b = pointwise(dim, in_channels, n)
        self.conv_v = pointwise(dim, in_channels, n)
        self.conv_out = ConvModule(m, in_channels, 1, conv_cfg=dict(type=f'Conv{dim}d'),
                                   norm_cfg=norm_cfg_for(norm_cfg, dim), act_cfg=None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.conv_a, self.conv_b, self.conv_v, self.conv_out.conv):
            conv.reset_parameters()
        if self.conv_out.with_norm:
            self.conv_out.norm.reset_parameters()
        zero_init_last(self.conv_out)

    def features(self, x):
        n = x.shape[0]
        return {'value': self.conv_a(x).reshape(n, self.feature_channels, -1),
                'b': self.conv_b(x).reshape(n, self.num_descriptors, -1),
                'v': self.conv_v(x).reshape(n, self.num_descriptors, -1)}

    def project(self, f):
        with no_autocast(f['b']):
            return upcast(f['b']).softmax(dim=-1)  # gather: over positions

    def describe(self, f, gather):
        with no_autocast(gather):
            return torch.bmm(gather, upcast(f['value']).transpose(1, 2))  # (N, n, m)

    def reproject(self, f, gather):
        with no_autocast(gather):
            return upcast(f['v']).softmax(dim=1).transpose(1, 2)  # over descriptors

    def fuse(self, x, y):
        return x + self.conv_out(y.to(x.dtype))

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, feature_channels={self.feature_channels}, '
                f'num_descriptors={self.num_descriptors}')
