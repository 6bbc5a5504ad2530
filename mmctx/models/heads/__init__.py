"""Decode heads (need mmsegmentation)."""
import importlib.util

__all__ = []

if importlib.util.find_spec('mmseg') is not None:
    from .context_head import ContextHead  # noqa: F401
    from .ann_head import AsymmetricNonLocalHead  # noqa: F401
    __all__ += ['AsymmetricNonLocalHead']
    from .dual_attention_head import DualAttentionHead  # noqa: F401
    from .apc_head import AdaptiveContextHead  # noqa: F401
    from .ocr_head import ObjectContextHead  # noqa: F401
    from .pointwise_spatial_head import PointwiseSpatialHead  # noqa: F401
    __all__ += ['PointwiseSpatialHead']
    __all__ += ['AdaptiveContextHead', 'ObjectContextHead']
    __all__ += ['ContextHead', 'DualAttentionHead']
