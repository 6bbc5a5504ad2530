"""mmctx: context-modeling blocks for OpenMMLab (mmseg, mmdet, mmaction2)."""
from .compat.plugin import install as _install_plugin_checks
from .compat.safe_load import allow_mmengine_checkpoints
from .registry import MODELS
from .version import __version__

# mmengine 0.10.7 checkpoints must resume under torch >= 2.6 with weights_only=True
allow_mmengine_checkpoints()
# clear errors for mmctx blocks given to mmcv's build_plugin_layer (ResNet plugins)
_install_plugin_checks()

__all__ = ['__version__', 'MODELS']
