"""Backbone integrations (import only what the installed upstream packages allow)."""
import importlib.util

from .tiny_convnet import TinyConvNet

__all__ = ['TinyConvNet']

if importlib.util.find_spec('mmaction') is not None:
    from .resnet3d import ContextResNet3d  # noqa: F401
    __all__.append('ContextResNet3d')
