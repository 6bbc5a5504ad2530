"""State-dict conversion from the upstream blocks to mmctx's.

The checkpoint converter (tools/convert_upstream.py) and the parity tests use these.

============================  ===============================  =====================
upstream block                mmctx block                      key changes
============================  ===============================  =====================
mmcv ``NonLocal1d/2d/3d``     ``NonLocalBlock``                ``g.conv.w`` → ``g.w``
                                                               (also ``g.0.conv`` with
                                                               sub_sample), same for
                                                               theta/phi;
                                                               ``concat_project`` 1×1
                                                               conv → linear
mmseg ``DisentangledNonLocal  ``DisentangledNonLocalBlock``    as NonLocal, plus
2d``                          (preset ``'mmseg'``)             ``conv_mask`` unchanged
mmcv ``ContextBlock``         ``GlobalContextBlock``           none
mmcv ``CrissCrossAttention``  ``CrissCrossBlock``              ``gamma.scale`` (shape
                                                               ``()``) → ``gamma``
                                                               (shape ``(1,)``)
============================  ===============================  =====================
"""
import re
from collections import OrderedDict
from typing import Dict

import torch

KINDS = ('mmcv_nonlocal', 'mmseg_dnl', 'mmcv_context_block', 'mmcv_criss_cross')

_NONLOCAL_RULES = [
    (re.compile(r'^(g|theta|phi)\.(?:0\.)?conv\.(weight|bias)$'), r'\1.\2'),
    (re.compile(r'^concat_project\.conv\.weight$'), 'concat_project.weight'),
]


def _convert_key(key: str, kind: str) -> str:
    if kind == 'mmcv_context_block':
        return key
    if kind == 'mmcv_criss_cross':
        return 'gamma' if key == 'gamma.scale' else key
    for pattern, repl in _NONLOCAL_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def convert_block_state_dict(state_dict: Dict[str, torch.Tensor], kind: str,
                             src_prefix: str = '', dst_prefix: str = '') -> 'OrderedDict':
    """Convert the keys of one upstream block found under ``src_prefix``.

    Keys outside ``src_prefix`` are copied unchanged, so this can be applied block by
    block to a whole model's state dict.

    Args:
        state_dict: the upstream state dict.
        kind: one of ``KINDS``.
        src_prefix: where the upstream block sits, e.g. ``'decode_head.nl_block.'``.
        dst_prefix: where the mmctx block sits.
    """
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {list(KINDS)}, got {kind!r}')
    out = OrderedDict()
    for key, value in state_dict.items():
        if not key.startswith(src_prefix):
            out[key] = value
            continue
        local = _convert_key(key[len(src_prefix):], kind)
        if local == 'concat_project.weight' and value.dim() > 2:
            value = value.reshape(value.shape[0], -1)  # (1, 2d, 1, 1) -> (1, 2d)
        if kind == 'mmcv_criss_cross' and local == 'gamma':
            value = value.reshape(1)  # mmcv's Scale: a 0-dim tensor
        out[dst_prefix + local] = value
    return out
