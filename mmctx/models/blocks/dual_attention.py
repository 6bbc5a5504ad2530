"""Dual attention: DANet's position and channel attention modules in one block.

* Dual Attention Network for Scene Segmentation (Fu et al., CVPR 2019) —
  https://arxiv.org/abs/1809.02983

In GCNet's terms each module is **context modeling → (no transform) → fusion by a
zero-initialised scalar γ**:

==========================  ===================================================
module                      what it computes, ``X`` ``(N, C, L)`` the flattened input
==========================  ===================================================
PAM (position attention)    ``q = W_q X``, ``k = W_k X`` (1×1, C → ``pam_channels``),
                            ``v = W_v X`` (1×1, C → C), ``P = softmax_j(q_iᵀ k_j)``
                            (no 1/√d: mmseg ``matmul_norm=False``, as the paper),
                            ``PAM(X) = X + γ_p · v Pᵀ``
CAM (channel attention)     ``E = X Xᵀ`` ``(C, C)``,
                            ``A = softmax_j(max_j E_ij − E_ij)``,
                            ``CAM(X) = X + γ_c · A X`` (no parameters but γ_c)
==========================  ===================================================

Both are rank-agnostic (they act on flattened positions), so the block takes 1-D, 2-D
and 3-D inputs. PAM runs on mmctx's memory-efficient attention core
(:func:`~mmctx.models.blocks.attention.softmax_attention`): no ``L×L`` map is kept in
forward or backward unless the explicit path (:meth:`forward_with_attention`) asks
for it. CAM's ``C×C`` map is small and always explicit. Logits and both softmaxes
run in fp32 under autocast.

What part of mmseg's ``DAHead`` this is: ``DAHead`` runs two separate branches,
``pam_out_conv(PAM(pam_in_conv(x)))`` and ``cam_out_conv(CAM(cam_in_conv(x)))``, and
sums them (plus a classifier per branch and one on the sum). The in/out 3×3 convs
and classifiers are the head's; the block is the context modeling in between:

* :meth:`DualAttentionBlock.position_attention` / :meth:`channel_attention` are
  mmseg's ``PAM`` / ``CAM`` modules exactly (same outputs with converted weights,
  :func:`convert_mmseg_da_state_dict`), for a head that gives the branches their own
  convs as ``DAHead`` does;
* ``forward(x)`` is the single-input plugin form: ``fusion='sum'`` applies both to
  the same ``x`` and sums their residual branches, ``x + γ_p·PAM_ctx + γ_c·CAM_ctx``
  (= ``PAM(x) + CAM(x) − x``); ``fusion='sequential'`` is ``CAM(PAM(x))``. With one
  module on (``pam=False`` or ``cam=False``) the block is that module.

Both γ start at 0, so a new block is the identity (DANet / mmseg ``Scale(0)``).

Key map from mmseg (``convert_mmseg_da_state_dict``; for a ``DAHead`` checkpoint the
keys sit under ``decode_head.pam.`` / ``decode_head.cam.``):

=================================  ==============================  ================
mmseg ``PAM`` / ``CAM`` key        ``DualAttentionBlock`` key      change
=================================  ==============================  ================
``query_project.{weight,bias}``    ``pam.query_project.*``         weight reshaped
``key_project.{weight,bias}``      ``pam.key_project.*``           to ``dim`` (1×1
``value_project.{weight,bias}``    ``pam.value_project.*``         conv of rank dim)
``gamma.scale`` (PAM)              ``pam.gamma``                   0-dim → ``(1, )``
``gamma.scale`` (CAM)              ``cam.gamma``                   0-dim → ``(1, )``
=================================  ==============================  ================
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ...registry import MODELS
from ._base import (ContextBlockBase, check_bool, check_choice, check_int, no_autocast,
                    pointwise, upcast)
from .attention import softmax_attention
from .non_local import flatten, unflatten

FUSIONS = ('sum', 'sequential')
#: DANet (official ``PAM_Module``: ``in_dim // 8``) and mmseg's DAHead (64 at 512
#: channels): query/key width is ``in_channels // PAM_REDUCTION`` unless given
PAM_REDUCTION = 8

Maps = Dict[str, torch.Tensor]


class PositionAttention(nn.Module):
    """DANet's PAM, rank-agnostic; parameter names as mmseg's ``PAM``
    (``gamma.scale`` there is ``gamma`` here).

    Shape:
        input and output ``(N, C, *S)``; the map ``(N, L, L)``, ``L = prod(S)``.
    """

    def __init__(self, in_channels: int, channels: int, dim: int) -> None:
        super().__init__()
        self.query_project = pointwise(dim, in_channels, channels)
        self.key_project = pointwise(dim, in_channels, channels)
        self.value_project = pointwise(dim, in_channels, in_channels)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmseg: PyTorch's default conv init (``SelfAttentionBlock`` only re-inits
        an out projection, which PAM does not have); γ = 0."""
        for conv in (self.query_project, self.key_project, self.value_project):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor,
                need_weights: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        q = flatten(self.query_project(x), False)  # (N, L, d)
        k = flatten(self.key_project(x), False)  # (N, L, d)
        v = flatten(self.value_project(x), False)  # (N, L, C)
        # mmseg's PAM: matmul_norm=False — no 1/sqrt(d) on the logits
        y, weights = softmax_attention(q, k, v, 1., need_weights)  # (N, L, C)
        return x + self.gamma * unflatten(y, tuple(x.shape[2:])), weights


class ChannelAttention(nn.Module):
    """DANet's CAM, rank-agnostic; γ named as mmseg's ``CAM`` (``gamma.scale``
    there is ``gamma`` here).

    Shape:
        input and output ``(N, C, *S)``; the map ``(N, C, C)``.

    Note:
        ``softmax(max_j E_ij − E_ij)`` equals ``softmax(−E_ij)`` (a softmax does not
        see a per-row shift); it is written as in mmseg / the official code. The
        energy ``X Xᵀ`` sums over all ``L`` positions, so it is computed in fp32
        (fp64 stays fp64) whatever the autocast state.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        with no_autocast(x):
            feats = upcast(x).flatten(2)  # (N, C, L)
            energy = torch.bmm(feats, feats.transpose(1, 2))  # (N, C, C)
            attention = (energy.amax(dim=-1, keepdim=True) - energy).softmax(dim=-1)
            out = torch.bmm(attention, feats).reshape(x.shape)  # (N, C, *S)
            out = x + self.gamma * out.to(x.dtype)
        return out, attention if need_weights else None


@MODELS.register_module()
class DualAttentionBlock(ContextBlockBase):
    """DANet's dual attention (position + channel attention), see the module docstring.

    Args:
        in_channels: input (and output) channels C.
        pam_channels: query/key width of the position attention; ``None`` means
            ``max(1, C // 8)`` (the DANet paper's ``C/8``; mmseg's DAHead config sets
            64 at C = 512, the same). Only with ``pam=True``.
        pam: include the position attention module.
        cam: include the channel attention module.
        fusion: how ``forward`` combines the two when both are on: ``'sum'``
            (``x + γ_p·PAM_ctx(x) + γ_c·CAM_ctx(x)``, the two branches side by side as
            in DANet) or ``'sequential'`` (``CAM(PAM(x))``).
        dim: spatial rank of the input (1, 2 or 3).

    Note:
        ``DAHead``'s branch convs are not part of the block (see the module
        docstring); a head with separate branches calls :meth:`position_attention`
        and :meth:`channel_attention` on its own inputs.
    """

    _abbr_ = 'da_block'

    def __init__(self, in_channels: int, pam_channels: Optional[int] = None,
                 pam: bool = True, cam: bool = True, fusion: str = 'sum',
                 dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        check_bool('pam', pam), check_bool('cam', cam)
        if not (pam or cam):
            raise ValueError('a DualAttentionBlock with pam=False and cam=False models no '
                             'context; enable at least one module')
        self.fusion = check_choice('fusion', fusion, FUSIONS)
        if fusion != 'sum' and not (pam and cam):
            raise ValueError(f'fusion={fusion!r} combines two modules; with only '
                             f'{"pam" if pam else "cam"} on use the default fusion="sum"')
        if pam_channels is not None and not pam:
            raise ValueError(f'pam_channels={pam_channels!r} sets the position attention, '
                             'which pam=False turns off; remove pam_channels')
        if pam:
            self.pam_channels = (max(1, in_channels // PAM_REDUCTION) if pam_channels is None
                                 else check_int('pam_channels', pam_channels))
        else:
            self.pam_channels = None
        self.pam = PositionAttention(in_channels, self.pam_channels, dim) if pam else None
        self.cam = ChannelAttention() if cam else None

    def reset_parameters(self) -> None:
        for module in (self.pam, self.cam):
            if module is not None:
                module.reset_parameters()

    # ----------------------------------------------------------------- steps
    def position_attention(self, x: torch.Tensor, need_weights: bool = False):
        """mmseg's ``PAM(x)`` and, with ``need_weights``, its ``(N, L, L)`` map."""
        if self.pam is None:
            raise RuntimeError('this DualAttentionBlock was built with pam=False')
        self.check_input(x)
        return self.pam(x, need_weights) if need_weights else self.pam(x)[0]

    def channel_attention(self, x: torch.Tensor, need_weights: bool = False):
        """mmseg's ``CAM(x)`` and, with ``need_weights``, its ``(N, C, C)`` map."""
        if self.cam is None:
            raise RuntimeError('this DualAttentionBlock was built with cam=False')
        self.check_input(x)
        return self.cam(x, need_weights) if need_weights else self.cam(x)[0]

    # --------------------------------------------------------------- forward
    def _forward(self, x: torch.Tensor, need_weights: bool) -> Tuple[torch.Tensor, Maps]:
        self.check_input(x)
        maps: Maps = {}
        if self.pam is None:
            out, maps['channel'] = self.cam(x, need_weights)
        elif self.cam is None:
            out, maps['pairwise'] = self.pam(x, need_weights)
        elif self.fusion == 'sequential':
            mid, maps['pairwise'] = self.pam(x, need_weights)
            out, maps['channel'] = self.cam(mid, need_weights)
        else:  # sum: PAM(x) + CAM(x) − x, the residual branches added to x
            pam_out, maps['pairwise'] = self.pam(x, need_weights)
            cam_out, maps['channel'] = self.cam(x, need_weights)
            out = pam_out + (cam_out - x)
        return out, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Memory-efficient path: no ``L×L`` position map is kept."""
        return self._forward(x, need_weights=False)[0]

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Maps]:
        """Explicit path: the output and ``{'pairwise': (N, L, L), 'channel': (N, C, C)}``
        (the maps of the modules this block has; the PAM map is a distribution over
        key positions, the CAM map one over channels)."""
        return self._forward(x, need_weights=True)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, pam_channels={self.pam_channels}, '
                f'pam={self.pam is not None}, cam={self.cam is not None}, '
                f'fusion={self.fusion!r}')


# ------------------------------------------------------------------- conversion
#: mmseg ``PAM`` key → block key (``\1`` the conv, ``\2`` weight/bias)
_PAM_RULES = [
    (re.compile(r'^(query_project|key_project|value_project)\.(weight|bias)$'),
     r'pam.\1.\2'),
    (re.compile(r'^gamma\.scale$'), 'pam.gamma'),
]
_CAM_RULES = [(re.compile(r'^gamma\.scale$'), 'cam.gamma')]


def _convert(state: Mapping[str, torch.Tensor], rules, what: str, dim: int,
             out: 'OrderedDict') -> None:
    for key, value in state.items():
        for pattern, repl in rules:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                break
        else:
            raise KeyError(f'unexpected key {key!r} in the mmseg {what} state dict; '
                           f'expected {[p.pattern for p, _ in rules]}')
        if new.endswith('.weight'):  # 1×1 conv (Cout, Cin, 1, 1) -> rank dim
            value = value.reshape(value.shape[:2] + (1, ) * dim)
        elif new.endswith('gamma'):  # mmcv Scale: a 0-dim parameter -> (1, )
            value = value.reshape(1)
        out[new] = value


def convert_mmseg_da_state_dict(pam: Optional[Mapping[str, torch.Tensor]] = None,
                                cam: Optional[Mapping[str, torch.Tensor]] = None,
                                dim: int = 2) -> 'OrderedDict':
    """The state dict of a :class:`DualAttentionBlock` from mmseg's ``PAM`` and/or
    ``CAM`` state dicts (see the key map in the module docstring).

    Give the state dict of each module the block has (a block with ``pam=False``
    takes no ``pam``); ``dim`` is the block's spatial rank.
    """
    check_choice('dim', dim, (1, 2, 3))
    if pam is None and cam is None:
        raise ValueError('give the state dict of mmseg PAM (pam=...), CAM (cam=...) or both')
    out: 'OrderedDict' = OrderedDict()
    if pam is not None:
        _convert(pam, _PAM_RULES, 'PAM', dim, out)
    if cam is not None:
        _convert(cam, _CAM_RULES, 'CAM', dim, out)
    return out


def split_mmseg_da_head(state_dict: Mapping[str, torch.Tensor],
                        prefix: str = 'decode_head.') -> Tuple['OrderedDict', 'OrderedDict']:
    """The ``PAM`` and ``CAM`` state dicts inside a ``DAHead`` (keys under
    ``{prefix}pam.`` / ``{prefix}cam.``), for :func:`convert_mmseg_da_state_dict`."""
    parts = []
    for name in ('pam', 'cam'):
        head = f'{prefix}{name}.'
        parts.append(OrderedDict((k[len(head):], v) for k, v in state_dict.items()
                                 if k.startswith(head)))
    if not parts[0] and not parts[1]:
        raise KeyError(f'no DAHead PAM/CAM keys under {prefix!r}pam. / {prefix!r}cam.')
    return parts[0], parts[1]
