"""Datasets (ContextShapes needs mmsegmentation for its dataset class)."""
import importlib.util

from .context_shapes import (CLASSES, VARIANTS, generate_context_shapes,
                             make_sample)

__all__ = ['CLASSES', 'VARIANTS', 'generate_context_shapes', 'make_sample']

if importlib.util.find_spec('mmseg') is not None:
    from .context_shapes_dataset import ContextShapesDataset  # noqa: F401
    __all__.append('ContextShapesDataset')
