"""Context blocks (GCNet's context modeling → transform → fusion)."""
from .global_context import (GlobalContextBlock, SimplifiedNonLocalBlock,
                             SqueezeExcitationBlock)
from .lesa import LESABlock
from .non_local import (DNL_PRESETS, DisentangledNonLocalBlock, NonLocalBlock,
                        PairwiseContextBlock, PairwiseNonLocalBlock, UnaryNonLocalBlock)

__all__ = [
    'GlobalContextBlock', 'SimplifiedNonLocalBlock', 'SqueezeExcitationBlock',
    'NonLocalBlock', 'DisentangledNonLocalBlock', 'PairwiseNonLocalBlock',
    'UnaryNonLocalBlock', 'PairwiseContextBlock', 'DNL_PRESETS', 'LESABlock'
]
