"""The low-rank reconstruction family's shared steps: project → interact → re-project
→ fuse.

The EMANet survey's second family (A², EMA, GloRe, LatentGNN, Hamburger, ...) pools
the ``L`` positions into ``K ≪ L`` descriptors, optionally lets the descriptors
interact, and re-projects them onto the positions:

=================  ==========================================================
step               ``LowRankBlock`` method
=================  ==========================================================
features           ``features(x)``: a dict of flattened ``(N, C', L)`` maps
                   (``'value'`` is what the descriptors pool)
projection         ``project(f)`` → ``gather (N, K, L)``: descriptor ``k`` is
                   ``d_k = Σ_j gather_kj value_j`` (``describe``)
interaction        ``interact(d, f)`` → ``(N, K, C')`` (identity by default); a
                   block whose interaction is a ``K×K`` mixing stores it as
                   ``f['mixing']``
re-projection      ``reproject(f, gather)`` → ``distribute (N, L, K)``;
                   ``y_i = Σ_k distribute_ik d_k``
fusion             ``fuse(x, y)`` (``y`` as ``(N, C', *S)``)
=================  ==========================================================

The effective pairwise map of a rank-K block is ``M = distribute · [mixing ·]
gather`` ``(N, L, L)``: ``y_i = Σ_j M_ij value_j`` whenever the interaction is
linear (for GloRe's graph convolution, which is not, ``M`` is the map before the
interaction); :meth:`LowRankBlock.forward_with_attention` returns it as
``{'pairwise': M}``, so the analysis tools of the pairwise blocks run on this family.
``forward`` never forms it: every step is ``O(L·K)``.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ._base import ContextBlockBase, check_cfg

Features = Dict[str, torch.Tensor]


def norm_cfg_for(norm_cfg: Optional[dict], dim: int) -> Optional[dict]:
    """mmcv's ``'BN'`` is 2-D: ``'BN1d'`` / ``'BN3d'`` for ``dim`` 1 / 3 (other norms,
    e.g. ``SyncBN`` and ``GN``, work for any rank)."""
    if check_cfg('norm_cfg', norm_cfg) is None:
        return None
    cfg = dict(norm_cfg)
    if cfg['type'] in ('BN', 'BN2d') and dim != 2:
        cfg['type'] = f'BN{dim}d'
    return cfg


def build_norm(norm_cfg: dict, channels: int, dim: int) -> nn.Module:
    from mmcv.cnn import build_norm_layer
    return build_norm_layer(norm_cfg_for(norm_cfg, dim), channels)[1]


class LowRankBlock(ContextBlockBase):
    """Base of the low-rank blocks; see the module docstring for the steps.

    Subclasses implement ``features``, ``project``, ``reproject`` and ``fuse``, and
    may override ``describe`` / ``interact``.
    """

    def features(self, x: torch.Tensor) -> Features:
        raise NotImplementedError

    def project(self, f: Features) -> torch.Tensor:
        raise NotImplementedError

    def describe(self, f: Features, gather: torch.Tensor) -> torch.Tensor:
        """``d_k = Σ_j gather_kj value_j`` → ``(N, K, C')``."""
        return torch.bmm(gather, f['value'].transpose(1, 2))

    def interact(self, desc: torch.Tensor, f: Features) -> torch.Tensor:
        return desc

    def reproject(self, f: Features, gather: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fuse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, need_maps: bool) -> Tuple[torch.Tensor, Dict]:
        self.check_input(x)
        spatial = tuple(x.shape[2:])
        f = self.features(x)
        gather = self.project(f)
        desc = self.interact(self.describe(f, gather), f)
        distribute = self.reproject(f, gather)
        # y_i = Σ_k distribute_ik d_k, computed as (N, C', L) = dᵀ distributeᵀ: a
        # contiguous NC(H)(W) result (the (N, L, C') product, transposed, would be a
        # channels-last view, on which the next conv + BN backward is ~30× slower on CPU)
        y = torch.bmm(desc.transpose(1, 2), distribute.transpose(1, 2))
        y = y.reshape(x.shape[0], -1, *spatial)
        out = self.fuse(x, y)
        maps = {}
        if need_maps:
            mixed = gather if 'mixing' not in f else torch.bmm(f['mixing'], gather)
            maps['pairwise'] = torch.bmm(distribute, mixed)
        return out, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, need_maps=False)[0]

    def forward_with_attention(self, x: torch.Tensor):
        """The output and ``{'pairwise': M (N, L, L)}``, the effective map (module
        docstring); formed only here."""
        return self._forward(x, need_maps=True)

    def assignments(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{'gather': (N, K, L), 'distribute': (N, L, K)}`` (and ``'mixing'``
        ``(N, K, K)`` for a block with a linear interaction) for ``x``."""
        self.check_input(x)
        f = self.features(x)
        gather = self.project(f)
        self.interact(self.describe(f, gather), f)
        out = {'gather': gather, 'distribute': self.reproject(f, gather)}
        if 'mixing' in f:
            out['mixing'] = f['mixing']
        return out


__all__ = ['LowRankBlock', 'norm_cfg_for', 'build_norm']
