"""ANN: asymmetric non-local attention over pyramid-pooled keys (APNB and AFNB).

* Asymmetric Non-local Neural Networks for Semantic Segmentation (Zhu et al., ICCV
  2019) — https://arxiv.org/abs/1908.07678; official code ``MendelXu/ANN``; mmseg
  1.2.2 ``ANNHead`` with its ``APNB`` / ``AFNB`` (``mmseg/models/decode_heads/
  ann_head.py``), whose layer names this block keeps.

A non-local block whose keys and values are not all ``L`` positions but ``K = Σ_s s^D``
pooled ones (the pyramid ``key_pool_scales``, default ``(1, 3, 6, 8)``: ``K = 110`` in
2-D), so the map is ``L×K`` instead of ``L×L``. For each query scale ``t`` (a *stage*,
its own weights):

=================  ==========================================================
projection         ``q = φ_q(x)`` (1×1 ConvModule ``C → d`` with norm and
                   activation), ``k = φ_k(x_k)``, ``v = W_v x_k`` (1×1 conv
                   ``C_k → d``, bias); APNB: ``φ_q = φ_k`` (one shared module)
pyramid pooling    ``k̃ = [P_1(k); …; P_S(k)]``, ``ṽ`` likewise: adaptive average
                   pooling to ``s^D`` positions per scale ``s``, concatenated
                   (``(N, d, K)``; mmseg's ``PPMConcat``)
context            ``c_i = W_o Σ_j softmax_j(q_iᵀ k̃_j / √d) ṽ_j`` (``W_o``:
                   1×1 conv ``d → C`` with bias, **zero-initialised** — mmseg's
                   ``out_project``, the official ``W``)
fusion             ``y = bottleneck([Σ_t c^t; x])`` (1×1 ConvModule ``2C → C``)
=================  ==========================================================

Two forms (one class; the form follows ``key_in_channels``):

* **APNB** (``key_in_channels=None``, the default — the self-attention form, a plugin
  block): ``x_k = x``, the key/query projection shared, ``bottleneck`` with norm and
  activation. ``forward(x)``.
* **AFNB** (``key_in_channels=C_k`` — the fusion form): keys and values from a second
  input ``key_feats`` (ANN: the lower-level stage, its own width ``C_k`` and any size),
  queries from ``x``; separate projections; ``bottleneck`` with norm and **no
  activation** (mmseg ``act_cfg=None``, the official AFNB's conv + BN).
  ``forward(x, key_feats)``.

mmseg's ``ANNHead`` wiring (``fusion = AFNB(low, high)`` → dropout → 3×3 bottleneck →
``context = APNB`` → classifier) is :class:`mmctx.models.heads.AsymmetricNonLocalHead`.

Key map from mmseg ``APNB`` / ``AFNB``: the keys are equal (``stages.<t>.key_project.
{conv,bn}.*``, ``stages.<t>.query_project.*`` — for APNB the same tensors under both
names, as mmseg's shared module — ``stages.<t>.value_project.*``,
``stages.<t>.out_project.*``, ``bottleneck.{conv,bn}.*``), so an mmseg ANN checkpoint
loads as it is.

Note:
    * Query scales ``t > 1`` ([NF]): the projected queries are max-pooled with kernel
      ``t`` (as mmseg builds its stage) and the context is resized back to the input
      size (bilinear / linear / trilinear, ``align_corners=False``) before ``W_o``.
      mmseg reshapes the pooled context to the input size instead, which fails or
      scrambles positions for ``t > 1``, and the official code leaves the pooling out
      (commented out); all configs use ``query_scales=(1, )``, where the three agree.
    * 1-D and 3-D inputs take the same steps with 1-D / 3-D pooling (mmseg: 2-D only).
    * ``project_channels`` defaults to ``max(1, C // 2)`` (mmseg's configs: 256 at C =
      512 for APNB; its AFNB runs at 256 on C = 2048) [NF].
    * The block is not residual and not the identity at init (``W_o = 0`` makes the
      context zero, and the output ``bottleneck([0; x])``).
"""
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from ._base import ContextBlockBase, check_cfg, check_int, concat_conv, pointwise
from .projected_attention import ProjectedAttention, conv_modules

Maps = Dict[str, torch.Tensor]
_POOL = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_RESIZE = ('linear', 'bilinear', 'trilinear')


def pyramid_pool(t: torch.Tensor, scales: Sequence[int]) -> torch.Tensor:
    """``(N, C, *S)`` → ``(N, C, Σ_s s^D)``: adaptive average pooling to ``s`` per axis
    for each scale, flattened and concatenated (mmseg's ``PPMConcat``)."""
    pool = _POOL[t.dim() - 3]
    return torch.cat([pool(t, s).flatten(2) for s in scales], dim=2)


def check_scales(name: str, value: Any) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f'{name} must be a non-empty tuple of ints >= 1, got {value!r}')
    return tuple(check_int(f'{name}[{i}]', v) for i, v in enumerate(value))


class PyramidStage(ProjectedAttention):
    """One ANN stage (mmseg's ANN ``SelfAttentionBlock``, same parameter names):
    projected attention over pyramid-pooled keys, then the zero-initialised
    ``out_project``.

    Shape:
        queries ``(N, C, *S)``, keys ``(N, C_k, *S_k)`` → ``(N, C, *S)``; the map
        ``(N, L / t^D, K)``.
    """

    def __init__(self, in_channels: int, key_in_channels: int, channels: int,
                 share_key_query: bool, query_scale: int, key_pool_scales: Tuple[int, ...],
                 norm_cfg: Optional[dict], act_cfg: Optional[dict], dim: int) -> None:
        super().__init__(in_channels, key_in_channels, channels, channels, num_convs=1,
                         share_key_query=share_key_query, norm_cfg=norm_cfg,
                         act_cfg=act_cfg, dim=dim)
        self.query_scale = query_scale
        self.key_pool_scales = key_pool_scales
        self.out_project = pointwise(dim, channels, in_channels)
        self.query_downsample = (_MAX_POOL[dim - 1](kernel_size=query_scale)
                                 if query_scale > 1 else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.zeros_(self.out_project.weight)
        nn.init.zeros_(self.out_project.bias)

    def forward(self, x: torch.Tensor, key_feats: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        context, weights = self.attend(
            x, key_feats, key_pool=lambda t: pyramid_pool(t, self.key_pool_scales),
            query_pool=self.query_downsample, need_weights=need_weights)
        if self.query_downsample is not None:  # back to the input size ([NF])
            context = F.interpolate(context, size=x.shape[2:],
                                    mode=_RESIZE[x.dim() - 3], align_corners=False)
        return self.out_project(context), weights


@MODELS.register_module()
class AsymmetricNonLocalBlock(ContextBlockBase):
    """ANN's asymmetric pyramid (APNB) / fusion (AFNB) non-local block, see the module
    docstring.

    Args:
        in_channels: input (and output) channels C (of the query input ``x``).
        project_channels: width ``d`` of queries, keys and values; ``None`` means
            ``max(1, C // 2)``.
        key_pool_scales: the pyramid of adaptive average pools for keys and values.
        query_scales: one stage per scale (own weights), their contexts summed; a
            scale ``t > 1`` max-pools the queries (see the Note in the module
            docstring).
        key_in_channels: ``None`` for APNB (keys from ``x``, shared key/query
            projection); the channels of ``key_feats`` for AFNB.
        norm_cfg: norm of the key/query ConvModules and the bottleneck (mmseg: the
            head's).
        act_cfg: activation of the key/query ConvModules and (APNB only) the
            bottleneck.
        dim: spatial rank of the input (1, 2 or 3).

    Shape:
        ``x`` ``(N, C, *S)`` [, ``key_feats`` ``(N, C_k, *S_k)``] → ``(N, C, *S)``.
    """

    _abbr_ = 'ann_block'
    residual = False  # the output is bottleneck([context; x])

    def __init__(self, in_channels: int, project_channels: Optional[int] = None,
                 key_pool_scales: Sequence[int] = (1, 3, 6, 8),
                 query_scales: Sequence[int] = (1, ),
                 key_in_channels: Optional[int] = None,
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU'), dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        self.project_channels = (max(1, in_channels // 2) if project_channels is None
                                 else check_int('project_channels', project_channels))
        self.key_pool_scales = check_scales('key_pool_scales', key_pool_scales)
        self.query_scales = check_scales('query_scales', query_scales)
        self.key_in_channels = (None if key_in_channels is None
                                else check_int('key_in_channels', key_in_channels))
        check_cfg('norm_cfg', norm_cfg), check_cfg('act_cfg', act_cfg)
        fusion = self.key_in_channels is not None
        self.stages = nn.ModuleList([
            PyramidStage(in_channels, self.key_in_channels if fusion else in_channels,
                         self.project_channels, share_key_query=not fusion,
                         query_scale=t, key_pool_scales=self.key_pool_scales,
                         norm_cfg=norm_cfg, act_cfg=act_cfg, dim=dim)
            for t in self.query_scales])
        self.bottleneck = conv_modules(2 * in_channels, in_channels, 1, norm_cfg,
                                       None if fusion else act_cfg, dim)

    @property
    def num_keys(self) -> int:
        """``K``: pooled key positions."""
        return sum(s ** self.dim for s in self.key_pool_scales)

    def reset_parameters(self) -> None:
        """As mmseg: ConvModule's init, PyTorch's for the values, ``out_project = 0``."""
        for stage in self.stages:
            stage.reset_parameters()
        self.bottleneck.init_weights()

    def _check_keys(self, x: torch.Tensor, key_feats: Optional[torch.Tensor]) -> None:
        self.check_input(x)
        name = type(self).__name__
        if self.key_in_channels is None:
            if key_feats is not None:
                raise ValueError(f'{name} was built without key_in_channels (APNB: keys '
                                 'from x); pass key_feats only to a block built with '
                                 'key_in_channels (AFNB)')
            return
        if key_feats is None:
            raise ValueError(f'{name} was built with key_in_channels='
                             f'{self.key_in_channels} (AFNB): forward(x, key_feats) needs '
                             'the key input')
        if not isinstance(key_feats, torch.Tensor):
            raise TypeError(f'{name} expects key_feats as a torch.Tensor, got '
                            f'{type(key_feats).__name__}')
        if key_feats.dim() != x.dim() or key_feats.shape[0] != x.shape[0] \
                or key_feats.shape[1] != self.key_in_channels:
            raise ValueError(
                f'{name} expects key_feats of shape (N={x.shape[0]}, '
                f'C_k={self.key_in_channels}, <{self.dim} spatial sizes>), got '
                f'{tuple(key_feats.shape)}')

    def _forward(self, x: torch.Tensor, key_feats: Optional[torch.Tensor],
                 need_weights: bool) -> Tuple[torch.Tensor, Maps]:
        self._check_keys(x, key_feats)
        small = [t for t in self.query_scales if any(s < t for s in x.shape[2:])]
        if small:
            raise ValueError(f'query_scales {small} max-pool the queries by more than the '
                             f'input size {tuple(x.shape[2:])}')
        keys = x if key_feats is None else key_feats
        maps = {}

        def parts():  # [context; x], the context dropped once it is fused
            context = 0
            for i, stage in enumerate(self.stages):
                c, weights = stage(x, keys, need_weights)
                context = context + c
                if need_weights:
                    maps['pooled' if i == 0 else f'pooled_{i}'] = weights
            yield context
            del context
            yield x

        return concat_conv(self.bottleneck, parts()), maps

    def map_elements(self, x: torch.Tensor, key_feats: Optional[torch.Tensor] = None) -> int:
        """Elements of the maps :meth:`forward_with_attention` forms for ``x``
        (``N·Lq·K`` per query scale; the analysis tools' size guard reads it)."""
        lengths = [math.prod(s // t for s in x.shape[2:]) for t in self.query_scales]
        return x.shape[0] * self.num_keys * sum(lengths)

    def forward(self, x: torch.Tensor, key_feats: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """APNB: ``forward(x)``; AFNB: ``forward(x, key_feats)`` (queries from ``x``)."""
        return self._forward(x, key_feats, need_weights=False)[0]

    def forward_with_attention(self, x: torch.Tensor,
                               key_feats: Optional[torch.Tensor] = None
                               ) -> Tuple[torch.Tensor, Maps]:
        """The output and ``{'pooled': (N, Lq, K)}`` (one more, ``'pooled_<i>'``, per
        further query scale): each query's softmax over the ``K`` pooled keys, ordered
        scale by scale, row-major within a scale.

        The map is over pooled keys, not positions, so it is not called
        ``'pairwise'``: the position-based analysis tools skip this block.
        """
        return self._forward(x, key_feats, need_weights=True)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, project_channels={self.project_channels}, '
                f'key_pool_scales={self.key_pool_scales}, '
                f'query_scales={self.query_scales}, key_in_channels={self.key_in_channels}')
