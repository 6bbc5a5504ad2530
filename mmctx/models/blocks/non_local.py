"""Non-local and Disentangled Non-local blocks: one implementation, several presets.

* Non-local Neural Networks (Wang et al., CVPR 2018) — https://arxiv.org/abs/1711.07971
* Disentangled Non-Local Neural Networks (Yin et al., ECCV 2020) —
  https://arxiv.org/abs/2006.06668

In GCNet's terms both are **context modeling → transform → fusion**; DNL splits the
context modeling of NL into a *pairwise* term (query-specific, computed on whitened
queries and keys) and a *unary* term (query-independent, a softmax over positions):

=================  ==========================================================
step               switch (``PairwiseContextBlock`` argument)
=================  ==========================================================
projection         ``reduction``, ``value`` (``'reduced'`` C→C/r with bias;
                   ``'full'`` C→C without bias), ``sub_sample`` (max-pool keys)
pairwise term      ``pairwise`` on/off, ``mode``, ``whiten``, ``use_scale``,
                   ``temperature``
unary term         ``unary``: ``'none'``, ``'conv'`` (softmax of a learned 1×1
                   mask), ``'analytic'`` (softmax of ``μ_qᵀ k_j``)
transform+fusion   ``value='reduced'``: ``x + conv_out(y_pair + y_unary)`` (1×1
                   conv + optional norm, zero-initialised); ``value='full'``:
                   ``x + γ·y_pair + y_unary`` with a scalar ``γ`` initialised to 0
=================  ==========================================================

``NonLocalBlock`` is the pairwise term alone without whitening (mmcv ``NonLocal2d``
semantics and parameter names); ``DisentangledNonLocalBlock`` exposes every switch
with presets for the three reference implementations; ``PairwiseNonLocalBlock`` and
``UnaryNonLocalBlock`` are DNL with the other term off.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule

from ...registry import MODELS
from ._base import (ContextBlockBase, check_bool, check_choice, check_int, no_autocast,
                    pointwise, pointwise_logits, upcast)
from .attention import (check_map_budget, concatenation_attention, dot_product_attention,
                        softmax_attention)

MODES = ('embedded_gaussian', 'gaussian', 'dot_product', 'concatenation')
SOFTMAX_MODES = ('embedded_gaussian', 'gaussian')
WHITENINGS = ('channel', 'global', 'none')
UNARIES = ('conv', 'analytic', 'none')
VALUES = ('reduced', 'full')


def flatten(t: torch.Tensor, contiguous: bool = True) -> torch.Tensor:
    """``(N, C, *S)`` → ``(N, L, C)``: contiguous, or (``contiguous=False``) the
    transposed view, for :func:`~.attention.softmax_attention`, which copies only
    where its kernel needs it."""
    t = t.flatten(2).transpose(1, 2)
    return t.contiguous() if contiguous else t


def unflatten(t: torch.Tensor, spatial: Tuple[int, ...]) -> torch.Tensor:
    """``(N, L, C)`` → ``(N, C, *S)`` (``L`` may be 1: a broadcastable singleton)."""
    n, length, c = t.shape
    shape = spatial if length > 1 else (1, ) * len(spatial)
    return t.transpose(1, 2).reshape(n, c, *shape)


def key_pool(dim: int) -> nn.Module:
    """mmcv's ``sub_sample`` pooling: 2 (1D), 2×2 (2D), 1×2×2 (3D, spatial only)."""
    return (nn.MaxPool1d(2), nn.MaxPool2d(2), nn.MaxPool3d((1, 2, 2)))[dim - 1]


class PairwiseContextBlock(ContextBlockBase):
    """The shared implementation of NL / DNL / pairwise-only / unary-only blocks.

    Use the registered subclasses; see the module docstring for the switches.

    Args:
        in_channels: input channels C.
        reduction: query/key width is ``C // reduction`` (and the value width with
            ``value='reduced'``); must leave at least one channel.
        mode: pairwise function: ``'embedded_gaussian'`` (softmax of θᵀφ),
            ``'gaussian'`` (softmax of xᵀx, no θ/φ convs), ``'dot_product'`` (θᵀφ / N)
            or ``'concatenation'`` (ReLU(wᵀ[θ_i; φ_j]) / N), N = number of keys.
        use_scale: divide embedded-Gaussian logits by √(query width).
        sub_sample: 2× max-pool (spatial only) of keys and values after projection.
        norm_cfg: norm of the output projection (``value='reduced'``), e.g.
            ``dict(type='BN')`` / ``dict(type='BN3d')``; it is zero-initialised.
        dim: spatial rank of the input (1, 2 or 3).
        whiten: subtract from queries and keys their per-channel mean over positions
            (``'channel'``), one scalar mean over channels and positions
            (``'global'``), or nothing (``'none'``).
        temperature: softmax-mode logits are divided by it (> 0).
        pairwise: include the pairwise term.
        unary: unary term: ``'conv'``, ``'analytic'`` or ``'none'``.
        value: ``'reduced'`` or ``'full'`` (see the module docstring).
        qk_init_std: std of the normal init of the query/key projections θ/φ (> 0).
            The default 0.01 is mmcv's (and mmseg's) init; it makes every initial
            logit almost 0, i.e. uniform attention, and on a short schedule the
            attention may never leave that state (ContextShapes, ``tools/demo.py``).
            A larger value starts from a spread of logits; blocks whose logits are
            scaled up (DNL's ``temperature=0.05``) need a correspondingly smaller one.
        value_init_std: std of the normal init of the value projection g (> 0; default
            mmcv's 0.01). With the zero-initialised output, a tiny value also makes the
            first gradients reaching the attention tiny; a larger one lets a short
            schedule learn the attention (``tools/demo.py``).
        map_budget_mb: softmax modes in training: keep the ``N×Lq×Lk`` map for
            backward when it is at most this many MiB (faster), else recompute it in
            the fused kernel; None: the process default
            (:func:`~mmctx.models.blocks.attention.map_budget_bytes`, 512 MiB unless
            ``$MMCTX_MAP_BUDGET_MB`` says otherwise); 0: never keep it.
    """

    def __init__(self,
                 in_channels: int,
                 reduction: int = 2,
                 mode: str = 'embedded_gaussian',
                 use_scale: bool = True,
                 sub_sample: bool = False,
                 norm_cfg: Optional[dict] = None,
                 dim: int = 2,
                 whiten: str = 'none',
                 temperature: float = 1.,
                 pairwise: bool = True,
                 unary: str = 'none',
                 value: str = 'reduced',
                 qk_init_std: float = 0.01,
                 value_init_std: float = 0.01,
                 map_budget_mb: Optional[float] = None) -> None:
        super().__init__(in_channels, dim)
        self.map_budget_mb = (None if map_budget_mb is None
                              else check_map_budget(map_budget_mb))
        self.reduction = check_int('reduction', reduction)
        self.inter_channels = in_channels // reduction
        if self.inter_channels < 1:
            raise ValueError(f'reduction={reduction} leaves 0 channels for '
                             f'in_channels={in_channels}; use reduction <= {in_channels}')
        self.mode = check_choice('mode', mode, MODES)
        self.whiten = check_choice('whiten', whiten, WHITENINGS)
        self.unary = check_choice('unary', unary, UNARIES)
        self.value = check_choice('value', value, VALUES)
        for name, flag in (('use_scale', use_scale), ('sub_sample', sub_sample),
                           ('pairwise', pairwise)):
            check_bool(name, flag)
        self.use_scale, self.sub_sample, self.pairwise = use_scale, sub_sample, pairwise
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not temperature > 0:
            raise ValueError(f'temperature must be a number > 0, got {temperature!r}')
        if temperature != 1 and mode not in SOFTMAX_MODES:
            raise ValueError(f'temperature applies to the softmax modes {SOFTMAX_MODES}; '
                             f'mode={mode!r} needs temperature=1, got {temperature}')
        self.temperature = float(temperature)
        for name, std in (('qk_init_std', qk_init_std), ('value_init_std', value_init_std)):
            if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
                raise ValueError(f'{name} must be a number > 0, got {std!r}')
        self.qk_init_std, self.value_init_std = float(qk_init_std), float(value_init_std)
        if not pairwise and unary == 'none':
            raise ValueError('a block with pairwise=False and unary="none" models no '
                             'context; enable at least one term')
        if value == 'full' and norm_cfg is not None:
            raise ValueError('norm_cfg applies to the output projection of '
                             f"value='reduced'; value='full' has none, got {norm_cfg}")
        self.norm_cfg = norm_cfg

        c, d = in_channels, self.inter_channels
        # projection: value (g), queries (theta), keys (phi)
        value_channels = d if value == 'reduced' else c
        self.g = pointwise(dim, c, value_channels, bias=value == 'reduced')
        uses_qk = pairwise or unary == 'analytic'
        has_qk_convs = uses_qk and mode != 'gaussian'
        self.theta = pointwise(dim, c, d) if has_qk_convs else None
        self.phi = pointwise(dim, c, d) if has_qk_convs else None
        self.concat_project = (nn.Linear(2 * d, 1, bias=False)
                               if pairwise and mode == 'concatenation' else None)
        self.pool = key_pool(dim) if sub_sample else None
        # unary term
        self.conv_mask = pointwise(dim, c, 1) if unary == 'conv' else None
        # transform + fusion
        if value == 'reduced':
            self.conv_out = ConvModule(d, c, 1, conv_cfg=dict(type=f'Conv{dim}d'),
                                       norm_cfg=norm_cfg, act_cfg=None)
            self.gamma = None
        else:
            self.conv_out = None
            self.gamma = nn.Parameter(torch.zeros(1)) if pairwise else None
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """mmcv's NonLocal init: projections N(0, 0.01), output zero-initialised.

        θ/φ use ``qk_init_std``, g ``value_init_std`` (0.01 by default, as mmcv).
        """
        for conv, std in ((self.g, self.value_init_std), (self.theta, self.qk_init_std),
                          (self.phi, self.qk_init_std)):
            if conv is not None:
                nn.init.normal_(conv.weight, std=std)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
        if self.concat_project is not None:  # mmcv: ConvModule's kaiming (fan_out)
            nn.init.kaiming_normal_(self.concat_project.weight, mode='fan_out',
                                    nonlinearity='relu')
        if self.conv_mask is not None:
            self.conv_mask.reset_parameters()  # mmseg: PyTorch's default conv init
        if self.conv_out is not None:
            last = self.conv_out.norm if self.conv_out.with_norm else self.conv_out.conv
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        if self.gamma is not None:
            nn.init.zeros_(self.gamma)

    # ----------------------------------------------------------------- steps
    def project(self, x: torch.Tensor):
        """Queries ``(N, Lq, d)``, keys ``(N, Lk, d)``, values ``(N, Lk, dv)``."""
        pool = self.pool if self.pool is not None else (lambda t: t)
        v = flatten(pool(self.g(x)))
        if self.theta is not None:
            q, k = flatten(self.theta(x)), flatten(pool(self.phi(x)))
        elif self.pairwise or self.unary == 'analytic':  # gaussian: raw features
            q, k = flatten(x), flatten(pool(x))
        else:
            q = k = None
        return q, k, v

    def whitening(self, q: torch.Tensor, k: torch.Tensor):
        """Whitened queries and keys, and the query mean ``μ_q`` ``(N, 1, d)``."""
        if self.whiten == 'global':
            q_mean = q.mean(dim=(1, 2), keepdim=True).expand(-1, 1, q.shape[2])
            k_mean = k.mean(dim=(1, 2), keepdim=True)
        else:
            q_mean, k_mean = q.mean(dim=1, keepdim=True), k.mean(dim=1, keepdim=True)
        if self.whiten == 'none':
            return q, k, q_mean
        return q - q_mean, k - k_mean, q_mean

    def pairwise_term(self, q, k, v, need_weights: bool):
        """``(N, Lq, dv)`` and the ``(N, Lq, Lk)`` map when ``need_weights``."""
        if self.mode == 'embedded_gaussian':
            scale = (q.shape[-1]**-0.5 if self.use_scale else 1.) / self.temperature
            return softmax_attention(q, k, v, scale, need_weights, self.map_budget_mb)
        if self.mode == 'gaussian':
            return softmax_attention(q, k, v, 1. / self.temperature, need_weights,
                                     self.map_budget_mb)
        if self.mode == 'dot_product':
            return dot_product_attention(q, k, v, need_weights)
        w = self.concat_project.weight[0]  # (2d, )
        d = q.shape[-1]
        return concatenation_attention(q @ w[:d], k @ w[d:], v, need_weights)

    def unary_weights(self, x: torch.Tensor, q_mean, k) -> torch.Tensor:
        """Softmax over key positions ``(N, 1, Lk)``, in fp32 (or fp64)."""
        if self.unary == 'conv':
            src = self.pool(x) if self.pool is not None else x
            logits = pointwise_logits(self.conv_mask, src)  # (N, 1, Lk)
        with no_autocast(x):
            if self.unary == 'analytic':  # μ_qᵀ k_j, no scale/temperature (official)
                logits = torch.bmm(upcast(q_mean), upcast(k).transpose(1, 2))
            return upcast(logits).softmax(dim=-1)

    def fuse(self, x: torch.Tensor, y_pair, y_unary) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        if self.value == 'reduced':
            z = y_pair if y_unary is None else (
                y_unary if y_pair is None else y_pair + y_unary)
            return x + self.conv_out(unflatten(z, spatial))
        out = x
        if y_pair is not None:
            out = out + self.gamma * unflatten(y_pair, spatial)
        if y_unary is not None:
            out = out + unflatten(y_unary, spatial)
        return out

    # --------------------------------------------------------------- forward
    def _forward(self, x: torch.Tensor, need_weights: bool):
        self.check_input(x)
        q, k, v = self.project(x)
        maps: Dict[str, torch.Tensor] = {}
        q_mean = None
        if q is not None:
            q, k, q_mean = self.whitening(q, k)
        y_pair = y_unary = None
        if self.pairwise:
            y_pair, maps['pairwise'] = self.pairwise_term(q, k, v, need_weights)
        if self.unary != 'none':
            weights = self.unary_weights(x, q_mean, k)
            with no_autocast(v):
                y_unary = torch.bmm(weights, upcast(v)).to(v.dtype)  # (N, 1, dv)
            maps['unary'] = weights
        return self.fuse(x, y_pair, y_unary), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Memory-efficient path: no ``N×N`` attention map is kept."""
        return self._forward(x, need_weights=False)[0]

    def forward_with_attention(self, x: torch.Tensor):
        """Explicit path: the output and ``{'pairwise': (N, Lq, Lk), 'unary': (N, 1, Lk)}``
        (the terms this block has)."""
        return self._forward(x, need_weights=True)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, mode={self.mode!r}, reduction={self.reduction}, '
                f'whiten={self.whiten!r}, temperature={self.temperature}, '
                f'pairwise={self.pairwise}, unary={self.unary!r}, value={self.value!r}'
                + ''.join(f', {k}={getattr(self, k)}' for k in ('qk_init_std', 'value_init_std')
                          if getattr(self, k) != 0.01)
                + ('' if self.map_budget_mb is None
                   else f', map_budget_mb={self.map_budget_mb:g}'))


@MODELS.register_module()
class NonLocalBlock(PairwiseContextBlock):
    """Non-local block with mmcv ``NonLocal1d/2d/3d`` semantics.

    Args: see :class:`PairwiseContextBlock` (``in_channels``, ``reduction``, ``mode``,
    ``use_scale``, ``sub_sample``, ``norm_cfg``, ``dim``, ``qk_init_std``,
    ``value_init_std``, ``map_budget_mb``).

    Note:
        As mmcv: the output projection (its norm if ``norm_cfg`` is set, else its
        conv) is zero-initialised, so a new block is the identity (the NL paper
        zero-initialises the BN γ); ``use_scale`` only affects embedded Gaussian.
    """

    _abbr_ = 'nl_block'

    def __init__(self, in_channels: int, reduction: int = 2,
                 mode: str = 'embedded_gaussian', use_scale: bool = True,
                 sub_sample: bool = False, norm_cfg: Optional[dict] = None,
                 dim: int = 2, qk_init_std: float = 0.01,
                 value_init_std: float = 0.01,
                 map_budget_mb: Optional[float] = None) -> None:
        super().__init__(in_channels, reduction=reduction, mode=mode,
                         use_scale=use_scale, sub_sample=sub_sample, norm_cfg=norm_cfg,
                         dim=dim, qk_init_std=qk_init_std, value_init_std=value_init_std,
                         map_budget_mb=map_budget_mb)


#: the three reference implementations of DNL (REFERENCE.md §3.2)
DNL_PRESETS: Dict[str, dict] = {
    # mmseg DisentangledNonLocal2d / DNLHead
    'mmseg': dict(reduction=2, mode='embedded_gaussian', use_scale=True,
                  whiten='channel', temperature=0.05, unary='conv', value='reduced'),
    # yinmh17/DNL-Semantic-Segmentation NonLocal2d_nowd (whiten 'ln_nostd', nowd)
    'official_seg': dict(reduction=2, mode='embedded_gaussian', use_scale=False,
                         whiten='global', temperature=1., unary='conv', value='full'),
    # Howal/DNL-Object-Detection NonLocal2dGc (ratio 1/4, whiten 'channel', temp 0.05)
    'official_det': dict(reduction=4, mode='embedded_gaussian', use_scale=True,
                         whiten='channel', temperature=0.05, unary='conv', value='full'),
}


@MODELS.register_module()
class DisentangledNonLocalBlock(PairwiseContextBlock):
    """Disentangled Non-local block: whitened pairwise term + unary term.

    Args:
        in_channels: input channels.
        preset: ``'mmseg'`` (default), ``'official_seg'`` or ``'official_det'``
            (see ``DNL_PRESETS`` and the README). Every other argument left as
            ``None`` takes the preset's value.
        **the rest**: see :class:`PairwiseContextBlock`.

    Note:
        With ``value='full'`` (the official presets) only the pairwise term is gated
        by the zero-initialised ``γ``; the unary term is active from the first step,
        as in the official code, so such a block does not start as the identity.
        The no-weight-decay on θ/φ of the official segmentation recipe is an
        optimizer setting (``paramwise_cfg``), not a block argument.
    """

    _abbr_ = 'dnl_block'

    def __init__(self, in_channels: int, preset: str = 'mmseg', *,
                 reduction: Optional[int] = None, mode: Optional[str] = None,
                 use_scale: Optional[bool] = None, sub_sample: bool = False,
                 norm_cfg: Optional[dict] = None, dim: int = 2,
                 whiten: Optional[str] = None, temperature: Optional[float] = None,
                 pairwise: bool = True, unary: Optional[str] = None,
                 value: Optional[str] = None, qk_init_std: float = 0.01,
                 value_init_std: float = 0.01,
                 map_budget_mb: Optional[float] = None) -> None:
        check_choice('preset', preset, tuple(DNL_PRESETS))
        given = dict(reduction=reduction, mode=mode, use_scale=use_scale, whiten=whiten,
                     temperature=temperature, unary=unary, value=value)
        args = {k: DNL_PRESETS[preset][k] if v is None else v for k, v in given.items()}
        super().__init__(in_channels, sub_sample=sub_sample, norm_cfg=norm_cfg, dim=dim,
                         pairwise=pairwise, qk_init_std=qk_init_std,
                         value_init_std=value_init_std, map_budget_mb=map_budget_mb,
                         **args)
        self.preset = preset


@MODELS.register_module()
class PairwiseNonLocalBlock(DisentangledNonLocalBlock):
    """The DNL paper's pairwise-only block: DNL with ``unary='none'``."""

    _abbr_ = 'pairwise_nl_block'

    def __init__(self, in_channels: int, preset: str = 'mmseg', **kwargs) -> None:
        if kwargs.get('unary', 'none') != 'none' or kwargs.get('pairwise', True) is not True:
            raise ValueError('PairwiseNonLocalBlock is DNL with the unary term off; '
                             'it takes neither unary nor pairwise=False, got '
                             f'{ {k: kwargs[k] for k in ("unary", "pairwise") if k in kwargs} }')
        kwargs['unary'] = 'none'
        super().__init__(in_channels, preset, **kwargs)


@MODELS.register_module()
class UnaryNonLocalBlock(DisentangledNonLocalBlock):
    """The DNL paper's unary-only block: DNL with ``pairwise=False``."""

    _abbr_ = 'unary_nl_block'

    def __init__(self, in_channels: int, preset: str = 'mmseg', **kwargs) -> None:
        if kwargs.get('pairwise', False) is not False or kwargs.get('unary', 'x') == 'none':
            raise ValueError('UnaryNonLocalBlock is DNL with the pairwise term off; '
                             'it takes neither pairwise=True nor unary="none", got '
                             f'{ {k: kwargs[k] for k in ("unary", "pairwise") if k in kwargs} }')
        kwargs['pairwise'] = False
        super().__init__(in_channels, preset, **kwargs)
