"""Query-independent context blocks: GC, SNL and SE.

GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond
(Cao et al., ICCVW 2019 / TPAMI 2020) — https://arxiv.org/abs/1904.11492

GCNet writes all three as **context modeling → transform → fusion**:

============  =========================  ======================  ===========
block         context modeling           transform               fusion
============  =========================  ======================  ===========
GC            attention pooling (1×1     bottleneck C→C·r→C       add (and/or
              mask, softmax over         with LayerNorm + ReLU    mul)
              positions)
SNL           attention pooling          one 1×1 conv C→C         add
SE            average pooling            bottleneck, ReLU, no LN  mul (sigmoid)
============  =========================  ======================  ===========

One class, :class:`GlobalContextBlock`, implements the three steps; SNL and SE are
presets of it.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...registry import MODELS
from ._base import (ContextBlockBase, check_choice, no_autocast, pointwise,
                    pointwise_logits, reduced_channels, upcast, zero_init_last)

FUSIONS = ('channel_add', 'channel_mul')


def attention_pool_weights(mask_logits: torch.Tensor) -> torch.Tensor:
    """Softmax over positions of ``(N, 1, L)`` logits, in fp32 (or fp64)."""
    with no_autocast(mask_logits):
        return upcast(mask_logits).softmax(dim=-1)


@MODELS.register_module()
class GlobalContextBlock(ContextBlockBase):
    """Global Context block, with mmcv ``ContextBlock`` semantics (and key names).

    Args:
        in_channels: input channels.
        ratio: bottleneck ratio of the transform (GCNet: 1/16 in backbones, 1/4 in
            mmseg's GCHead). ``None`` means a single 1×1 conv C→C (SNL's transform).
        pooling_type: ``'att'`` (attention pooling) or ``'avg'`` (average pooling).
        fusion_types: non-empty subset of ``('channel_add', 'channel_mul')``.
        dim: spatial rank of the input (1, 2 or 3).
        transform_norm: LayerNorm (over channels and the pooled singleton
            positions, as mmcv) after the first conv of a bottleneck transform.

    Shape:
        ``(N, C, *S)`` → ``(N, C, *S)`` with ``len(S) == dim``.

    Note:
        The last layer of every transform is zero-initialised, as in mmcv. With
        ``channel_add`` only, a new block is the identity; ``channel_mul`` starts
        as ``x * sigmoid(0) = x / 2`` (mmcv and GCNet behave the same way).
    """

    _abbr_ = 'gc_block'

    def __init__(self,
                 in_channels: int,
                 ratio: Optional[float] = 1. / 16,
                 pooling_type: str = 'att',
                 fusion_types: Sequence[str] = ('channel_add', ),
                 dim: int = 2,
                 transform_norm: bool = True) -> None:
        super().__init__(in_channels, dim)
        self.pooling_type = check_choice('pooling_type', pooling_type, ('att', 'avg'))
        if isinstance(fusion_types, str) or not isinstance(fusion_types, (list, tuple)):
            raise TypeError('fusion_types must be a list or tuple of '
                            f'{list(FUSIONS)}, got {fusion_types!r}')
        if len(fusion_types) == 0:
            raise ValueError(f'fusion_types must name at least one of {list(FUSIONS)}, '
                             'got an empty sequence')
        for fusion in fusion_types:
            check_choice('each of fusion_types', fusion, FUSIONS)
        if len(set(fusion_types)) != len(fusion_types):
            raise ValueError(f'fusion_types has duplicates: {fusion_types!r}')
        self.fusion_types: Tuple[str, ...] = tuple(fusion_types)
        self.ratio = ratio
        self.planes = None if ratio is None else reduced_channels(in_channels, ratio)
        self.transform_norm = bool(transform_norm)

        # context modeling
        self.conv_mask = pointwise(dim, in_channels, 1) if pooling_type == 'att' else None
        # transform (one per fusion)
        self.channel_add_conv = (self._make_transform()
                                 if 'channel_add' in self.fusion_types else None)
        self.channel_mul_conv = (self._make_transform()
                                 if 'channel_mul' in self.fusion_types else None)
        self.reset_parameters()

    def _make_transform(self) -> nn.Module:
        if self.planes is None:
            return nn.Sequential(pointwise(self.dim, self.in_channels, self.in_channels))
        layers = [pointwise(self.dim, self.in_channels, self.planes)]
        if self.transform_norm:
            layers.append(nn.LayerNorm([self.planes] + [1] * self.dim))
        layers += [nn.ReLU(inplace=True),
                   pointwise(self.dim, self.planes, self.in_channels)]
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        if self.conv_mask is not None:
            nn.init.kaiming_normal_(self.conv_mask.weight, mode='fan_in',
                                    nonlinearity='relu')
            nn.init.zeros_(self.conv_mask.bias)
        zero_init_last(self.channel_add_conv)
        zero_init_last(self.channel_mul_conv)

    def context_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention-pooling weights ``(N, 1, L)`` (uniform for ``'avg'``)."""
        n, c = x.shape[:2]
        if self.conv_mask is None:
            length = x[0, 0].numel()
            return upcast(x.new_full((n, 1, length), 1. / length))
        return attention_pool_weights(pointwise_logits(self.conv_mask, x))

    def context(self, x: torch.Tensor,
                weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Context modeling: ``(N, C, *S)`` → ``(N, C, 1, ...)``."""
        n, c = x.shape[:2]
        if self.conv_mask is None:
            context = x.reshape(n, c, -1).mean(dim=-1)  # (N, C)
        else:
            if weights is None:
                weights = self.context_weights(x)  # (N, 1, L)
            with no_autocast(x):  # (N, C, L) @ (N, L, 1) -> (N, C, 1)
                context = torch.bmm(upcast(x.reshape(n, c, -1)),
                                    weights.transpose(1, 2)).to(x.dtype)
        return context.reshape((n, c) + (1, ) * self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self._fuse(x, self.context(x))

    def forward_with_attention(self, x: torch.Tensor):
        """The output and ``{'unary': (N, 1, L)}``: the pooling weights, a
        query-independent (unary) attention map shared by every position."""
        self.check_input(x)
        weights = self.context_weights(x)
        return self._fuse(x, self.context(x, weights)), {'unary': weights}

    def _fuse(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, ratio={self.ratio}, '
                f'pooling_type={self.pooling_type!r}, fusion_types={self.fusion_types}')


@MODELS.register_module()
class SimplifiedNonLocalBlock(GlobalContextBlock):
    """GCNet's Simplified NL: ``x + W_v Σ_j softmax_j(W_k x) x_j``.

    Attention pooling, a single 1×1 conv C→C as transform (zero-initialised, so a new
    block is the identity), add fusion.
    """

    _abbr_ = 'snl_block'

    def __init__(self, in_channels: int, dim: int = 2) -> None:
        super().__init__(in_channels, ratio=None, pooling_type='att',
                         fusion_types=('channel_add', ), dim=dim)


@MODELS.register_module()
class SqueezeExcitationBlock(GlobalContextBlock):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018, https://arxiv.org/abs/1709.01507)
    as GCNet's degenerate case: average pooling, bottleneck C→C·r→C with ReLU and no
    LayerNorm, multiplicative (sigmoid) fusion.

    Note:
        Unlike GC's branches, the transform keeps PyTorch's default init (as SENet
        and timm): zero-initialising it would make a new block halve its input.
    """

    _abbr_ = 'se_block'

    def __init__(self, in_channels: int, ratio: float = 1. / 16, dim: int = 2) -> None:
        super().__init__(in_channels, ratio=ratio, pooling_type='avg',
                         fusion_types=('channel_mul', ), dim=dim, transform_norm=False)

    def reset_parameters(self) -> None:
        for m in self.channel_mul_conv.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                m.reset_parameters()
