"""LatentGNN: visible → latent → visible message passing through K latent nodes.

* LatentGNN: Learning Efficient Non-local Relations for Visual Recognition (Zhang et
  al., ICML 2019) — https://arxiv.org/abs/1905.11634; official code
  ``latentgnn/LatentGNN-V1-PyTorch`` (``lib/latentgnn_v1.py``).

Low-rank steps (:mod:`mmctx.models.blocks.low_rank`), per kernel:

=================  ==========================================================
features           down-projections ``X_v2l``, ``X_l2v`` = L2-normalised (over
                   channels) ``BN(conv1×1(x))`` of ``C' = C / channel_stride``
                   channels (one shared for ``mode='symmetric'``)
projection         ``Ψ_v2l = ReLU(BN(conv1×1(X_v2l)))`` ``(d, L)``, L2-normalised over
                   the positions; latent nodes ``Z = Ψ_v2l X_v2lᵀ`` ``(d, C')``
interaction        ``A = softmax_row(Ẑ Ẑᵀ)`` (``Ẑ``: ``Z`` L2-normalised over channels),
                   ``Z ← A Z`` (linear: ``f['mixing'] = A``)
re-projection      ``Ψ_l2v`` as ``Ψ_v2l`` from ``X_l2v``, L2-normalised over the ``d``
                   nodes (symmetric: the same ``Ψ``, both over nodes);
                   ``X̃ = Zᵀ Ψ_l2v`` → optional graph conv (1×1 + BN + ReLU)
fusion             kernels concatenated → ``BN(conv1×1(·))`` to C → ``x + γ·(·)``,
                   ``γ = 0`` at init
=================  ==========================================================

Init as the official code: PyTorch's default conv init, the graph conv ``N(0,
0.01)``, BN γ=1, β=0, ``γ = 0``. The effective map (:meth:`forward_with_attention`)
is ``Ψ_l2vᵀ A Ψ_v2l`` (exact: ``X̃_i = Σ_j M_ij X_v2l,j``, before the graph conv),
averaged over the kernels. Defaults (``channel_stride=4``, one kernel,
``'asymmetric'``, no graph conv) are the official ``LatentGNNV1``'s; its detection
configs use ``latent_dims`` C3/C4/C5 = 150/100/50 with ``channel_stride`` 8–16 and the
graph conv on.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from ._base import check_bool, check_choice, check_int, no_autocast, pointwise, upcast
from .low_rank import LowRankBlock, build_norm

MODES = ('asymmetric', 'symmetric')


def _conv_norm(dim, cin, cout, norm_cfg, relu=False):
    layers = [pointwise(dim, cin, cout, bias=False), build_norm(norm_cfg, cout, dim)]
    return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))


class LatentKernel(nn.Module):
    """One LatentGNN kernel: the bipartite adjacencies ``Ψ`` and the graph conv."""

    def __init__(self, channels, latent_dim, mode, graph_conv, norm_cfg, dim):
        super().__init__()
        if mode == 'asymmetric':
            self.psi_v2l = _conv_norm(dim, channels, latent_dim, norm_cfg, relu=True)
            self.psi_l2v = _conv_norm(dim, channels, latent_dim, norm_cfg, relu=True)
        else:
            self.psi = _conv_norm(dim, channels, latent_dim, norm_cfg, relu=True)
        self.graph_conv = _conv_norm(dim, channels, channels, norm_cfg, relu=True) \
            if graph_conv else None


@MODELS.register_module()
class LatentGNNBlock(LowRankBlock):
    """LatentGNN (V1).

    Args:
        in_channels: input channels C.
        latent_dims: latent nodes ``d`` per kernel (an int for one kernel).
        channel_stride: ``C' = C // channel_stride`` visible channels.
        mode: ``'asymmetric'`` (separate v2l / l2v projections) or ``'symmetric'``.
        graph_conv: the 1×1 + BN + ReLU after the latent-to-visible step.
        norm_cfg: the norms (official: BN; FrozenBN in detection).
        dim: spatial rank of the input (1, 2 or 3).
    """

    _abbr_ = 'latentgnn_block'

    def __init__(self, in_channels: int, latent_dims: Union[int, Sequence[int]] = 64,
                 channel_stride: int = 4, mode: str = 'asymmetric',
                 graph_conv: bool = False, norm_cfg: Optional[dict] = dict(type='BN'),
                 dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        if isinstance(latent_dims, int) and not isinstance(latent_dims, bool):
            latent_dims = [latent_dims]
        if not isinstance(latent_dims, (list, tuple)) or not latent_dims:
            raise TypeError(f'latent_dims must be an int or a list of ints (one per '
                            f'kernel), got {latent_dims!r}')
        self.latent_dims = [check_int(f'latent_dims[{i}]', d) for i, d in enumerate(latent_dims)]
        self.channel_stride = check_int('channel_stride', channel_stride)
        c = in_channels // channel_stride
        if c < 1:
            raise ValueError(f'channel_stride={channel_stride} leaves 0 channels for '
                             f'in_channels={in_channels}')
        self.mode = check_choice('mode', mode, MODES)
        self.graph_conv = check_bool('graph_conv', graph_conv)
        if norm_cfg is None:
            raise ValueError('LatentGNNBlock needs norm_cfg (its projections are conv + norm)')
        self.inter_channels = c
        if mode == 'asymmetric':
            self.down_channel_v2l = _conv_norm(dim, in_channels, c, norm_cfg)
            self.down_channel_l2v = _conv_norm(dim, in_channels, c, norm_cfg)
        else:
            self.down_channel = _conv_norm(dim, in_channels, c, norm_cfg)
        self.kernels = nn.ModuleList(
            LatentKernel(c, d, mode, graph_conv, norm_cfg, dim) for d in self.latent_dims)
        self.up_channel = _conv_norm(dim, c * len(self.latent_dims), in_channels, norm_cfg)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                m.reset_parameters()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
        for k in self.kernels:
            if k.graph_conv is not None:
                nn.init.normal_(k.graph_conv[0].weight, std=0.01)
        nn.init.zeros_(self.gamma)

    # The base's single-kernel steps are run once per kernel (``_kernel``).
    def features(self, x):
        n = x.shape[0]
        if self.mode == 'asymmetric':
            v2l = F.normalize(self.down_channel_v2l(x), dim=1)
            l2v = F.normalize(self.down_channel_l2v(x), dim=1)
        else:
            v2l = l2v = F.normalize(self.down_channel(x), dim=1)
        return {'x_v2l': v2l, 'x_l2v': l2v, 'value': v2l.reshape(n, self.inter_channels, -1)}

    def _kernel_steps(self, kernel, f):
        n, length = f['value'].shape[0], f['value'].shape[-1]

        def adjacency(psi, feats):  # (N, d, L)
            return psi(feats).reshape(n, -1, length)

        if self.mode == 'asymmetric':
            v2l = F.normalize(adjacency(kernel.psi_v2l, f['x_v2l']), dim=2)  # over positions
            l2v = F.normalize(adjacency(kernel.psi_l2v, f['x_l2v']), dim=1)  # over nodes
        else:
            v2l = l2v = F.normalize(adjacency(kernel.psi, f['x_v2l']), dim=1)
        with no_autocast(v2l):
            v2l, l2v, value = upcast(v2l), upcast(l2v), upcast(f['value'])
            z = torch.bmm(v2l, value.transpose(1, 2))  # (N, d, C')
            zn = F.normalize(z, dim=-1)
            mixing = torch.bmm(zn, zn.transpose(1, 2)).softmax(dim=-1)  # (N, d, d)
            y = torch.bmm(torch.bmm(mixing, z).transpose(1, 2), l2v)  # (N, C', L)
        return v2l, mixing, l2v.transpose(1, 2), y

    def _forward(self, x, need_maps):
        self.check_input(x)
        spatial = tuple(x.shape[2:])
        f = self.features(x)
        outs, maps = [], []
        for kernel in self.kernels:
            gather, mixing, distribute, y = self._kernel_steps(kernel, f)
            y = y.reshape(x.shape[0], -1, *spatial).to(x.dtype)  # contiguous NC(H)(W)
            if kernel.graph_conv is not None:
                y = kernel.graph_conv(y)
            outs.append(y)
            if need_maps:
                maps.append(torch.bmm(distribute, torch.bmm(mixing, gather)))
        out = x + self.gamma * self.up_channel(torch.cat(outs, dim=1))
        return out, ({'pairwise': torch.stack(maps).mean(0)} if need_maps else {})

    def assignments(self, x):
        """Per kernel: ``{'gather', 'mixing', 'distribute'}`` (kernel 0 first)."""
        self.check_input(x)
        f = self.features(x)
        result = []
        for kernel in self.kernels:
            gather, mixing, distribute, _ = self._kernel_steps(kernel, f)
            result.append(dict(gather=gather, mixing=mixing, distribute=distribute))
        return result[0] if len(result) == 1 else result

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, latent_dims={self.latent_dims}, '
                f'channel_stride={self.channel_stride}, mode={self.mode!r}, '
                f'graph_conv={self.graph_conv}')
