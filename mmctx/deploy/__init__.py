"""Deployment: ONNX export of mmctx blocks and of the segmentors built with them
(``tools/deploy/export_onnx.py``). Needs the ``deploy`` extra (``pip install -e
.[deploy]``: onnx, onnxruntime, onnxscript); importing this package does not."""
from .onnx import (Difference, ExportError, OnnxExport, OnnxMismatchError,
                   SegmentorLogits, block_types, build_block_for_export, check_onnx,
                   export_onnx, graph_issues, load_segmentor_for_export, other_size,
                   random_weights, trace)

__all__ = [
    'Difference', 'ExportError', 'OnnxExport', 'OnnxMismatchError', 'SegmentorLogits',
    'block_types', 'build_block_for_export', 'check_onnx', 'export_onnx', 'graph_issues',
    'load_segmentor_for_export', 'other_size', 'random_weights', 'trace'
]
