"""Backbone integrations (import only what the installed upstream packages allow)."""
import importlib.util

from .tiny_convnet import TinyConvNet

__all__ = ['TinyConvNet']

if importlib.util.find_spec('mmdet') is not None:
    from .context_resnet import ContextResNet  # noqa: F401
    __all__.append('ContextResNet')

if importlib.util.find_spec('mmaction') is not None:
    from .resnet3d import ContextResNet3d, ContextResNet3dSlowOnly  # noqa: F401
    __all__ += ['ContextResNet3d', 'ContextResNet3dSlowOnly']
