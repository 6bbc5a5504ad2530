"""Convert released upstream checkpoints (whole models) to mmctx configs.

mmctx's ``ContextHead`` is an ``FCNHead`` that stores its block under the block's
``_abbr_`` — ``nl_block``, ``dnl_block``, ``gc_block``, the attribute names of mmseg's
``NLHead``, ``DNLHead`` and ``GCHead`` — so everything but the block's own keys is
already in place; the block keys go through
:func:`mmctx.models.blocks.convert.convert_block_state_dict`.
"""
from collections import OrderedDict
from typing import Dict, List, Tuple

from .blocks.convert import convert_block_state_dict

#: head kind -> (block prefix in the upstream model, block-level kind, mmctx block)
MMSEG_HEADS = {
    'NLHead': ('decode_head.nl_block.', 'mmcv_nonlocal', 'mmctx.NonLocalBlock'),
    'DNLHead': ('decode_head.dnl_block.', 'mmseg_dnl', 'mmctx.DisentangledNonLocalBlock'),
    'GCHead': ('decode_head.gc_block.', 'mmcv_context_block', 'mmctx.GlobalContextBlock'),
}


class ConversionError(ValueError):
    """The checkpoint is not one this converter knows how to convert."""


def detect_kind(state_dict: Dict) -> str:
    """Which upstream head a segmentor state dict holds, from its keys."""
    found = [kind for kind, (prefix, _, _) in MMSEG_HEADS.items()
             if any(k.startswith(prefix) for k in state_dict)]
    if len(found) == 1:
        return found[0]
    if not found:
        prefixes = sorted({'.'.join(k.split('.')[:2]) for k in state_dict})[:12]
        raise ConversionError(
            'found no mmseg NLHead / DNLHead / GCHead block in this checkpoint (looked '
            f'for keys starting with {[p for p, _, _ in MMSEG_HEADS.values()]}); its '
            f'keys start with {prefixes}')
    raise ConversionError(f'the checkpoint holds several context heads: {found}')


def describe_block(kind: str, state_dict: Dict) -> List[str]:
    """What the keys say about the block options a matching mmctx config needs."""
    prefix = MMSEG_HEADS[kind][0]
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    notes = []
    if kind in ('NLHead', 'DNLHead'):
        if not any(k.startswith('theta') for k in keys):
            notes.append("no theta/phi convs: the block used mode='gaussian'")
        elif any(k.startswith('concat_project') for k in keys):
            notes.append("concat_project present: the block used mode='concatenation'")
        else:
            notes.append("mode 'embedded_gaussian' or 'dot_product' (the keys cannot tell "
                         'them apart): keep the mode of the upstream config')
        if any(k.startswith(('g.0.', 'phi.0.')) for k in keys):
            notes.append('sub_sample=True (max-pooled keys)')
        if any(k.startswith('conv_out.bn.') for k in keys):
            notes.append('conv_out has a norm: the block needs norm_cfg (the head\'s)')
    return notes


def convert_mmseg_segmentor(state_dict: Dict) -> Tuple['OrderedDict', str]:
    """Convert an mmseg NL/DNL/GC segmentor state dict; returns (state dict, kind)."""
    kind = detect_kind(state_dict)
    prefix, block_kind, _ = MMSEG_HEADS[kind]
    return convert_block_state_dict(state_dict, block_kind, prefix, prefix), kind
