"""Projected softmax attention: the step shared by ISA's relations and ANN's stages.

``q = φ_q(x_q)``, ``k = φ_k(x_k)``, ``v = W_v x_k`` (``φ``: ``num_convs`` 1×1
ConvModules with norm and activation, ``W_v``: a 1×1 conv with bias), optionally the
keys and values pooled to ``K`` positions, then

    ``y_i = Σ_j softmax_j(q_iᵀ k_j / √d) v_j``

— the computation of mmseg's general ``SelfAttentionBlock`` with
``key_query_norm=True``, ``value_out_norm=False``, ``matmul_norm=True`` (its names:
``key_project``, ``query_project``, ``value_project``), run on mmctx's memory-efficient
core (:func:`~mmctx.models.blocks.attention.softmax_attention`): no ``Lq×Lk`` map is
kept unless ``need_weights`` asks for it. What follows the attention (ISA's
``output_project`` ConvModule, ANN's zero-initialised ``out_project``) is the caller's.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule

from ._base import pointwise
from .attention import softmax_attention
from .low_rank import norm_cfg_for
from .non_local import flatten


def conv_module(dim: int, in_channels: int, out_channels: int, norm_cfg: Optional[dict],
                act_cfg: Optional[dict], kernel_size: int = 1) -> ConvModule:
    """mmcv ``ConvModule`` (conv → norm → act) of spatial rank ``dim``, 'same' padding."""
    return ConvModule(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                      conv_cfg=dict(type=f'Conv{dim}d'), norm_cfg=norm_cfg_for(norm_cfg, dim),
                      act_cfg=act_cfg)


def conv_modules(in_channels: int, out_channels: int, num_convs: int,
                 norm_cfg: Optional[dict], act_cfg: Optional[dict], dim: int) -> nn.Module:
    """``num_convs`` 1×1 ConvModules (one: the module itself, more: an ``nn.Sequential``
    numbered from 0), the layout of mmseg's ``build_project``."""
    convs = [conv_module(dim, in_channels if i == 0 else out_channels, out_channels,
                         norm_cfg, act_cfg) for i in range(num_convs)]
    return convs[0] if num_convs == 1 else nn.Sequential(*convs)


class ProjectedAttention(nn.Module):
    """``softmax(q kᵀ / √d) v`` with learned projections (see the module docstring).

    Args:
        query_in_channels: channels of the query input.
        key_in_channels: channels of the key/value input.
        channels: query/key width ``d`` (``1/√d`` scales the logits).
        value_channels: width of the values (and of the result).
        num_convs: ConvModules in each of the query and key projections.
        share_key_query: one projection for queries and keys (the same module under
            both names, as mmseg); needs equal input widths.
        norm_cfg, act_cfg: of the query/key ConvModules.
        dim: spatial rank.
    """

    def __init__(self, query_in_channels: int, key_in_channels: int, channels: int,
                 value_channels: int, num_convs: int, share_key_query: bool,
                 norm_cfg: Optional[dict], act_cfg: Optional[dict], dim: int) -> None:
        super().__init__()
        if share_key_query and query_in_channels != key_in_channels:
            raise ValueError(f'a shared key/query projection needs one input width, got '
                             f'{query_in_channels} (query) and {key_in_channels} (key)')
        self.channels = channels
        self.share_key_query = share_key_query
        self.key_project = conv_modules(key_in_channels, channels, num_convs, norm_cfg,
                                        act_cfg, dim)
        self.query_project = (self.key_project if share_key_query else conv_modules(
            query_in_channels, channels, num_convs, norm_cfg, act_cfg, dim))
        self.value_project = pointwise(dim, key_in_channels, value_channels)

    def reset_parameters(self) -> None:
        """mmseg: ConvModule's own init (Kaiming, norm 1/0), PyTorch's for the value."""
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.init_weights()
        self.value_project.reset_parameters()

    def attend(self, query_feats: torch.Tensor, key_feats: torch.Tensor,
               key_pool: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
               query_pool: Optional[nn.Module] = None, need_weights: bool = False
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The attention result ``(N, value_channels, *Sq)`` and the map ``(N, Lq, Lk)``
        (``None`` unless ``need_weights``).

        ``key_pool`` maps the projected keys and values ``(N, C, *Sk)`` to ``(N, C,
        K)`` (or any ``(N, C, ...)``); ``query_pool`` downsamples the projected queries
        (``Sq`` is then the pooled size).

        Note:
            With a shared projection and the same tensor as query and key input, the
            projection runs once (mmseg runs it twice on the same tensor: the same
            output, but in training its BNs' running statistics get two updates per
            forward, i.e. an effective momentum ``1 − (1 − m)²``).
        """
        k = self.key_project(key_feats)  # (N, d, *Sk)
        same = self.share_key_query and query_feats is key_feats
        q = k if same else self.query_project(query_feats)  # (N, d, *Sq)
        v = self.value_project(key_feats)  # (N, dv, *Sk)
        if query_pool is not None:
            q = query_pool(q)
        if key_pool is not None:
            k, v = key_pool(k), key_pool(v)  # (N, d, K), (N, dv, K)
        y, weights = softmax_attention(flatten(q, False), flatten(k, False),
                                       flatten(v, False),
                                       self.channels ** -0.5, need_weights)  # (N, Lq, dv)
        # (N, Lq, dv) -> (N, dv, *Sq); not unflatten(), whose branch for Lq = 1 would
        # fix the size in an exported graph (here Lq is always ΠSq)
        return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], *q.shape[2:]), weights
