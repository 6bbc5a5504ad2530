"""Convert released upstream checkpoints (whole models) to mmctx configs.

Segmentation: mmctx's ``ContextHead`` is an ``FCNHead`` that stores its block under the
block's ``_abbr_`` — ``nl_block``, ``dnl_block``, ``gc_block``, the attribute names of mmseg's
``NLHead``, ``DNLHead`` and ``GCHead`` — so everything but the block's own keys is
already in place; the block keys go through
:func:`mmctx.models.blocks.convert.convert_block_state_dict`.

Video: mmaction2's NL recognizers hold mmcv ``NonLocal3d`` blocks under
``backbone.layerN.M.non_local_block``; ``mmctx.ContextResNet3d`` keeps that name, so only
the block's own keys change.

Detection: mmdet's GCNet models hold mmcv ``ContextBlock`` plugins in their ResNet
Bottlenecks (``backbone.layerN.M.context_block.*``); the mmctx configs put
``GlobalContextBlock`` plugins at the same place, named by its ``_abbr_``
(``gc_block``), with the same parameter names inside.

LESA (the official ``Chenglin-Yang/LESA_classification`` and ``LESA_detection`` code):
its LESA module is ``conv2`` of the Bottlenecks with mmctx's parameter names
(``qkv_transform``, ``bn_similarity``, ``rel_height``, ...), so

* an ImageNet checkpoint (``{'net': state_dict}``, keys of a torchvision-style ResNet,
  ``module.``-prefixed when trained with DataParallel) becomes an mmpretrain
  ``ImageClassifier`` (``backbone.*``, ``fc.*`` → ``head.fc.*``), or, with
  ``backbone_only``, a backbone checkpoint for ``init_cfg=dict(type='Pretrained')`` of
  the detection / segmentation LESA backbones (without the head, the blocks in the 2-D
  table form: :func:`to_2d_tables`);
* an mmdet 2.x Mask R-CNN or HTC checkpoint keeps its keys (mmdet 3.3's Mask R-CNN and
  HTC use the same names; the official WRN-50-2 has a ResNet's keys); the official ``flatten_index`` buffers are dropped (recomputed), and 2-D
  tables of another size are adapted when loading (``LESABlock`` crops / interpolates).
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

from .blocks.convert import convert_block_state_dict

#: head kind -> (block prefix in the upstream model, block-level kind, mmctx block,
#: block prefix in mmctx's ContextHead). CCHead is an FCNHead with mmcv's
#: CrissCrossAttention ``cca`` applied ``recurrence`` times = ContextHead with
#: CrissCrossBlock(recurrence=...).
MMSEG_HEADS = {
    'NLHead': ('decode_head.nl_block.', 'mmcv_nonlocal', 'mmctx.NonLocalBlock',
               'decode_head.nl_block.'),
    'DNLHead': ('decode_head.dnl_block.', 'mmseg_dnl', 'mmctx.DisentangledNonLocalBlock',
                'decode_head.dnl_block.'),
    'GCHead': ('decode_head.gc_block.', 'mmcv_context_block', 'mmctx.GlobalContextBlock',
               'decode_head.gc_block.'),
    'CCHead': ('decode_head.cca.', 'mmcv_criss_cross', 'mmctx.CrissCrossBlock',
               'decode_head.cc_block.'),
}


#: heads that mmctx.ContextHead reproduces with renamed layers -> (a key that identifies
#: the head, [(upstream prefix, mmctx prefix)], mmctx block). EMAHead: ``ema_in_conv`` →
#: ``convs.0``, ``bottleneck`` → ``convs.1`` (``block_channels=ema_channels``), the EMA
#: unit's parts → ``ema_block``; LightHamHead (SegNeXt): ``squeeze`` → ``convs.0``,
#: ``align`` → ``convs.1`` (``input_transform='resize_concat'``, 1×1 convs), the
#: ``hamburger`` → ``ham_block``. ``conv_cat`` / ``conv_seg`` / the rest keep their names.
MMSEG_RENAMED_HEADS = {
    'EMAHead': ('decode_head.ema_module.bases', [
        ('decode_head.ema_in_conv.', 'decode_head.convs.0.'),
        ('decode_head.bottleneck.', 'decode_head.convs.1.'),
        ('decode_head.ema_mid_conv.', 'decode_head.ema_block.ema_mid_conv.'),
        ('decode_head.ema_module.bases', 'decode_head.ema_block.bases'),
        ('decode_head.ema_out_conv.', 'decode_head.ema_block.ema_out_conv.'),
    ], 'mmctx.EMABlock'),
    'LightHamHead': ('decode_head.hamburger.ham_in.conv.weight', [
        ('decode_head.squeeze.', 'decode_head.convs.0.'),
        ('decode_head.align.', 'decode_head.convs.1.'),
        ('decode_head.hamburger.', 'decode_head.ham_block.'),
    ], 'mmctx.HamburgerBlock'),
    # DAHead → mmctx.DualAttentionHead: PAM / CAM → the DualAttentionBlock ``da_block``
    # (the branch convs and classifiers keep their names; γ: the generic Scale fix)
    'DAHead': ('decode_head.pam.gamma.scale', [
        ('decode_head.pam.', 'decode_head.da_block.pam.'),
        ('decode_head.cam.', 'decode_head.da_block.cam.'),
    ], 'mmctx.DualAttentionBlock'),
    # OCRNet (CascadeEncoderDecoder: decode_head.0 FCNHead, decode_head.1 OCRHead) →
    # mmctx.ObjectContextHead: the object context block → ``ocr_block`` (same names inside)
    'OCRHead': ('decode_head.1.object_context_block.bottleneck.conv.weight', [
        ('decode_head.1.object_context_block.', 'decode_head.1.ocr_block.'),
    ], 'mmctx.ObjectContextBlock'),
    # APCHead → mmctx.AdaptiveContextHead: the ACMs and the bottleneck → ``apc_block``
    'APCHead': ('decode_head.acm_modules.0.gla.weight', [
        ('decode_head.acm_modules.', 'decode_head.apc_block.acm_modules.'),
        ('decode_head.bottleneck.', 'decode_head.apc_block.bottleneck.'),
    ], 'mmctx.AdaptiveContextBlock'),
    # ISAHead = ContextHead(num_convs=1, kernel_size=3, concat_input=False) with an
    # InterlacedSparseBlock: in_conv → convs.0, the relations and out_conv → ``isa_block``
    'ISAHead': ('decode_head.global_relation.key_project.0.conv.weight', [
        ('decode_head.in_conv.', 'decode_head.convs.0.'),
        ('decode_head.global_relation.', 'decode_head.isa_block.global_relation.'),
        ('decode_head.local_relation.', 'decode_head.isa_block.local_relation.'),
        ('decode_head.out_conv.', 'decode_head.isa_block.out_conv.'),
    ], 'mmctx.InterlacedSparseBlock'),
    # ANNHead → mmctx.AsymmetricNonLocalHead: its AFNB / APNB blocks keep mmseg's names
    # (``fusion``, ``context``) and parameter names: no key changes
    'ANNHead': ('decode_head.fusion.stages.0.key_project.conv.weight', [],
                'mmctx.AsymmetricNonLocalBlock'),
    # PSAHead → mmctx.PointwiseSpatialHead: the branch convs and proj → ``psa_block``
    # (same names inside; ``bottleneck`` / ``conv_seg`` stay in the head)
    'PSAHead': ('decode_head.attention.1.weight', [
        (f'decode_head.{m}.', f'decode_head.psa_block.{m}.')
        for m in ('reduce', 'attention', 'reduce_p', 'attention_p', 'proj')
    ], 'mmctx.PointwiseSpatialBlock'),
}
#: Every renamed head gets the generic mmcv ``Scale`` fix: ``<m>.gamma.scale`` (0-dim)
#: → ``<m>.gamma`` (shape ``(1, )``), the γ of every mmctx block.
#: what the converter prints for a head whose keys say nothing more (options to keep
#: from the upstream config, the mmctx configs to load into): ``kind -> [notes]``
MMSEG_HEAD_NOTES = {
    'PSAHead': ['mask_size, psa_type (collect / distribute when there is no reduce_p), '
                'compact, shrink_factor, normalization_factor, psa_softmax cannot be told '
                "from the keys: keep the upstream config's", 'configs/psanet/psanet_*.py '
                '(mmctx.PointwiseSpatialHead: PSAHead with a PointwiseSpatialBlock)'],
    'ISAHead': ['down_factor (mmseg default (8, 8)) cannot be told from the keys: keep '
                "the upstream config's", 'configs/isanet/isanet_*.py (InterlacedSparseBlock '
                'in ContextHead)'],
    'ANNHead': ['query_scales / key_pool_scales cannot be told from the keys: keep the '
                "upstream config's", 'configs/ann/ann_*.py (mmctx.AsymmetricNonLocalHead: '
                'ANNHead with two AsymmetricNonLocalBlocks, not ContextHead)'],
    'DAHead': ['configs/danet/danet_*.py (mmctx.DualAttentionHead: DAHead with a '
               'DualAttentionBlock)'],
    'OCRHead': ['scale (mmseg default 1) cannot be told from the keys: keep the upstream '
                "config's", 'configs/ocrnet/ocrnet_r*-d8_*.py (mmctx.ObjectContextHead after '
                "mmseg's FCNHead, a CascadeEncoderDecoder)"],
    'APCHead': ['pool_scales: one ACM per scale s, its gla conv has s*s outputs; keep the '
                "upstream config's", 'configs/apcnet/apcnet_*.py (mmctx.AdaptiveContextHead: '
                'APCHead with an AdaptiveContextBlock)'],
}

#: mmdet ResNet plugin -> (key pattern, block-level kind, mmctx block, its module name)
MMDET_PLUGINS = {
    'ContextBlock': (re.compile(r'^(backbone\.layer\d+\.\d+\.)context_block\.'),
                     'mmcv_context_block', 'mmctx.GlobalContextBlock', 'gc_block'),
}
#: number of res4 (layer3) Bottlenecks -> ResNet depth
RES4_BLOCKS_TO_DEPTH = {6: 50, 23: 101, 36: 152}


class ConversionError(ValueError):
    """The checkpoint is not one this converter knows how to convert."""


def detect_kind(state_dict: Dict) -> str:
    """Which upstream head a segmentor state dict holds, from its keys."""
    found = [kind for kind, (prefix, *_) in MMSEG_HEADS.items()
             if any(k.startswith(prefix) for k in state_dict)]
    found += [kind for kind, (key, *_) in MMSEG_RENAMED_HEADS.items() if key in state_dict]
    if len(found) == 1:
        return found[0]
    if not found:
        prefixes = sorted({'.'.join(k.split('.')[:2]) for k in state_dict})[:12]
        raise ConversionError(
            'found no mmseg NLHead / DNLHead / GCHead block in this checkpoint, nor a '
            f'CCHead (looked for keys starting with {[p for p, *_ in MMSEG_HEADS.values()]}), no '
            f'{" / ".join(MMSEG_RENAMED_HEADS)} ({[k for k, *_ in MMSEG_RENAMED_HEADS.values()]}), no '
            'mmdet ContextBlock backbone plugin (keys backbone.layer<i>.<j>.'
            'context_block.*), no mmaction2 NonLocal3d (keys backbone.layer<i>.<j>.'
            'non_local_block.*) and no official LESA module (keys [backbone.]layer<i>.<j>.'
            f'conv2.qkv_transform.weight); its keys start with {prefixes}')
    raise ConversionError(f'the checkpoint holds several context heads: {found}')


def describe_block(kind: str, state_dict: Dict) -> List[str]:
    """What the keys say about the block options a matching mmctx config needs."""
    if kind == 'EMAHead':
        bases = state_dict['decode_head.ema_module.bases']
        return [f'ema_channels={bases.shape[1]} (block_channels), num_bases={bases.shape[2]};'
                ' num_stages / momentum cannot be told from the keys: keep the upstream '
                "config's", "configs/emanet/emanet_*.py (EMABlock preset='mmseg')"]
    if kind == 'CCHead':
        return ['the recurrence (mmseg default 2) cannot be told from the keys: keep the '
                "upstream config's", 'configs/ccnet/ccnet_*.py (CrissCrossBlock in '
                'ContextHead)']
    if kind == 'LightHamHead':
        w = state_dict['decode_head.hamburger.ham_in.conv.weight']
        notes = [f'ham_channels={w.shape[0]}; MD_S / MD_R / steps cannot be told from the '
                 "keys (rand_init bases are not saved): keep the upstream config's",
                 'configs/hamnet/segnext_*.py (HamburgerBlock in ContextHead)']
        if 'decode_head.hamburger.ham.bases' in state_dict:
            notes.append('fixed bases saved (rand_init=False): set rand_init=False')
        return notes
    if kind in MMSEG_HEAD_NOTES:
        return list(MMSEG_HEAD_NOTES[kind])
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
    if kind in MMSEG_RENAMED_HEADS:
        renames = MMSEG_RENAMED_HEADS[kind][1]
        out = OrderedDict()
        for k, v in state_dict.items():
            src = next((a for a, _ in renames if k.startswith(a)), None)
            if src is not None:
                k = dict(renames)[src] + k[len(src):]
                if k.endswith('.gamma.scale') and v.dim() == 0:  # mmcv Scale -> γ (1, )
                    k, v = k[:-len('.scale')], v.reshape(1)
            out[k] = v
        return out, kind
    src, block_kind, _, dst = MMSEG_HEADS[kind]
    return convert_block_state_dict(state_dict, block_kind, src, dst), kind


#: heads whose mmctx counterpart is a documented head variant, not ContextHead
MMSEG_TARGET_HEADS = {'DAHead': 'mmctx.DualAttentionHead',
                      'ANNHead': 'mmctx.AsymmetricNonLocalHead',
                      'OCRHead': 'mmctx.ObjectContextHead',
                      'APCHead': 'mmctx.AdaptiveContextHead',
                      'PSAHead': 'mmctx.PointwiseSpatialHead'}


def mmseg_target_head(kind: str) -> str:
    """The mmctx head a converted mmseg head becomes."""
    return MMSEG_TARGET_HEADS.get(kind, 'mmctx.ContextHead')


def mmseg_target_block(kind: str) -> str:
    """The mmctx block a converted mmseg head holds."""
    return (MMSEG_RENAMED_HEADS.get(kind) or MMSEG_HEADS[kind])[2]


# ---------------------------------------------------------------- detection
def detect_det_kind(state_dict: Dict) -> Optional[str]:
    """Which mmdet backbone plugin a detector state dict holds, or None."""
    found = [kind for kind, (pattern, *_) in MMDET_PLUGINS.items()
             if any(pattern.match(k) for k in state_dict)]
    if len(found) > 1:
        raise ConversionError(f'the checkpoint holds several plugin kinds: {found}')
    return found[0] if found else None


def describe_det_plugins(kind: str, state_dict: Dict) -> List[str]:
    """Where the plugins sit and what the keys say about the matching mmctx config."""
    pattern = MMDET_PLUGINS[kind][0]
    where = sorted({m.group(1) for m in map(pattern.match, state_dict) if m},
                   key=lambda p: [int(t) for t in re.findall(r'\d+', p)])
    stages = sorted({int(p.split('.')[1][len('layer'):]) for p in where})
    notes = [f'{len(where)} blocks in layer{stages[0]}-layer{stages[-1]}'
             if stages else 'no blocks']
    res4 = {k.split('.')[2] for k in state_dict if k.startswith('backbone.layer3.')}
    depth = RES4_BLOCKS_TO_DEPTH.get(len(res4))
    notes.append(f'ResNet-{depth}' if depth else
                 f'{len(res4)} res4 blocks (not R-50/101/152)')
    if where:
        first = where[0] + 'context_block.'
        w = state_dict.get(first + 'channel_add_conv.0.weight',
                           state_dict.get(first + 'channel_mul_conv.0.weight'))
        if w is not None:
            notes.append(f'ratio {w.shape[0]}/{w.shape[1]} = 1/{w.shape[1] // w.shape[0]}'
                         if w.shape[1] % w.shape[0] == 0 else
                         f'ratio {w.shape[0]}/{w.shape[1]}')
        fusions = [f for f in ('channel_add', 'channel_mul')
                   if (first + f + '_conv.0.weight') in state_dict]
        if fusions != ['channel_add']:
            notes.append(f'fusion_types={tuple(fusions)}: set it in the block config')
        if first + 'conv_mask.weight' not in state_dict:
            notes.append("pooling_type='avg': set it in the block config")
    notes.append('BN vs SyncBN cannot be told from the keys: pick the config with the '
                 'norm of the upstream one')
    return notes


def convert_mmdet_detector(state_dict: Dict) -> Tuple['OrderedDict', str]:
    """Rename mmdet's ``context_block`` plugins to mmctx's; returns (state dict, kind)."""
    kind = detect_det_kind(state_dict)
    if kind is None:
        raise ConversionError('found no mmdet ContextBlock backbone plugin')
    pattern, block_kind, _, name = MMDET_PLUGINS[kind]
    out = OrderedDict(state_dict)
    for prefix in sorted({m.group(1) for m in map(pattern.match, state_dict) if m}):
        out = convert_block_state_dict(out, block_kind, prefix + 'context_block.',
                                       prefix + name + '.')
    return out, kind


# -------------------------------------------------------------------- video
#: mmaction2 ResNet3d non-local blocks (mmcv ``NonLocal3d``); mmctx.ContextResNet3d keeps
#: the module name ``non_local_block``
MMACTION_NONLOCAL = re.compile(r'^(backbone\.layer\d+\.\d+\.)non_local_block\.')


def convert_mmaction_recognizer(state_dict: Dict) -> Tuple['OrderedDict', str]:
    """mmaction2 NL recognizer (I3D / SlowOnly NL) → ``mmctx.ContextResNet3d`` with
    ``NonLocalBlock``; returns (state dict, kind ``'NonLocal3d'``)."""
    prefixes = sorted({m.group(1) for m in map(MMACTION_NONLOCAL.match, state_dict) if m})
    if not prefixes:
        raise ConversionError('found no mmaction2 non_local_block in the backbone')
    out = OrderedDict(state_dict)
    for prefix in prefixes:
        out = convert_block_state_dict(out, 'mmcv_nonlocal', prefix + 'non_local_block.',
                                       prefix + 'non_local_block.')
    return out, 'NonLocal3d'


def describe_mmaction_blocks(state_dict: Dict) -> List[str]:
    """Where the NL blocks sit and what the keys say about the block options."""
    where = sorted({m.group(1) for m in map(MMACTION_NONLOCAL.match, state_dict) if m},
                   key=lambda p: [int(t) for t in re.findall(r'\d+', p)])
    notes = [f'{len(where)} NonLocal3d blocks: '
             + ', '.join(p[len('backbone.'):-1] for p in where)]
    keys = [k for k in state_dict if MMACTION_NONLOCAL.match(k)]
    if not any('.theta.' in k for k in keys):
        notes.append("no theta/phi convs: mode='gaussian'")
    elif any('.concat_project.' in k for k in keys):
        notes.append("concat_project present: mode='concatenation'")
    else:
        notes.append("mode 'embedded_gaussian' or 'dot_product' (the keys cannot tell): "
                     'keep the mode of the upstream config')
    if any('.g.0.conv.' in k for k in keys):
        notes.append('sub_sample=True (pooled keys)')
    return notes


# --------------------------------------------------------------------- LESA
#: a LESA module inside a Bottleneck (official keys, with or without ``backbone.``)
LESA_KEY = re.compile(r'^(?:module\.)?(?:backbone\.)?layer\d+\.\d+\.conv2\.qkv_transform\.weight$')


def is_lesa(state_dict: Dict) -> bool:
    return any(LESA_KEY.match(k) for k in state_dict)


def _without_data_parallel_prefix(state_dict: Dict) -> 'OrderedDict':
    """Keys without ``module.`` when every key has it (a DataParallel checkpoint)."""
    strip = all(k.startswith('module.') for k in state_dict)
    return OrderedDict((k[len('module.'):] if strip else k, v) for k, v in state_dict.items())


def convert_lesa(state_dict: Dict, backbone_only: bool = False) -> Tuple['OrderedDict', str]:
    """An official LESA checkpoint → mmctx; returns (state dict, kind).

    kind ``'LESA_classification'`` (mmpretrain ``ImageClassifier``, or the backbone
    alone with ``backbone_only``) or ``'LESA_detection'`` (mmdet Mask R-CNN / HTC).
    """
    sd = OrderedDict((k, v) for k, v in _without_data_parallel_prefix(state_dict).items()
                     if not k.endswith('.flatten_index'))
    if any(k.startswith('backbone.') for k in sd):  # an mmdet detector
        if not any(k.startswith(('rpn_head.', 'roi_head.')) for k in sd):
            raise ConversionError('a LESA backbone with no rpn_head / roi_head keys: not an '
                                  'official LESA_detection Mask R-CNN / HTC checkpoint')
        if backbone_only:
            sd = OrderedDict((k[len('backbone.'):], v) for k, v in sd.items()
                             if k.startswith('backbone.'))
        return sd, 'LESA_detection'
    if 'fc.weight' not in sd or 'conv1.weight' not in sd:
        raise ConversionError('LESA keys without backbone. and without conv1 / fc: not an '
                              'official LESA_classification ResNet checkpoint')
    if backbone_only:
        out = OrderedDict((k, v) for k, v in sd.items() if not k.startswith('fc.'))
        return to_2d_tables(out), 'LESA_classification'
    out = OrderedDict()
    for k, v in sd.items():
        out[('head.' if k.startswith('fc.') else 'backbone.') + k] = v
    return out, 'LESA_classification'


#: BN statistics of an identity BN, for channels a converted block adds
_BN_IDENTITY = dict(weight=1., bias=0., running_mean=0., running_var=1.)


def to_2d_tables(state_dict: Dict) -> 'OrderedDict':
    """Classification-form LESA blocks → the 2-D-table form of the detection and
    segmentation backbones (the paper's ImageNet → COCO path).

    The official detection code drops the relative embeddings *and* (by a shape
    mismatch) the logits' and the output's BN. Here only what has no 2-D counterpart
    goes: the flattened-index embeddings ``relative``; ``bn_similarity`` keeps its
    ``q·k`` channels and gets identity channels for the 2-D relative term (its tables
    start from their init), and ``bn_output`` keeps the ``Σ a v`` channels (the
    classification form also normalises the value-embedding term, which the 2-D form
    has not).
    """
    out = OrderedDict(state_dict)
    prefixes = [k[:-len('relative')] for k in state_dict if k.endswith('.relative')]
    for prefix in prefixes:
        del out[prefix + 'relative']
        for name, init in _BN_IDENTITY.items():
            key = f'{prefix}bn_similarity.{name}'
            if key in out:
                t = out[key]
                g = t.shape[0] // 3
                out[key] = torch.cat([t[:g], torch.full_like(t[:g], init)])
            key = f'{prefix}bn_output.{name}'
            if key in out:
                out[key] = out[key][0::2].clone()
    return out


def describe_lesa(kind: str, state_dict: Dict) -> List[str]:
    """What the keys say: LESA blocks, the relative-position form and sizes, width."""
    sd = _without_data_parallel_prefix(state_dict)
    where = sorted({k.rsplit('.conv2.', 1)[0] for k in sd if LESA_KEY.match(k)},
                   key=lambda p: [int(t) for t in re.findall(r'\d+', p)])
    notes = [f'{len(where)} LESA blocks: ' + ', '.join(p.replace('backbone.', '') for p in where)]
    first = where[0] + '.conv2.' if where else ''
    if first + 'relative' in sd:
        length = (sd[first + 'relative'].shape[1] + 1) // 2
        side = int(round(length ** 0.5))
        notes.append(f"pe_type='classification' for {side}x{side} feature maps"
                     if side * side == length else
                     f"pe_type='classification' for {length} positions")
    elif first + 'rel_height' in sd:
        size = (sd[first + 'rel_height'].shape[0] + 1) // 2
        notes.append(f"pe_type='detection_qr', tables for {size}x{size} (other sizes: "
                     'cropped / interpolated when loading)')
    if first + 'x_transform.0.conv_offset.weight' in sd:
        notes.append('deformable unary 3x3 (dcn): use a config with dcn / stage_with_dcn')
    conv1 = sd.get(f'{where[0]}.conv1.weight') if where else None
    if conv1 is not None:
        stage = int(re.findall(r'layer(\d+)', where[0])[0])
        wide = conv1.shape[0] == 2 * 64 * 2 ** (stage - 1)
        if kind == 'LESA_classification':
            notes.append('WRN-50-2 widths: configs/lesa/lesa-wrn50_*' if wide
                         else 'ResNet-50 widths: configs/lesa/lesa-resnet50_*')
        else:
            htc = any(k.startswith('roi_head.semantic_head.') for k in sd)
            model = 'HTC' if htc else 'Mask R-CNN'
            width = 'WRN-50-2' if wide else 'ResNet-50'
            match = {(True, True): 'configs/lesa/htc_lesa-wrn50-*',
                     (False, False): 'configs/lesa/mask-rcnn_lesa-r50-*'}.get(
                         (htc, wide), 'no mmctx config has this pair: start from '
                         'configs/lesa/ and set stem_channels / base_channels / expansion')
            notes.append(f'{model} with {width} widths: {match}')
    return notes


def convert_checkpoint(state_dict: Dict) -> Tuple['OrderedDict', str, str]:
    """Convert any supported upstream model; returns (state dict, task, kind).

    ``task`` is ``'mmseg'`` (kind: the head), ``'mmdet'`` (kind: the plugin),
    ``'mmaction'`` (kind: ``'NonLocal3d'``) or ``'lesa'`` (kind: ``'LESA_classification'``
    / ``'LESA_detection'``).
    """
    if is_lesa(state_dict):
        converted, kind = convert_lesa(state_dict)
        return converted, 'lesa', kind
    if detect_det_kind(state_dict) is not None:
        converted, kind = convert_mmdet_detector(state_dict)
        return converted, 'mmdet', kind
    if any(MMACTION_NONLOCAL.match(k) for k in state_dict):
        converted, kind = convert_mmaction_recognizer(state_dict)
        return converted, 'mmaction', kind
    converted, kind = convert_mmseg_segmentor(state_dict)
    return converted, 'mmseg', kind


# ------------------------------------------------------ upstream configs in memory
#: the block arguments an mmseg head takes, by head: (mmctx head, block type, {mmseg
#: head argument: block argument}, fixed block arguments, whether the block gets the
#: head's norm_cfg). Heads not listed keep their type (their mmctx config differs more).
MMSEG_HEAD_CONFIGS = {
    'NLHead': ('mmctx.ContextHead', 'mmctx.NonLocalBlock',
               dict(reduction='reduction', use_scale='use_scale', mode='mode'), {}, True),
    'DNLHead': ('mmctx.ContextHead', 'mmctx.DisentangledNonLocalBlock',
                dict(reduction='reduction', use_scale='use_scale', mode='mode',
                     temperature='temperature'), dict(preset='mmseg'), True),
    'GCHead': ('mmctx.ContextHead', 'mmctx.GlobalContextBlock',
               dict(ratio='ratio', pooling_type='pooling_type',
                    fusion_types='fusion_types'), {}, False),
    'CCHead': ('mmctx.ContextHead', 'mmctx.CrissCrossBlock',
               dict(recurrence='recurrence'), {}, False),
}


def _mmseg_default(kind: str, arg: str):
    """The default of an mmseg head's argument, from its signature (the block's own
    default may differ)."""
    import inspect

    from mmseg.registry import MODELS
    return inspect.signature(MODELS.get(kind).__init__).parameters[arg].default


def mmctx_head_config(head: Dict) -> Optional[Dict]:
    """The mmctx head config equivalent to an mmseg ``NLHead`` / ``DNLHead`` /
    ``GCHead`` / ``CCHead`` / ``DAHead`` config (a converted checkpoint of the upstream
    model loads into it strictly), or None for any other head."""
    kind = str(head.get('type', '')).split('.')[-1]
    if kind == 'DAHead':
        return dict(head, type=MMSEG_TARGET_HEADS[kind])
    if kind not in MMSEG_HEAD_CONFIGS:
        return None
    target, block_type, args, fixed, norm = MMSEG_HEAD_CONFIGS[kind]
    out = {k: v for k, v in head.items() if k not in args and k != 'type'}
    block = dict(type=block_type, **fixed)
    for src, dst in args.items():
        block[dst] = head[src] if src in head else _mmseg_default(kind, src)
    if norm and head.get('norm_cfg') is not None:
        block['norm_cfg'] = head['norm_cfg']
    out.update(type=target, block=block)
    return out
