"""OCR: object-contextual representations.

* Object-Contextual Representations for Semantic Segmentation (Yuan, Chen & Wang,
  ECCV 2020) — https://arxiv.org/abs/1909.11065; official code
  ``HRNet/HRNet-Semantic-Segmentation`` (``seg_hrnet_ocr.py``: ``SpatialGather_Module``,
  ``_ObjectAttentionBlock``, ``SpatialOCR_Module``) and mmseg's ``OCRHead``
  (``mmseg/models/decode_heads/ocr_head.py``: ``SpatialGatherModule``,
  ``ObjectAttentionBlock``), whose parameter names this block keeps.

For pixel features ``X`` ``(N, C, L)`` (``L`` positions of any rank) and a coarse
segmentation ``R`` ``(N, K, L)`` (logits of ``K`` object regions)::

    soft object regions    M_k   = softmax_L(s · R_k)                        (N, K, L)
    object representation  f_k   = Σ_i M_ki x_i                              (N, C, K)
    pixel-region relation  w_ik  = softmax_K(q_iᵀ k_k / √d),                 (N, L, K)
                           q = φ(x) (two 1×1 conv+norm+act, C → d),
                           k = ψ(f) (the same, on the K representations)
    object context         y_i   = ρ(Σ_k w_ik δ(f_k))                         (N, C, L)
                           δ: 1×1 conv+norm+act C → d, ρ: d → C
    fusion                 out   = g([y; x])   1×1 conv+norm+act 2C → C

In GCNet's terms: projection (the soft regions gather the pixels into ``K`` object
descriptors) → interaction (none) → re-projection by the pixel-region relation →
fusion by concatenation. ``K`` is small (the number of classes), so the relation is an
``L × K`` map, the size of the logits; it runs on mmctx's softmax attention core
(:func:`~mmctx.models.blocks.attention.softmax_attention`, keys = the ``K`` regions), so
both paths share one fp32 code path and the memory-efficient one keeps no map at all.
Region softmax, representations and relation logits run in fp32 under autocast (fp64
stays fp64); the convolutions follow autocast.

Two forms:

* **cascade** ``forward(x, regions)``: ``regions`` are the previous head's logits
  ``(N, K, *S)`` (mmseg's OCRNet: an ``FCNHead`` on res4 predicts them, and its loss
  supervises them; :class:`~mmctx.models.heads.ObjectContextHead` is that head);
* **plugin** ``forward(x)``: a 1×1 classifier ``region_conv`` (C → ``num_regions``, with
  bias) predicts the regions from ``x`` itself. Nothing supervises them: they are
  latent soft regions, learnt end to end (as the bases of A²/EMA).

Key map from mmseg (``OCRHead``'s ``object_context_block.*`` → ``ocr_block.*``; the
names inside are the same, so a ``num_regions=None`` block loads mmseg's
``ObjectAttentionBlock`` state dict as it is):

====================================  =========================================
mmseg ``ObjectAttentionBlock`` key     meaning here
====================================  =========================================
``query_project.{0,1}.{conv,bn}.*``   φ (2 × conv+norm+act)
``key_project.{0,1}.{conv,bn}.*``     ψ
``value_project.{conv,bn}.*``         δ
``out_project.{conv,bn}.*``           ρ
``bottleneck.{conv,bn}.*``            g (the fusion)
— (plugin form only)                  ``region_conv.{weight,bias}``
====================================  =========================================

Note:
    * ``scale`` is the soft regions' temperature ``s`` only (mmseg/official
      ``SpatialGatherModule(scale)``; every released config uses 1). The official
      ``_ObjectAttentionBlock`` also max-pools the queries by ``scale`` and upsamples
      the context back; mmseg's version of that branch cannot run (``resize`` without a
      size), so it is left out here.
    * [NF] The paper's ``K`` is the number of classes, supervised through the coarse
      head. The plugin has no classes: ``num_regions=16`` is mmctx's choice (a few more
      than the things of Cityscapes, fewer than ADE20K's; cheap: a ``16 × L`` map).
    * Not residual and not the identity at init (the fusion conv mixes ``[y; x]``),
      as upstream; ``region_conv`` is drawn from ``N(0, 0.01)`` (mmseg's classifier
      init), the convs keep mmcv's ``ConvModule`` init (Kaiming, norm 1/0).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule

from ...registry import MODELS
from ._base import ContextBlockBase, check_int, concat_conv, no_autocast, pointwise, upcast
from .attention import softmax_attention
from .non_local import flatten, unflatten
from .projected_attention import conv_module

Maps = Dict[str, torch.Tensor]


def check_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number > 0, got {type(value).__name__} {value!r}')
    if not value > 0:
        raise ValueError(f'{name} must be a number > 0, got {value}')
    return float(value)


@MODELS.register_module()
class ObjectContextBlock(ContextBlockBase):
    """OCR's object context block (see the module docstring for the equations).

    Args:
        in_channels: input (and output) channels C.
        channels: d, the width of queries, keys and values; ``None`` means
            ``max(1, C // 2)`` (mmseg's OCRNet configs: 256 at C = 512).
        num_regions: K of the plugin form's own region classifier ``region_conv``;
            ``None`` builds the cascade form only (``forward`` then needs ``regions``).
        scale: temperature ``s`` of the soft object regions.
        norm_cfg: the norm of every conv (mmseg: the head's, SyncBN in the configs).
        act_cfg: the activation of every conv.
        dim: spatial rank of the input (1, 2 or 3).

    Shape:
        ``x`` ``(N, C, *S)``, ``regions`` ``(N, K, *S)``; output ``(N, C, *S)``.
    """

    _abbr_ = 'ocr_block'
    residual = False

    def __init__(self, in_channels: int, channels: Optional[int] = None,
                 num_regions: Optional[int] = 16, scale: float = 1.,
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU'), dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        self.channels = (max(1, in_channels // 2) if channels is None
                         else check_int('channels', channels))
        self.num_regions = None if num_regions is None else check_int('num_regions',
                                                                      num_regions)
        self.scale = check_scale('scale', scale)
        c, d = in_channels, self.channels

        def conv(cin, cout):
            return conv_module(dim, cin, cout, norm_cfg, act_cfg)

        self.region_conv = None if num_regions is None else pointwise(dim, c, num_regions)
        self.query_project = nn.Sequential(conv(c, d), conv(d, d))
        self.key_project = nn.Sequential(conv(c, d), conv(d, d))
        self.value_project = conv(c, d)
        self.out_project = conv(d, c)
        self.bottleneck = conv(2 * c, c)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.init_weights()
        if self.region_conv is not None:
            nn.init.normal_(self.region_conv.weight, 0, 0.01)
            nn.init.zeros_(self.region_conv.bias)

    # ----------------------------------------------------------------- steps
    def check_regions(self, x: torch.Tensor, regions: Optional[torch.Tensor]) -> torch.Tensor:
        """The region logits to use: ``regions``, or ``region_conv(x)`` in the plugin form."""
        name = type(self).__name__
        if regions is None:
            if self.region_conv is None:
                raise ValueError(f'{name} was built with num_regions=None (the cascade form): '
                                 "pass the previous head's logits as regions (N, K, *S)")
            return self.region_conv(x)
        if not isinstance(regions, torch.Tensor):
            raise TypeError(f'{name} expects regions as a torch.Tensor (N, K, *S), got '
                            f'{type(regions).__name__}')
        if regions.dim() != x.dim() or regions.shape[0] != x.shape[0] \
                or regions.shape[2:] != x.shape[2:]:
            raise ValueError(
                f'{name}: regions must be (N, K, *S) with the batch and spatial size of x '
                f'{(x.shape[0], "K", *x.shape[2:])}, got {tuple(regions.shape)} (resize the '
                'previous logits to the features first)')
        return regions

    def soft_regions(self, regions: torch.Tensor) -> torch.Tensor:
        """``M = softmax_L(s · R)`` ``(N, K, L)``, in fp32."""
        with no_autocast(regions):
            return (upcast(regions).flatten(2) * self.scale).softmax(dim=-1)

    def object_representations(self, x: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """``f_k = Σ_i M_ki x_i`` as a ``(N, C, K, 1, …)`` map of rank ``dim`` (the
        layout mmseg's key/value convs see)."""
        with no_autocast(x):
            f = torch.bmm(upcast(x).flatten(2), soft.transpose(1, 2))  # (N, C, K)
        return f.to(x.dtype).reshape(*f.shape, *(1, ) * (self.dim - 1))

    def relation(self, x: torch.Tensor, objects: torch.Tensor, need_weights: bool
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``Σ_k w_ik δ(f_k)`` ``(N, d, *S)`` and, with ``need_weights``, ``w`` ``(N, L, K)``."""
        q = flatten(self.query_project(x), False)  # (N, L, d)
        k = flatten(self.key_project(objects), False)  # (N, K, d)
        v = flatten(self.value_project(objects), False)  # (N, K, d)
        y, weights = softmax_attention(q, k, v, self.channels**-0.5, need_weights)
        return unflatten(y, tuple(x.shape[2:])), weights  # (N, d, *S)

    def _forward(self, x: torch.Tensor, regions: Optional[torch.Tensor],
                 need_weights: bool) -> Tuple[torch.Tensor, Maps]:
        self.check_input(x)
        soft = self.soft_regions(self.check_regions(x, regions))  # (N, K, L)
        context, relation = self.relation(x, self.object_representations(x, soft),
                                          need_weights)
        out = concat_conv(self.bottleneck, (self.out_project(context), x))
        return out, (dict(regions=soft, relation=relation) if need_weights else {})

    # --------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, regions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``regions``: the coarse logits ``(N, K, *S)``; ``None`` in the plugin form."""
        return self._forward(x, regions, need_weights=False)[0]

    def forward_with_attention(self, x: torch.Tensor, regions: Optional[torch.Tensor] = None
                               ) -> Tuple[torch.Tensor, Maps]:
        """The output and ``{'regions': M (N, K, L), 'relation': w (N, L, K)}``: the soft
        object regions (each a distribution over positions) and the pixel→region
        relation (each pixel's distribution over the ``K`` regions)."""
        return self._forward(x, regions, need_weights=True)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, channels={self.channels}, '
                f'num_regions={self.num_regions}, scale={self.scale:g}')
