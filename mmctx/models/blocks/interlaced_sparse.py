"""ISA: interlaced sparse self-attention.

* Interlaced Sparse Self-Attention for Semantic Segmentation (Huang et al., 2019) —
  https://arxiv.org/abs/1907.12273; mmseg 1.2.2 ``ISAHead``
  (``mmseg/models/decode_heads/isa_head.py``), whose layer names this block keeps.

Dense self-attention over ``L`` positions is factorised into two sparse ones. With the
local group size ``P = down_factor`` (per axis) and ``G = ⌈S / P⌉`` groups per axis,
position ``p = g·P + r`` (group index ``g``, offset ``r`` inside its ``P``-block):

=================  ==========================================================
padding            ``x`` (after zero-padding each axis to ``G·P``, the pad split
                   as ``⌊pad/2⌋`` before and the rest after, as ``ISAHead``)
long-range         ``ΠP`` groups of ``ΠG`` positions, one per offset ``r``:
(global relation)  ``{g·P + r : all g}`` — positions ``P`` apart;
                   ``x¹_{g,r} = R_glb(x_{·,r})_g``
short-range        ``ΠG`` groups of ``ΠP`` positions, one per block ``g``:
(local relation)   ``{g·P + r : all r}`` — a contiguous ``P``-block;
                   ``x²_{g,r} = R_loc(x¹_{g,·})_r``
fusion             crop the padding, ``y = out_conv([x²; x])`` (1×1 ConvModule,
                   ``2C → C``, norm + activation: ISAHead's ``out_conv``)
=================  ==========================================================

Each relation ``R`` is mmseg's ISA ``SelfAttentionBlock`` on its groups (the groups are
the batch): ``q = φ_q(z)``, ``k = φ_k(z)`` (each two 1×1 ConvModules ``C → d → d`` with
norm and activation), ``v = W_v z`` (1×1 conv ``C → C``, bias),
``R(z) = output_project(softmax(q kᵀ / √d) v)`` (1×1 ConvModule ``C → C`` with norm
and activation). Every position reaches every other in two hops (same offset, then
same block), at ``O(L·(ΠG + ΠP))`` cost instead of ``O(L²)``. The attention runs on
mmctx's memory-efficient core: no group map is kept in forward or backward unless
:meth:`~InterlacedSparseBlock.forward_with_attention` asks for the maps.

``ContextHead(num_convs=1, kernel_size=3, concat_input=False,
block=dict(type='mmctx.InterlacedSparseBlock', isa_channels=256, norm_cfg=...))`` is
mmseg's ``ISAHead`` layer for layer (``in_conv`` = ``convs.0``; dropout and
``conv_seg`` as ``BaseDecodeHead``).

Key map from mmseg ``ISAHead`` (prefix renames only; inside, the keys are equal):

=================================  =====================================
mmseg ``ISAHead``                  mmctx ``ContextHead``
=================================  =====================================
``decode_head.in_conv.*``          ``decode_head.convs.0.*``
``decode_head.global_relation.*``  ``decode_head.isa_block.global_relation.*``
``decode_head.local_relation.*``   ``decode_head.isa_block.local_relation.*``
``decode_head.out_conv.*``         ``decode_head.isa_block.out_conv.*``
=================================  =====================================

(each relation: ``{key,query}_project.{0,1}.{conv,bn}.*``, ``value_project.{weight,
bias}``, ``output_project.{conv,bn}.*``).

Note:
    * Choices where the paper / mmseg leave things open ([NF]): the block also takes
      1-D and 3-D inputs (the same grouping on every axis, ``down_factor`` one size per
      axis; mmseg is 2-D only); ``isa_channels`` defaults to ``C // 2`` (mmseg's
      configs: 256 at ``C = 512``).
    * The block is not the identity at init and not residual: its output is
      ``out_conv``'s (with ReLU, as ISAHead), so it fits a head better than a backbone.
    * The padded positions (zeros after padding) take part in both relations as keys
      and queries, exactly as in ``ISAHead`` (their outputs are cropped at the end).
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...registry import MODELS
from ._base import ContextBlockBase, check_cfg, check_int, concat_conv, exporting
from .projected_attention import ProjectedAttention, conv_modules

Maps = Dict[str, torch.Tensor]


class Relation(ProjectedAttention):
    """mmseg's ISA ``SelfAttentionBlock``: projected attention within each group (the
    batch axis), then ``output_project``; same parameter names.

    Shape:
        ``(B, C, *S)`` → ``(B, C, *S)``; the map ``(B, L, L)``, ``L = prod(S)``.
    """

    def __init__(self, in_channels: int, channels: int, norm_cfg: Optional[dict],
                 act_cfg: Optional[dict], dim: int) -> None:
        super().__init__(in_channels, in_channels, channels, in_channels, num_convs=2,
                         share_key_query=False, norm_cfg=norm_cfg, act_cfg=act_cfg,
                         dim=dim)
        self.output_project = conv_modules(in_channels, in_channels, 1, norm_cfg,
                                           act_cfg, dim)

    def forward(self, x: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        context, weights = self.attend(x, x, need_weights=need_weights)
        return self.output_project(context), weights


def check_sizes(name: str, value: Any, dim: int) -> Tuple[int, ...]:
    """An int (the same on every axis) or a sequence of ``dim`` ints >= 1."""
    values = (value, ) * dim if isinstance(value, int) and not isinstance(value, bool) \
        else value
    if not isinstance(values, (tuple, list)) or len(values) != dim:
        raise TypeError(f'{name} must be an int or a tuple of {dim} ints (one per axis), '
                        f'got {value!r}')
    return tuple(check_int(f'{name}[{i}]', v) for i, v in enumerate(values))


def _interleave(a: Sequence[int], b: Sequence[int]) -> List[int]:
    return [v for pair in zip(a, b) for v in pair]


@MODELS.register_module()
class InterlacedSparseBlock(ContextBlockBase):
    """Interlaced sparse self-attention (ISA), see the module docstring.

    Args:
        in_channels: input (and output) channels C.
        isa_channels: query/key width ``d`` of both relations; ``None`` means
            ``max(1, C // 2)`` (mmseg's configs: 256 at C = 512).
        down_factor: the local group size ``P`` per axis (an int: the same on every
            axis: the default 8 is mmseg's ``(8, 8)`` in 2-D).
        norm_cfg: norm of every ConvModule (the projections, ``output_project``,
            ``out_conv``); mmseg passes the head's (SyncBN in its configs).
        act_cfg: their activation.
        dim: spatial rank of the input (1, 2 or 3).

    Shape:
        ``(N, C, *S)`` → ``(N, C, *S)``, any ``S`` (padded to multiples of ``P``).
    """

    _abbr_ = 'isa_block'
    residual = False  # the output is out_conv([context; x]), not x plus something

    def __init__(self, in_channels: int, isa_channels: Optional[int] = None,
                 down_factor: Any = 8, norm_cfg: Optional[dict] = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU'), dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        self.down_factor = check_sizes('down_factor', down_factor, dim)
        self.isa_channels = (max(1, in_channels // 2) if isa_channels is None
                             else check_int('isa_channels', isa_channels))
        check_cfg('norm_cfg', norm_cfg), check_cfg('act_cfg', act_cfg)
        self.norm_cfg, self.act_cfg = norm_cfg, act_cfg
        self.global_relation = Relation(in_channels, self.isa_channels, norm_cfg,
                                        act_cfg, dim)
        self.local_relation = Relation(in_channels, self.isa_channels, norm_cfg,
                                       act_cfg, dim)
        self.out_conv = conv_modules(2 * in_channels, in_channels, 1, norm_cfg, act_cfg,
                                     dim)

    def reset_parameters(self) -> None:
        """As mmseg: ConvModule's init, PyTorch's for the value convs."""
        self.global_relation.reset_parameters()
        self.local_relation.reset_parameters()
        self.out_conv.init_weights()

    def _forward(self, x: torch.Tensor, need_weights: bool) -> Tuple[torch.Tensor, Maps]:
        self.check_input(x)
        n, c, spatial, d = x.shape[0], x.shape[1], tuple(x.shape[2:]), self.dim
        local = self.down_factor  # P: size of a short-range group, per axis
        # G groups per axis, ⌈S / P⌉ in integers (symbolic in an exported graph)
        glob = tuple((s + p - 1) // p for s, p in zip(spatial, local))
        pads = [g * p - s for g, p, s in zip(glob, local, spatial)]
        # exported: pad and crop always (a zero pad is a copy), no branch on the size
        padded = exporting() or any(pads)
        feats = x
        if padded:  # F.pad takes the last axis first
            feats = F.pad(x, [v for pad in reversed(pads) for v in (pad // 2, pad - pad // 2)])
        # long-range groups: the positions with one offset r inside their P-block
        feats = feats.reshape(n, c, *_interleave(glob, local))  # (N, C, G1, P1, ..., GD, PD)
        feats = feats.permute(0, *[3 + 2 * i for i in range(d)], 1,
                              *[2 + 2 * i for i in range(d)])  # (N, *P, C, *G)
        feats = feats.reshape(-1, c, *glob)  # (N·ΠP, C, *G)
        feats, global_map = self.global_relation(feats, need_weights)
        # short-range groups: the positions of one P-block g
        feats = feats.reshape(n, *local, c, *glob)  # (N, *P, C, *G)
        feats = feats.permute(0, *[2 + d + i for i in range(d)], 1 + d,
                              *[1 + i for i in range(d)])  # (N, *G, C, *P)
        # (a view here: made contiguous once, not by each of the relation's three convs)
        feats = feats.reshape(-1, c, *local).contiguous()  # (N·ΠG, C, *P)
        feats, local_map = self.local_relation(feats, need_weights)
        # every position back to its place, the padding cropped
        feats = feats.reshape(n, *glob, c, *local)  # (N, *G, C, *P)
        feats = feats.permute(0, 1 + d, *_interleave([1 + i for i in range(d)],
                                                     [2 + d + i for i in range(d)]))
        feats = feats.reshape(n, c, *[g * p for g, p in zip(glob, local)])  # (N, C, *S')
        if padded and exporting():  # the same crop as a gather: a slice's bound checks
            for axis, (pad, s) in enumerate(zip(pads, spatial)):  # would bound the size
                index = torch.arange(s, device=feats.device) + pad // 2
                feats = feats.index_select(2 + axis, index)
        elif padded:
            feats = feats[(slice(None), slice(None)) + tuple(
                slice(pad // 2, pad // 2 + s) for pad, s in zip(pads, spatial))]
        out = concat_conv(self.out_conv, (feats, x))
        maps = {'global': global_map, 'local': local_map} if need_weights else {}
        return out, maps

    def map_elements(self, x: torch.Tensor) -> int:
        """Elements of the maps :meth:`forward_with_attention` forms for ``x``
        (``N·ΠP·(ΠG)² + N·ΠG·(ΠP)²``; the analysis tools' size guard reads it)."""
        local = self.down_factor
        glob = [math.ceil(s / p) for s, p in zip(x.shape[2:], local)]
        g, p = math.prod(glob), math.prod(local)
        return x.shape[0] * (p * g * g + g * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Memory-efficient path: no group attention map is kept."""
        return self._forward(x, need_weights=False)[0]

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Maps]:
        """The output and the per-group maps of the two relations:

        * ``'global'`` ``(N·ΠP, ΠG, ΠG)``: batch row ``n·ΠP + r`` (offsets ``r``
          row-major) is the long-range group of offset ``r``; its queries and keys are
          the group's positions ``g`` (row-major over the padded grid ``G``);
        * ``'local'`` ``(N·ΠG, ΠP, ΠP)``: row ``n·ΠG + g`` is block ``g``; queries and
          keys are the offsets ``r`` inside it.

        Neither is a map over the input's positions, so the position-based analysis
        tools (which read ``'pairwise'``) skip this block.
        """
        return self._forward(x, need_weights=True)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, isa_channels={self.isa_channels}, '
                f'down_factor={self.down_factor}')
