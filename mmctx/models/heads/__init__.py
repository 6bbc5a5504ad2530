"""Decode heads (need mmsegmentation)."""
import importlib.util

__all__ = []

if importlib.util.find_spec('mmseg') is not None:
    from .context_head import ContextHead  # noqa: F401
    __all__.append('ContextHead')
