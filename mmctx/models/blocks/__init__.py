"""Context blocks: GCNet's context modeling → transform → fusion (NL, DNL, SNL, GC, SE,
LESA) and the low-rank family's project → interact → re-project → fuse (A², EMA,
GloRe, LatentGNN, CGNL, Hamburger) and the sparse / factorised ones (criss-cross, DANet, ...)."""
from .cgnl import CGNLBlock
from .criss_cross import CrissCrossBlock, convert_mmcv_criss_cross
from .double_attention import DoubleAttentionBlock
from .dual_attention import DualAttentionBlock
from .ema import EMABlock
from .global_context import (GlobalContextBlock, SimplifiedNonLocalBlock,
                             SqueezeExcitationBlock)
from .glore import GloReBlock
from .hamburger import HamburgerBlock, NMFHam
from .latent_gnn import LatentGNNBlock
from .lesa import LESABlock
from .low_rank import LowRankBlock
from .non_local import (DNL_PRESETS, DisentangledNonLocalBlock, NonLocalBlock,
                        PairwiseContextBlock, PairwiseNonLocalBlock, UnaryNonLocalBlock)

__all__ = [
    'GlobalContextBlock', 'SimplifiedNonLocalBlock', 'SqueezeExcitationBlock',
    'NonLocalBlock', 'DisentangledNonLocalBlock', 'PairwiseNonLocalBlock',
    'UnaryNonLocalBlock', 'PairwiseContextBlock', 'DNL_PRESETS', 'LESABlock',
    'LowRankBlock', 'DoubleAttentionBlock', 'EMABlock', 'GloReBlock', 'LatentGNNBlock',
    'CGNLBlock', 'HamburgerBlock', 'NMFHam', 'CrissCrossBlock', 'convert_mmcv_criss_cross',
    'DualAttentionBlock'
]
