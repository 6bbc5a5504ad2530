"""Backbone integrations (import only what the installed upstream packages allow)."""
import importlib.util

from . import lesa_resnet  # noqa: F401  (LESAResNet / LESAResNetV1c where mmdet / mmseg are)
from . import lr_resnet  # noqa: F401  (LRResNet where mmpretrain is)
from .lesa_resnet import LESAResNetMixin
from .tiny_convnet import TinyConvNet

__all__ = ['TinyConvNet', 'LESAResNetMixin']

if importlib.util.find_spec('mmdet') is not None:
    from .context_resnet import ContextResNet  # noqa: F401
    __all__.append('ContextResNet')

if importlib.util.find_spec('mmaction') is not None:
    from .resnet3d import ContextResNet3d, ContextResNet3dSlowOnly  # noqa: F401
    __all__ += ['ContextResNet3d', 'ContextResNet3dSlowOnly']
