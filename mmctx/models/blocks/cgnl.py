"""CGNL: compact generalized non-local block (dot-product and Gaussian kernels).

* Compact Generalized Non-local Network (Yue et al., NeurIPS 2018) —
  https://arxiv.org/abs/1810.13125; official code ``KaiyuYue/cgnl-network.pytorch``
  (``model/resnet.py``: ``SpatialCGNL``, ``SpatialCGNLx``), whose parameter names this
  block keeps (``t`` = θ, ``p`` = φ, ``g``, ``z``, ``gn``).

CGNL relates every (channel, position) pair of a channel group to every other; with a
kernel that factorises, ``f((i, c), (j, c')) = Σ_p α_p² θ_ic^p φ_jc'^p``, the
aggregation collapses to ``P + 1`` scalars per group — the low-rank steps
(:mod:`mmctx.models.blocks.low_rank`) with the group's ``c'·L`` (channel, position)
pairs as the "positions" and one value channel:

=================  ==========================================================
features           ``θ, φ, g`` = 1×1 convs ``C → C/2`` without bias, split into
                   ``groups`` channel groups of ``c'`` channels
projection         gather ``α_p φ^p`` (``p = 0..P``; the dot-product kernel: ``P = 0``
                   without powers, ``φ``) over the group's ``c'·L`` pairs; descriptors
                   ``s_p = Σ_(j,c') α_p φ^p_jc' g_jc'`` (÷ ``√(c'L)`` with
                   ``use_scale``), in fp32
re-projection      ``α_p θ^p``: ``y_ic = Σ_p α_p θ_ic^p s_p``
fusion             ``x + GN(z(y))``: ``z`` a grouped 1×1 ``C/2 → C`` without bias,
                   ``GroupNorm(groups, C)`` zero-initialised
=================  ==========================================================

Kernels: ``'dot'`` (``SpatialCGNL``: ``y = θ · Σ φ g``) and ``'gaussian'``
(``SpatialCGNLx``: the Taylor expansion of ``exp(−γ‖θ − φ‖²)`` to ``order`` P with the
official simplifications ``γ = 1e-4``, ``β = exp(−2γ)``, ``α_p = √((2γ)^p / p! · β)``,
element-wise powers; official ``order=3``). Init as the official network: convs
``N(0, 0.01)``, the GroupNorm γ = β = 0 (the block starts as the identity).
:meth:`forward_with_attention` returns the kernel over positions, ``M_ij`` = the mean
over groups and channel pairs of ``f((i, c), (j, c'))`` (ours: CGNL's output is not
``Σ_j M_ij v_j`` for one map shared by the channels); :meth:`assignments` gives the
full per-group factors.
"""
import math

import torch
import torch.nn as nn

from ...registry import MODELS
from ._base import check_bool, check_choice, check_int, no_autocast, pointwise, upcast
from .low_rank import LowRankBlock

KERNELS = ('dot', 'gaussian')


@MODELS.register_module()
class CGNLBlock(LowRankBlock):
    """Compact generalized non-local block.

    Args:
        in_channels: input channels C.
        groups: channel groups (official 8); ``C/2`` and ``C`` must be divisible by it.
        kernel: ``'dot'`` or ``'gaussian'`` (Taylor expansion).
        order: Taylor order P of the Gaussian kernel (official 3).
        gamma: the Gaussian kernel's γ (official 1e-4, fixed).
        use_scale: divide the descriptors by ``√(c'·L)`` (official: False).
        dim: spatial rank of the input (1, 2 or 3).
    """

    _abbr_ = 'cgnl_block'

    def __init__(self, in_channels: int, groups: int = 8, kernel: str = 'dot',
                 order: int = 3, gamma: float = 1e-4, use_scale: bool = False,
                 dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        self.groups = check_int('groups', groups)
        planes = in_channels // 2
        if planes < 1 or planes % groups or in_channels % groups:
            raise ValueError(f'CGNLBlock needs in_channels // 2 and in_channels divisible '
                             f'by groups; got in_channels={in_channels}, groups={groups}')
        self.planes = planes
        self.kernel = check_choice('kernel', kernel, KERNELS)
        self.order = check_int('order', order, minimum=0) if kernel == 'gaussian' else 0
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma <= 0:
            raise ValueError(f'gamma must be a number > 0, got {gamma!r}')
        self.gamma = float(gamma)
        self.use_scale = check_bool('use_scale', use_scale)
        self.t = pointwise(dim, in_channels, planes, bias=False)
        self.p = pointwise(dim, in_channels, planes, bias=False)
        self.g = pointwise(dim, in_channels, planes, bias=False)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dim - 1]
        self.z = conv(planes, in_channels, 1, groups=groups, bias=False)
        self.gn = nn.GroupNorm(groups, in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.t, self.p, self.g, self.z):
            nn.init.normal_(conv.weight, mean=0., std=0.01)
        nn.init.zeros_(self.gn.weight)
        nn.init.zeros_(self.gn.bias)

    def alphas(self):
        """``α_p`` for ``p = 0..P`` (the dot kernel: ``[1]``)."""
        if self.kernel == 'dot':
            return [1.]
        beta = math.exp(-2 * self.gamma)
        return [math.sqrt((2 * self.gamma) ** p / math.factorial(p) * beta)
                for p in range(self.order + 1)]

    def _powers(self, t: torch.Tensor) -> torch.Tensor:
        """``(N·G, c'L)`` → ``(N·G, P+1, c'L)``: ``α_p t^p``."""
        if self.kernel == 'dot':
            return t.unsqueeze(1)
        return torch.stack([a * t.pow(p) for p, a in enumerate(self.alphas())], dim=1)

    def features(self, x):
        n, g = x.shape[0], self.groups

        def grouped(conv):  # (N, C/2, *S) -> (N·G, c'·L): a group's (channel, position)
            return conv(x).reshape(n * g, -1)

        return {'theta': grouped(self.t), 'phi': grouped(self.p),
                'value': grouped(self.g).unsqueeze(1)}

    def project(self, f):
        with no_autocast(f['phi']):
            return self._powers(upcast(f['phi']))  # (N·G, P+1, c'L)

    def describe(self, f, gather):
        with no_autocast(gather):  # a sum over c'·L: fp32
            desc = torch.bmm(gather, upcast(f['value']).transpose(1, 2))  # (N·G, P+1, 1)
        if self.use_scale:
            desc = desc / math.sqrt(gather.shape[-1])
        return desc

    def reproject(self, f, gather):
        with no_autocast(f['theta']):
            return self._powers(upcast(f['theta'])).transpose(1, 2)  # (N·G, c'L, P+1)

    def fuse(self, x, y):
        return x + self.gn(self.z(y.to(x.dtype)))

    def forward_with_attention(self, x):
        """The output and ``{'pairwise': M (N, L, L)}``: the kernel ``f((i, c), (j,
        c'))`` averaged over each group's channel pairs and over the groups."""
        out = self.forward(x)
        n, g, length = x.shape[0], self.groups, x[0, 0].numel()
        f = self.features(x)
        # Σ_p α_p² mean_c θ^p_ic · mean_c' φ^p_jc' per group (never the c'L × c'L map)
        theta = self.reproject(f, None).transpose(1, 2)  # (N·G, P+1, c'L)
        phi = self.project(f)
        theta = theta.reshape(n * g, -1, self.planes // g, length).mean(2)
        phi = phi.reshape(n * g, -1, self.planes // g, length).mean(2)
        kernel = torch.bmm(theta.transpose(1, 2), phi)  # (N·G, L, L)
        return out, {'pairwise': kernel.view(n, g, length, length).mean(1)}

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, groups={self.groups}, kernel={self.kernel!r}, '
                f'order={self.order}, use_scale={self.use_scale}')
