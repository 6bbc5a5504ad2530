"""Convert a released upstream checkpoint (mmseg context heads, mmdet GCNet, mmaction2 NL, official LESA) to mmctx.

    python tools/convert_upstream.py SRC.pth DST.pth [--backbone-only]

The kind is detected from the keys; the output loads (strictly) into the mmctx config
with the same name as the upstream config:

* mmseg heads: NLHead -> configs/nonlocal/, DNLHead -> configs/dnl/, GCHead ->
  configs/gcnet/, CCHead -> configs/ccnet/, EMAHead -> configs/emanet/, SegNeXt's
  LightHamHead -> configs/hamnet/segnext_*, DAHead -> configs/danet/, ISAHead ->
  configs/isanet/, ANNHead -> configs/ann/ (no key changes), OCRHead -> configs/ocrnet/
  (the R-D8 cascade), PSAHead -> configs/psanet/, APCHead -> configs/apcnet/;
* mmdet's gcnet/mask-rcnn_*-gcb-*_coco.py models (mmcv ContextBlock plugins) -> the
  configs/gcnet/ file of the same name;
* mmaction2's I3D / SlowOnly NL recognizers (mmcv NonLocal3d blocks) -> the
  configs/nonlocal/ file of the same name;
* the official LESA checkpoints (Chenglin-Yang/LESA_classification {'net': ...} ImageNet
  ResNets, LESA_detection Mask R-CNN / HTC) -> configs/lesa/lesa-{resnet50,wrn50}_*_in1k.py,
  configs/lesa/mask-rcnn_lesa-*.py and configs/lesa/htc_lesa-*.py. --backbone-only writes
  the backbone alone (for init_cfg=dict(type='Pretrained', checkpoint=DST) of a LESA
  backbone, e.g. ImageNet -> COCO as in the paper; the classification-form embeddings
  are left out).

The checkpoint is read with torch's safe loader (weights_only=True); pass
--trust-checkpoint only for a file you trust that the safe loader refuses.
"""
import os.path as _osp
import sys as _sys

_sys.path.insert(0, _osp.dirname(_osp.abspath(__file__)))
import _quiet  # noqa: E402  first: hides the known upstream deprecation warnings

import argparse
import os
import os.path as osp
import sys

import torch

import mmctx  # noqa: F401  (safe-load allowlist for mmengine checkpoints)
from mmctx.models.convert import MMDET_PLUGINS, ConversionError, convert_checkpoint, \
    convert_lesa, describe_block, describe_det_plugins, describe_lesa, \
    describe_mmaction_blocks, is_lesa, mmseg_target_block, mmseg_target_head


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='upstream checkpoint (.pth)')
    _quiet.add_flag(parser)
    parser.add_argument('dst', help='where to write the mmctx checkpoint')
    parser.add_argument('--backbone-only', action='store_true',
                        help='LESA: write the backbone alone, for init_cfg=Pretrained')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load with weights_only=False (only for files you trust)')
    args = parser.parse_args(argv)
    if not osp.isfile(args.src):
        parser.error(f'no such file: {args.src}')
    if osp.abspath(args.src) == osp.abspath(args.dst):
        parser.error('DST must differ from SRC (the source is never overwritten)')
    try:
        ckpt = torch.load(args.src, map_location='cpu',
                          weights_only=not args.trust_checkpoint)
    except Exception as e:  # noqa: BLE001  (report any unpickling failure clearly)
        print(f'error: could not read {args.src} with the safe loader: '
              f'{str(e).splitlines()[0]}\nIf you trust this file, re-run with '
              '--trust-checkpoint.', file=sys.stderr)
        return 1
    if not isinstance(ckpt, dict):
        print(f'error: {args.src} holds a {type(ckpt).__name__}, not a checkpoint dict',
              file=sys.stderr)
        return 1
    # mmengine / mmcv: 'state_dict'; the official LESA classification code: 'net'
    key = next((k for k in ('state_dict', 'net') if isinstance(ckpt.get(k), dict)), None)
    state_dict = ckpt[key] if key else ckpt
    try:
        if args.backbone_only:
            if not is_lesa(state_dict):
                raise ConversionError('--backbone-only is for official LESA checkpoints')
            converted, kind = convert_lesa(state_dict, backbone_only=True)
            task = 'lesa'
        else:
            converted, task, kind = convert_checkpoint(state_dict)
    except ConversionError as e:
        print(f'error: cannot convert {args.src}: {e}', file=sys.stderr)
        return 1
    out = {k: v for k, v in ckpt.items() if k != key} if key else {}
    out['state_dict'] = converted
    meta = dict(out.get('meta') or {})
    role = {'mmseg': 'head', 'mmdet': 'plugin', 'mmaction': 'block', 'lesa': 'model'}[task]
    meta['mmctx_converted_from'] = dict(source=osp.basename(args.src), **{role: kind})
    out['meta'] = meta
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(out, args.dst)
    changed = sum(1 for a, b in zip(state_dict, converted) if a != b)
    if task == 'mmseg':
        print(f'{args.src}: mmseg {kind} segmentor -> {mmseg_target_block(kind)} in '
              f'{mmseg_target_head(kind)} ({len(converted)} tensors, {changed} keys '
              'renamed)')
        notes = describe_block(kind, state_dict)
    elif task == 'mmaction':
        print(f'{args.src}: mmaction2 recognizer with {kind} blocks -> mmctx.NonLocalBlock '
              f'in mmctx.ContextResNet3d ({len(converted)} tensors, {changed} keys '
              'renamed); use the configs/nonlocal/ config named as the upstream one')
        notes = describe_mmaction_blocks(state_dict)
    elif task == 'lesa':
        target = ('a LESA backbone (init_cfg=dict(type=\'Pretrained\', checkpoint=...))'
                  if args.backbone_only else
                  'configs/lesa/lesa-*_in1k.py (mmpretrain)' if kind == 'LESA_classification'
                  else 'configs/lesa/htc_lesa-*.py (mmdet)'
                  if any(k.startswith('roi_head.semantic_head.') for k in converted)
                  else 'configs/lesa/mask-rcnn_lesa-*.py (mmdet)')
        print(f'{args.src}: official {kind} checkpoint -> {target} ({len(converted)} '
              'tensors)')
        notes = describe_lesa(kind, state_dict)
    else:
        _, _, block, name = MMDET_PLUGINS[kind]
        print(f'{args.src}: mmdet detector with {kind} backbone plugins -> {block} '
              f'plugins named {name!r} ({len(converted)} tensors, {changed} keys '
              'renamed); use the configs/gcnet/ config named as the upstream one')
        notes = describe_det_plugins(kind, state_dict)
    for note in notes:
        print(f'  note: {note}')
    print(f'written: {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
