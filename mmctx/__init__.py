"""mmctx: context-modeling blocks for OpenMMLab (mmseg, mmdet, mmaction2)."""
from .compat.safe_load import allow_mmengine_checkpoints
from .registry import MODELS
from .version import __version__

# mmengine 0.10.7 checkpoints must resume under torch >= 2.6 with weights_only=True
allow_mmengine_checkpoints()

__all__ = ['__version__', 'MODELS']
