"""Context blocks: GCNet's context modeling → transform → fusion (NL, DNL, SNL, GC, SE,
LESA) and the low-rank family's project → interact → re-project → fuse (A², EMA,
GloRe, LatentGNN, CGNL, Hamburger) and the sparse / factorised ones (criss-cross, DANet, ...)."""
from .adaptive_context import AdaptiveContextBlock
from .asymmetric_non_local import AsymmetricNonLocalBlock
from .cgnl import CGNLBlock
from .criss_cross import CrissCrossBlock, convert_mmcv_criss_cross
from .double_attention import DoubleAttentionBlock
from .dual_attention import DualAttentionBlock
from .dynamic_graph import DynamicGraphBlock
from .ema import EMABlock
from .global_context import (GlobalContextBlock, SimplifiedNonLocalBlock,
                             SqueezeExcitationBlock)
from .glore import GloReBlock
from .graph_unit import GraphUnitBlock
from .hamburger import HamburgerBlock, NMFHam
from .interlaced_sparse import InterlacedSparseBlock
from .latent_gnn import LatentGNNBlock
from .lesa import LESABlock
from .local_relation import LocalRelationBlock
from .low_rank import LowRankBlock
from .object_context import ObjectContextBlock
from .pointwise_spatial import PointwiseSpatialBlock, psa_mask
from .non_local import (DNL_PRESETS, DisentangledNonLocalBlock, NonLocalBlock,
                        PairwiseContextBlock, PairwiseNonLocalBlock, UnaryNonLocalBlock)

__all__ = [
    'PointwiseSpatialBlock', 'psa_mask',
    'InterlacedSparseBlock', 'AsymmetricNonLocalBlock',
    'DynamicGraphBlock', 'GraphUnitBlock',
    'ObjectContextBlock', 'AdaptiveContextBlock',
    'GlobalContextBlock', 'SimplifiedNonLocalBlock', 'SqueezeExcitationBlock',
    'NonLocalBlock', 'DisentangledNonLocalBlock', 'PairwiseNonLocalBlock',
    'UnaryNonLocalBlock', 'PairwiseContextBlock', 'DNL_PRESETS', 'LESABlock',
    'LowRankBlock', 'DoubleAttentionBlock', 'EMABlock', 'GloReBlock', 'LatentGNNBlock',
    'CGNLBlock', 'HamburgerBlock', 'NMFHam', 'CrissCrossBlock', 'convert_mmcv_criss_cross',
    'DualAttentionBlock', 'LocalRelationBlock'
]
