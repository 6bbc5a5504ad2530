"""Video recognition: every Kinetics config, the 3D backbones, tiny Kinetics, e2e."""
import copy
import functools
import glob
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmctx  # noqa: F401
from mmctx.models.blocks._base import ContextBlockBase
from mmctx.models.blocks.convert import convert_block_state_dict
from mmctx.utils import syncbn_to_bn

from .conftest import ROOT, python, scalars

VIDEO_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*', '*_kinetics400-rgb.py')))
MMACTION_CONFIGS = osp.join(
    osp.dirname(__import__('mmaction').__file__), '.mim', 'configs', 'recognition')
#: mmaction2's NL configs, whose recipe and NL positions ours follow
UPSTREAM = {
    'i3d': 'i3d/i3d_imagenet-pretrained-r50-nl-{mode}_8xb8-32x2x1-100e_kinetics400-rgb.py',
    'slowonly': 'slowonly/slowonly_r50-in1k-pre-nl-{mode}_8xb16-8x8x1-steplr-150e_'
                'kinetics400-rgb.py',
}
#: (stage, block index) of the 5 blocks, written out independently of the configs
POSITIONS = {
    'i3d': ['layer2.1', 'layer2.3', 'layer3.1', 'layer3.3', 'layer3.5'],
    'slowonly': ['layer2.0', 'layer2.2', 'layer3.0', 'layer3.2', 'layer3.4'],
}
#: file-name token -> (block class, attributes every block must have)
BLOCKS = {
    'nl-embedded-gaussian': ('NonLocalBlock', dict(mode='embedded_gaussian', sub_sample=True)),
    'nl-dot-product': ('NonLocalBlock', dict(mode='dot_product', sub_sample=True)),
    'nl-gaussian': ('NonLocalBlock', dict(mode='gaussian', sub_sample=True)),
    'dnl': ('DisentangledNonLocalBlock',
            dict(preset='mmseg', sub_sample=True, whiten='channel', unary='conv')),
    'snl': ('SimplifiedNonLocalBlock', dict(ratio=None, fusion_types=('channel_add', ))),
    'gcb-r16': ('GlobalContextBlock', dict(ratio=1. / 16, fusion_types=('channel_add', ))),
    'a2net': ('DoubleAttentionBlock', dict(reduction=4)),
    'glore': ('GloReBlock', dict(normalize=False)),  # the official fixed-size unit
    'ccnet': ('CrissCrossBlock', dict(recurrence=2)),
    'danet': ('DualAttentionBlock', dict(fusion='sum')),
}


def parse_name(path):
    """(architecture, block token) from an mmaction2-style config name."""
    arch, model = osp.basename(path).split('_')[:2]
    token = next(t for t in sorted(BLOCKS, key=len, reverse=True) if model.endswith(t))
    return arch, token


def build_recognizer(cfg):
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    syncbn_to_bn(cfg._cfg_dict, 'BN3d')
    cfg.model.backbone.pretrained = None
    init_default_scope('mmaction')
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


@functools.lru_cache(maxsize=None)
def upstream_cfg(arch, mode):
    return Config.fromfile(osp.join(MMACTION_CONFIGS, UPSTREAM[arch].format(mode=mode)))


def unscoped(value):
    """A config value without the ``_scope_`` keys mmengine adds to ``mmaction::``
    bases, as plain dicts and lists."""
    if isinstance(value, dict):
        return {k: unscoped(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [unscoped(v) for v in value]
    return value


def perturb(model, seed=0):
    """Small noise on every weight, real weights in the context blocks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.02 if 'non_local_block.' in name else p + noise * 0.01)
        for name, b in model.named_buffers():
            if name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


def test_configs_found():
    names = {parse_name(p) for p in VIDEO_CONFIGS}
    assert names == {('i3d', t) for t in BLOCKS} | {('slowonly', 'nl-embedded-gaussian'),
                                                    ('slowonly', 'dnl'), ('slowonly', 'glore'),
                                                    ('slowonly', 'a2net')}


@pytest.mark.parametrize('path', VIDEO_CONFIGS,
                         ids=[osp.relpath(p, ROOT) for p in VIDEO_CONFIGS])
def test_config_builds_and_runs_forward(path):
    arch, token = parse_name(path)
    mode = token[3:] if token.startswith('nl-') else 'embedded-gaussian'
    cfg, upstream = Config.fromfile(path), upstream_cfg(arch, mode)
    assert cfg.default_scope == 'mmaction' and cfg.custom_imports['imports'] == ['mmctx']
    # mmaction2's recipe: data, schedule, optimizer, runtime, head (SlowOnly: 150 epochs)
    for key in ('optim_wrapper', 'param_scheduler', 'train_dataloader', 'val_dataloader',
                'test_dataloader', 'val_evaluator', 'default_hooks', 'auto_scale_lr'):
        assert unscoped(cfg[key]) == unscoped(upstream[key]), key
    assert unscoped(cfg.train_cfg) == dict(unscoped(upstream.train_cfg), max_epochs=int(
        osp.basename(path).split('e_kinetics')[0].split('-')[-1]))
    assert unscoped(cfg.model.cls_head) == unscoped(upstream.model.cls_head)
    ours_bb = {k: v for k, v in unscoped(cfg.model.backbone).items() if k != 'context_cfg'}
    theirs_bb = {k: v for k, v in unscoped(upstream.model.backbone).items()
                 if k != 'non_local_cfg'}
    assert ours_bb.pop('type') == {'i3d': 'mmctx.ContextResNet3d',
                                   'slowonly': 'mmctx.ContextResNet3dSlowOnly'}[arch]
    assert theirs_bb.pop('type') in ('ResNet3d', 'ResNet3dSlowOnly')
    assert ours_bb == theirs_bb

    model = build_recognizer(cfg).eval()
    blocks = {name: m for name, m in model.backbone.named_modules()
              if isinstance(m, ContextBlockBase)}
    assert list(blocks) == [f'{p}.non_local_block' for p in POSITIONS[arch]]
    cls_name, attrs = BLOCKS[token]
    for block in blocks.values():
        assert type(block).__name__ == cls_name and block.dim == 3
        assert {k: getattr(block, k) for k in attrs} == attrs
        if token.startswith('nl-') or token == 'dnl':  # BN3d output, as mmaction's NL
            assert isinstance(block.conv_out.norm, torch.nn.BatchNorm3d)
    if token.startswith('nl-'):  # mmaction: no 1/sqrt(d) for I3D, scaled for SlowOnly
        scale = upstream.model.backbone.non_local_cfg.use_scale
        assert all(b.use_scale is scale for b in blocks.values())
    seen = []
    for name, block in blocks.items():
        block.register_forward_hook(lambda m, i, o, name=name: seen.append(
            (name, i[0].shape[1])))
    with torch.no_grad():
        feats = model(torch.randn(1, 1, 3, 8, 32, 32), mode='tensor')
    assert torch.isfinite(feats).all() and feats.shape[1] == 2048
    assert seen == [(n, 512 if '.layer2.' in f'.{n}' else 1024) for n in blocks]
    if token.startswith('nl-'):
        check_equals_mmaction_nl(model, upstream, arch)


def check_equals_mmaction_nl(ours, upstream, arch):
    """Same weights → same clip features as mmaction2's own NL config (mmcv NonLocal3d)."""
    theirs = build_recognizer(copy.deepcopy(upstream)).eval()
    perturb(theirs)
    state = theirs.state_dict()
    for pos in POSITIONS[arch]:
        prefix = f'backbone.{pos}.non_local_block.'
        state = convert_block_state_dict(state, 'mmcv_nonlocal', prefix, prefix)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 1, 3, 8, 32, 32)
    with torch.no_grad():
        a, b = theirs(x, mode='tensor'), ours(x, mode='tensor')
        for m in theirs.modules():
            if hasattr(m, 'non_local_block'):
                m.non_local = False  # the same network without its NL blocks
        c = theirs(x, mode='tensor')
    scale = a.abs().max().item()
    assert (a - c).abs().max() > 1e-3 * scale  # the blocks matter in this comparison
    # dot product makes large activations: compare relative to their scale
    assert (a - b).abs().max() <= 1e-5 * scale, (a - b).abs().max() / scale


# ------------------------------------------------------------------ backbones
def small_backbone(cls_name, **kwargs):
    from mmctx.models.backbones import resnet3d
    args = dict(depth=50, pretrained=None, base_channels=8,
                non_local=((0, 0, 0), (1, 0, 1, 0), (0, ) * 6, (0, 0, 0)),
                context_cfg=dict(type='NonLocalBlock', sub_sample=True,
                                 norm_cfg=dict(type='BN3d')))
    args.update(kwargs)
    return getattr(resnet3d, cls_name)(**args)


@pytest.mark.parametrize('cls_name', ['ContextResNet3d', 'ContextResNet3dSlowOnly'])
def test_context_backbone_bad_input(cls_name):
    with pytest.raises(ValueError, match='takes context_cfg .* instead of non_local_cfg'):
        small_backbone(cls_name, non_local_cfg=dict(mode='dot_product'))
    with pytest.raises(TypeError, match='context_cfg must be a dict with a "type" key'):
        small_backbone(cls_name, context_cfg='NonLocalBlock')
    with pytest.raises(ValueError, match='selects no residual block'):
        small_backbone(cls_name, non_local=0)
    with pytest.raises(ValueError, match='mode must be one of'):
        small_backbone(cls_name, context_cfg=dict(type='NonLocalBlock', mode='cosine'))


def test_slowonly_variant_is_mmaction_slowonly_plus_identity_blocks():
    from mmaction.models.backbones import ResNet3dSlowOnly
    plain = ResNet3dSlowOnly(depth=50, pretrained=None, base_channels=8)
    plain.init_weights()
    ours = small_backbone('ContextResNet3dSlowOnly',
                          context_cfg=dict(type='mmctx.GlobalContextBlock', ratio=1. / 4))
    ours.init_weights()  # ResNet3dPathway.init_weights, then the blocks' own init
    missing, unexpected = ours.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all('.non_local_block.' in k for k in missing)
    assert [type(b).__name__ for b in ours.context_blocks()] == ['GlobalContextBlock'] * 2
    plain.eval(), ours.eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)  # identity at init
        for block in ours.context_blocks():
            torch.nn.init.normal_(block.channel_add_conv[-1].weight)
        assert not torch.allclose(ours(x), plain(x))


# --------------------------------------------------------------- tiny Kinetics
def test_tiny_kinetics_bad_input(tmp_path):
    from mmctx.testing import make_kinetics_rawframes, make_kinetics_videos
    with pytest.raises(ValueError, match='width must be a multiple of 32'):
        make_kinetics_videos(str(tmp_path), size=(48, 72))
    with pytest.raises(ValueError, match='splits keys must be train, val or test'):
        make_kinetics_rawframes(str(tmp_path), splits=dict(training=2))
    with pytest.raises(ValueError, match='num_frames must be an int >= 2'):
        make_kinetics_rawframes(str(tmp_path), num_frames=1)
    with pytest.raises(ValueError, match=r'num_classes must be an int in \[1, 8\]'):
        make_kinetics_videos(str(tmp_path), num_classes=9)


def test_tiny_kinetics_reads_back_through_mmaction(tmp_path):
    """Both layouts load with mmaction2's datasets and decoders, with the same pixels."""
    from mmaction.datasets import RawframeDataset, VideoDataset
    from mmengine.registry import init_default_scope

    from mmctx.testing import make_kinetics_rawframes, make_kinetics_videos
    init_default_scope('mmaction')
    root = str(tmp_path / 'data' / 'kinetics400')
    make_kinetics_videos(root, splits=dict(train=3), num_frames=8, size=(40, 64))
    make_kinetics_rawframes(root, splits=dict(train=3), num_frames=8, size=(40, 64))
    sample = [dict(type='SampleFrames', clip_len=8, frame_interval=1, num_clips=1,
                   test_mode=True)]
    videos = VideoDataset(
        osp.join(root, 'kinetics400_train_list_videos.txt'),
        [dict(type='DecordInit')] + sample + [dict(type='DecordDecode')],
        data_prefix=dict(video=osp.join(root, 'videos_train')))
    frames = RawframeDataset(
        osp.join(root, 'kinetics400_train_list_rawframes.txt'),
        sample + [dict(type='RawFrameDecode')],
        data_prefix=dict(img=osp.join(root, 'rawframes_train')))
    assert len(videos) == len(frames) == 3
    clips = []
    for i in range(3):
        v, f = videos[i], frames[i]
        assert v['label'] == f['label'] == i
        a, b = np.stack(v['imgs']).astype(float), np.stack(f['imgs']).astype(float)
        assert a.shape == b.shape == (8, 40, 64, 3)
        assert np.abs(a - b).mean() < 8  # two lossy codecs of the same frames
        clips.append(b)
    assert np.abs(clips[0] - clips[1]).mean() > 20  # the classes look different


# ------------------------------------------------------------------ end to end
def tiny_pipeline(pipeline, rawframes):
    """8-frame clips, short side 64, 56x56 crops (test: 3 crops of 64); decoded from JPEG
    frames if asked."""
    out = []
    for step in pipeline:
        step = dict(step)
        kind = step['type']
        if rawframes and kind == 'DecordInit':
            continue
        if rawframes and kind == 'DecordDecode':
            step = dict(type='RawFrameDecode')
        if kind == 'SampleFrames':
            step.update(clip_len=8, frame_interval=1)
        elif kind == 'Resize':
            step['scale'] = (-1, 64) if step['scale'][0] == -1 else (56, 56)
        elif kind == 'MultiScaleCrop':
            step['input_size'] = 56
        elif kind == 'CenterCrop':
            step['crop_size'] = 56
        elif kind == 'ThreeCrop':  # crops the full short side, as 256 after Resize 256
            step['crop_size'] = 64
        out.append(step)
    return out


def write_tiny_config(path, base, data_root, rawframes):
    """A child config as a user would write it: tiny clips, data under ``data_root``
    (``data/kinetics400/...`` as the configs name it), optionally extracted frames."""
    cfg = Config.fromfile(base)
    lines = [f'_base_ = {base!r}',
             "model = dict(backbone=dict(pretrained=None, base_channels=16),"
             " cls_head=dict(in_channels=512))"]
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        dataset = dict(data_root=data_root,
                       pipeline=tiny_pipeline(loader.dataset.pipeline, rawframes))
        if rawframes:
            folder = loader.dataset.data_prefix.video.replace('videos_', 'rawframes_')
            dataset.update(type='RawframeDataset',
                           ann_file=loader.dataset.ann_file.replace('videos', 'rawframes'),
                           data_prefix=dict(_delete_=True, img=folder))
        lines.append(f'{split}_dataloader = dict(batch_size=2, num_workers=0, '
                     f'persistent_workers=False, dataset={dataset!r})')
    lines += ['train_cfg = dict(max_epochs=1, val_begin=1, val_interval=1)',
              'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))']
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


@pytest.mark.parametrize('config, rawframes', [
    ('nonlocal/i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_'
     'kinetics400-rgb.py', False),
    ('dnl/slowonly_r50-in1k-pre-dnl_8xb16-8x8x1-steplr-150e_kinetics400-rgb.py', True),
], ids=['i3d-nl-videos', 'slowonly-dnl-rawframes'])
def test_e2e_train_and_validate(tmp_path, config, rawframes):
    from mmctx.testing import make_kinetics_rawframes, make_kinetics_videos
    make = make_kinetics_rawframes if rawframes else make_kinetics_videos
    make(str(tmp_path / 'data' / 'kinetics400'), splits=dict(train=4, val=2),
         num_frames=12, size=(48, 64))
    cfg_path = write_tiny_config(tmp_path / 'tiny.py', osp.join(ROOT, 'configs', config),
                                 str(tmp_path), rawframes)
    work_dir = str(tmp_path / 'wd')
    proc = python('tools/train.py', cfg_path, '--work-dir', work_dir)
    out = proc.stdout + proc.stderr
    records = scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)  # 4 clips, batch 2
    acc = [r for r in records if 'acc/top1' in r]
    assert len(acc) == 1 and 0 <= acc[0]['acc/top1'] <= acc[0]['acc/top5'] <= 1
    assert 'acc/top1' in out
    ckpt = torch.load(osp.join(work_dir, 'epoch_1.pth'), map_location='cpu',
                      weights_only=True)  # mmctx allowlists what mmengine pickles
    gammas = [v for k, v in ckpt['state_dict'].items()
              if k.endswith('non_local_block.conv_out.bn.weight')]
    # 5 blocks whose zero-initialised output BN moved: they were in the trained graph
    assert len(gammas) == 5 and all(g.abs().sum() > 0 for g in gammas)
    if not rawframes:  # tools/test.py: mmaction2's 10-clip x 3-crop test on the checkpoint
        test_dir = str(tmp_path / 'test')
        python('tools/test.py', cfg_path, osp.join(work_dir, 'epoch_1.pth'),
               '--work-dir', test_dir)
        metrics = glob.glob(osp.join(test_dir, '*', '*.json'))
        assert len(metrics) == 1 and 'acc/top1' in json.load(open(metrics[0]))


def test_convert_mmaction_nl_checkpoint(tmp_path):
    """A (randomised) mmaction2 I3D NL checkpoint → tools/convert_upstream.py → loads
    strictly into the mmctx config of the same name and gives the same features."""
    name = osp.basename(UPSTREAM['i3d'].format(mode='embedded-gaussian'))
    theirs = build_recognizer(copy.deepcopy(upstream_cfg('i3d', 'embedded-gaussian'))).eval()
    perturb(theirs)
    src, dst = str(tmp_path / 'mmaction.pth'), str(tmp_path / 'mmctx.pth')
    torch.save(dict(state_dict=theirs.state_dict(), meta=dict(note='upstream')), src)
    out = python('tools/convert_upstream.py', src, dst).stdout
    assert 'mmaction2 recognizer with NonLocal3d blocks' in out
    assert '5 NonLocal3d blocks: layer2.1, layer2.3, layer3.1, layer3.3, layer3.5' in out
    ours = build_recognizer(Config.fromfile(osp.join(ROOT, 'configs', 'nonlocal', name)))
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['mmctx_converted_from'] == dict(source='mmaction.pth',
                                                        block='NonLocal3d')
    ours.load_state_dict(ckpt['state_dict'], strict=True)
    ours.eval()
    x = torch.randn(1, 1, 3, 8, 32, 32)
    with torch.no_grad():
        a, b = theirs(x, mode='tensor'), ours(x, mode='tensor')
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
