"""APCNet: adaptive context modules at several pooling scales.

* Adaptive Pyramid Context Network for Semantic Segmentation (He, Deng, Zhou, Wang &
  Qiao, CVPR 2019) —
  https://openaccess.thecvf.com/content_CVPR_2019/papers/He_Adaptive_Pyramid_Context_Network_for_Semantic_Segmentation_CVPR_2019_paper.pdf;
  no official code; mmseg's ``APCHead`` / ``ACM``
  (``mmseg/models/decode_heads/apc_head.py``), whose parameter names this block keeps.

For an input ``X`` ``(N, C, *S)`` (``L`` positions, rank ``dim``), each adaptive
context module (ACM) of scale ``s`` (``K = s^dim`` pooled regions) computes, with every
``conv`` a 1×1 conv+norm+act at width ``c``::

    x̃      = input_redu_conv(X)                          (N, c, L)   reduced pixels
    P      = pooled_redu_conv(avgpool_s(X))               (N, c, K)   region descriptors
    g      = global_info(avgpool_1(x̃))                    (N, c, 1)   global context
    A      = sigmoid(gla(x̃ + g))                          (N, L, K)   affinity, gla: 1×1
                                                                      conv c → K, bias
    z_i    = Σ_k A_ik P_k                                 (N, c, L)   adaptive context
    ACM_s  = [fusion_conv] ReLU(residual_conv(z) + x̃)     (N, c, L)

and the block fuses the pyramid with the input::

    out = bottleneck([X; ACM_s1(X); …; ACM_sS(X)])   conv+norm+act (C + S·c) → C_out

In GCNet's terms: projection by pooling (fixed regions) → re-projection by a
**global-information-guided, learned** affinity (a sigmoid per region, not a softmax:
the weights of a pixel do not sum to one) → fusion by a residual add per scale and a
concatenation across scales. The affinity, the aggregation and the global term are
``L × K`` with ``K ≤ 36``: all explicit, run in fp32 under autocast (fp64 stays fp64);
the convs follow autocast.

What part of mmseg's ``APCHead`` this is: ``APCHead`` is ``cls_seg(bottleneck([x;
ACM(x)…]))`` on the backbone features, with no conv before the ACMs. The block owns the
ACMs *and* the bottleneck; ``out_channels`` (default ``in_channels``: the plugin
contract) is the bottleneck's width, which
:class:`~mmctx.models.heads.AdaptiveContextHead` sets to the head's ``channels``.

Key map from mmseg (``APCHead`` keys → ``AdaptiveContextHead`` keys; the names inside
are mmseg's):

=========================================  ==========================================
mmseg ``APCHead``                          mmctx
=========================================  ==========================================
``decode_head.acm_modules.<i>.*``          ``decode_head.apc_block.acm_modules.<i>.*``
``decode_head.bottleneck.*``               ``decode_head.apc_block.bottleneck.*``
``decode_head.conv_seg.*``                 ``decode_head.conv_seg.*``
=========================================  ==========================================

Note:
    * The per-ACM ``fusion_conv`` is mmseg's ``fusion=True`` (its default and every
      config); the paper's figure has no such conv [NF: which the authors used].
    * ``channels`` c defaults to ``max(1, C // 4)`` (mmseg's configs: 512 at C = 2048).
    * Not residual and not the identity at init (the bottleneck mixes the
      concatenation), as upstream; every conv keeps mmcv's ``ConvModule`` init, ``gla``
      PyTorch's default conv init (mmseg's).
    * The norm after ``pooled_redu_conv`` / ``global_info`` sees ``N × K`` (``N × 1``)
      values in training: with BN, a scale-1 ACM needs a batch of 2 or more per norm,
      and with exactly 2 those normalised descriptors are ±1 per channel, so the convs
      before them get a vanishing gradient (mmseg's too; its configs use SyncBN over
      4 GPUs × 2 images).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule

from ...registry import MODELS
from ._base import (ContextBlockBase, check_bool, check_int, concat_conv, no_autocast,
                    pointwise, upcast)
from .projected_attention import conv_module

Maps = Dict[str, torch.Tensor]
_POOLS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)


class AdaptiveContextModule(nn.Module):
    """One ACM of pooling scale ``s`` (mmseg's ``ACM``, rank-agnostic, same names).

    Shape:
        input ``(N, C, *S)``, output ``(N, c, *S)``; the affinity ``(N, L, s^dim)``.
    """

    def __init__(self, pool_scale: int, in_channels: int, channels: int, fusion: bool,
                 norm_cfg: Optional[dict], act_cfg: Optional[dict], dim: int) -> None:
        super().__init__()
        self.pool_scale, self.dim = pool_scale, dim

        def conv(cin, cout):
            return conv_module(dim, cin, cout, norm_cfg, act_cfg)

        self.pooled_redu_conv = conv(in_channels, channels)
        self.input_redu_conv = conv(in_channels, channels)
        self.global_info = conv(channels, channels)
        self.gla = pointwise(dim, channels, pool_scale**dim)
        self.residual_conv = conv(channels, channels)
        self.fusion_conv = conv(channels, channels) if fusion else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pool = _POOLS[self.dim - 1]
        pooled = self.pooled_redu_conv(pool(x, self.pool_scale)).flatten(2)  # (N, c, K)
        reduced = self.input_redu_conv(x)  # (N, c, *S)
        glob = self.global_info(pool(reduced, 1))  # (N, c, 1, …): broadcasts over S
        logits = self.gla(reduced + glob).flatten(2)  # (N, K, L)
        with no_autocast(x):
            affinity = upcast(logits).sigmoid().transpose(1, 2)  # (N, L, K)
            # z = Pᵀ Aᵀ as (N, c, L): contiguous NC(H)(W) for the next conv
            z = torch.bmm(upcast(pooled), affinity.transpose(1, 2))
        z = z.to(reduced.dtype).reshape(reduced.shape)  # (N, c, *S)
        out = F.relu(self.residual_conv(z) + reduced)
        if self.fusion_conv is not None:
            out = self.fusion_conv(out)
        return out, affinity


@MODELS.register_module()
class AdaptiveContextBlock(ContextBlockBase):
    """APCNet's adaptive pyramid context (see the module docstring for the equations).

    Args:
        in_channels: input channels C.
        channels: c, the width of each ACM; ``None`` means ``max(1, C // 4)``.
        pool_scales: the pooling scale ``s`` of each ACM (``s^dim`` regions).
        fusion: give each ACM its ``fusion_conv`` (mmseg's ``fusion``).
        out_channels: width of the output (the bottleneck); ``None`` means C (the
            plugin contract); :class:`~mmctx.models.heads.AdaptiveContextHead` sets the
            head's ``channels``.
        kernel_size: the bottleneck's kernel (mmseg: 3).
        norm_cfg: the norm of every conv (mmseg: the head's, SyncBN in the configs).
        act_cfg: the activation of every conv.
        dim: spatial rank of the input (1, 2 or 3).
    """

    _abbr_ = 'apc_block'
    residual = False

    def __init__(self, in_channels: int, channels: Optional[int] = None,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), fusion: bool = True,
                 out_channels: Optional[int] = None, kernel_size: int = 3,
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU'), dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        self.channels = (max(1, in_channels // 4) if channels is None
                         else check_int('channels', channels))
        if not isinstance(pool_scales, (list, tuple)) or not pool_scales:
            raise TypeError(f'pool_scales must be a non-empty list or tuple of ints >= 1, '
                            f'got {pool_scales!r}')
        self.pool_scales = tuple(check_int('each of pool_scales', s) for s in pool_scales)
        if len(set(self.pool_scales)) != len(self.pool_scales):
            raise ValueError(f'pool_scales has duplicates: {self.pool_scales}')
        self.fusion = check_bool('fusion', fusion)
        self.out_channels = (in_channels if out_channels is None
                             else check_int('out_channels', out_channels))
        kernel_size = check_int('kernel_size', kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd (same-size output), got {kernel_size}')
        self.acm_modules = nn.ModuleList(
            AdaptiveContextModule(s, in_channels, self.channels, fusion, norm_cfg, act_cfg,
                                  dim) for s in self.pool_scales)
        self.bottleneck = conv_module(dim, in_channels + len(self.pool_scales) * self.channels,
                                      self.out_channels, norm_cfg, act_cfg, kernel_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.init_weights()
        for acm in self.acm_modules:
            acm.gla.reset_parameters()

    def _forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Maps]:
        self.check_input(x)
        maps = {}

        def parts():  # each ACM's output made and fused in turn: never all at once
            yield x
            for acm in self.acm_modules:
                out, maps[f'affinity_s{acm.pool_scale}'] = acm(x)
                yield out

        return concat_conv(self.bottleneck, parts()), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[0]

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Maps]:
        """The output and ``{'affinity_s<s>': (N, L, s^dim)}`` per scale: each
        position's sigmoid affinity to the pooled regions (row-major over the pooled
        grid; not normalised)."""
        return self._forward(x)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, channels={self.channels}, '
                f'pool_scales={self.pool_scales}, fusion={self.fusion}, '
                f'out_channels={self.out_channels}')
