"""Segmentation: ContextHead / ContextNeck, every config, checkpoint conversion, e2e."""
import glob
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import mmctx  # noqa: F401
from mmctx.utils import syncbn_to_bn

from .conftest import ROOT, free_port, python, run, scalars

CONFIGS = sorted(
    f for f in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in f)
#: segmentation configs, by the dataset in their name (mmseg's naming grammar)
SEG_CONFIGS = [f for f in CONFIGS
               if any(d in osp.basename(f) for d in ('_cityscapes-', '_ade20k-', '_voc12aug-',
                                                     '_pascal-context-', '_contextshapes-'))]


def build_segmentor(cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    syncbn_to_bn(cfg._cfg_dict)
    cfg.model.pretrained = None
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


def test_configs_found():
    assert len(SEG_CONFIGS) > 90  # 6 algorithms x 16 + NL modes + DNL paper recipes


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=[osp.relpath(p, ROOT) for p in SEG_CONFIGS])
def test_config_builds_and_runs_forward(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmseg' and cfg.custom_imports['imports'][0] == 'mmctx'
    model = build_segmentor(cfg).eval()
    assert 'SyncBatchNorm' not in str(model)
    last = cfg.model.decode_head  # a cascade (OCRNet) has a list: the last head predicts
    num_classes = (last[-1] if isinstance(last, list) else last).num_classes
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 65, 49), mode='tensor')
    if isinstance(logits, tuple):  # DAHead-style: (fused, per-branch outputs...)
        assert all(o.shape == logits[0].shape for o in logits)
        logits = logits[0]
    stride = 2 if cfg.model.backbone.type == 'mmctx.TinyConvNet' else 8
    assert logits.shape == (1, num_classes, -(-65 // stride), -(-49 // stride))
    assert torch.isfinite(logits).all()
    name = osp.basename(path)
    if 'smoke' not in path and not name.startswith('baseline'):
        # the head is mmctx's, with the block the file name says
        head = model.decode_head
        if isinstance(head, torch.nn.ModuleList):  # a cascade: mmseg's FCNHead, then ours
            assert type(head[0]).__name__ == 'FCNHead'
            head = head[-1]
        # documented head variants where the upstream wiring is not ContextHead's
        variants = {'danet': 'DualAttentionHead', 'ocrnet': 'ObjectContextHead',
                    'apcnet': 'AdaptiveContextHead', 'ann': 'AsymmetricNonLocalHead',
                    'psanet': 'PointwiseSpatialHead'}
        algo = name.split('_')[0]
        if '_contextshapes-' in name:  # the demo: every block alone in ContextHead
            variants = {}
        assert type(head).__name__ == next(
            (v for k, v in variants.items() if algo.startswith(k)), 'ContextHead')
        expected = {'nonlocal': 'NonLocalBlock', 'dnl-official': 'DisentangledNonLocalBlock',
                    'dnl-pairwise': 'PairwiseNonLocalBlock', 'dnl-unary': 'UnaryNonLocalBlock',
                    'dnl': 'DisentangledNonLocalBlock', 'snl': 'SimplifiedNonLocalBlock',
                    'gcnet': 'GlobalContextBlock', 'lesa': 'LESABlock',
                    'a2net': 'DoubleAttentionBlock', 'glore': 'GloReBlock',
                    'latentgnn': 'LatentGNNBlock', 'cgnl': 'CGNLBlock',
                    'emanet': 'EMABlock', 'hamnet': 'HamburgerBlock',
                    'segnext': 'HamburgerBlock', 'ccnet': 'CrissCrossBlock',
                    'gcu': 'GraphUnitBlock',
                    'danet': 'DualAttentionBlock', 'ocrnet': 'ObjectContextBlock',
                    'apcnet': 'AdaptiveContextBlock', 'isanet': 'InterlacedSparseBlock',
                    'ann': 'AsymmetricNonLocalBlock', 'psanet': 'PointwiseSpatialBlock',
                    'dgmn': 'DynamicGraphBlock', 'lrnet': 'LocalRelationBlock',
                    'se': 'SqueezeExcitationBlock'}
        algo = next(k for k in expected if name.split('_')[0].startswith(k))
        assert type(head.block).__name__ == expected[algo]
        if 'depth' in cfg.model.backbone:
            assert ('r101' in name) == (cfg.model.backbone.depth == 101)


# --------------------------------------------------------------- ContextHead
def test_context_head_options():
    from mmctx.models.heads import ContextHead
    common = dict(in_channels=16, channels=8, num_classes=3)
    with pytest.raises(ValueError, match=r'block_after must be an int in \[0, 1\]'):
        ContextHead(block=dict(type='GlobalContextBlock', ratio=0.5), block_after=2, **common)
    with pytest.raises(TypeError, match='block config must be a dict'):
        ContextHead(block='NonLocalBlock', **common)
    with pytest.raises(ValueError, match='a conv must follow the block'):
        ContextHead(block=dict(type='GloReBlock'), block_channels=12, block_after=1, **common)
    with pytest.raises(TypeError, match='block_channels must be None or an int'):
        ContextHead(block=dict(type='GloReBlock'), block_channels=1.5, **common)
    # block_channels: conv 16 -> 12, block at 12, conv 12 -> 8 (mmseg's EMAHead wiring)
    wide = ContextHead(block=dict(type='GloReBlock'), block_channels=12, concat_input=True,
                       **common)
    assert [(c.conv.in_channels, c.conv.out_channels) for c in wide.convs] == [(16, 12),
                                                                               (12, 8)]
    assert wide.block.in_channels == 12 and wide.conv_cat.conv.in_channels == 16 + 8
    head = ContextHead(block=dict(type='mmctx.SimplifiedNonLocalBlock'), block_after=1,
                       num_convs=3, **common)
    assert head.block_name == 'snl_block' and head.block.in_channels == 8
    # conv -> conv -> block -> conv: spy on the block's input
    seen = []
    head.block.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = [torch.randn(1, 16, 5, 5)]
    head(x)
    torch.testing.assert_close(seen[0], head.convs[1](head.convs[0](x[0])))


def test_context_neck():
    from mmctx.models.necks import ContextNeck
    neck = ContextNeck([4, 8], dict(type='mmctx.GlobalContextBlock', ratio=0.5), levels=(-1, ))
    feats = [torch.randn(1, 4, 6, 6), torch.randn(1, 8, 3, 3)]
    for block in neck.blocks.values():  # make the block non-trivial
        torch.nn.init.normal_(block.channel_add_conv[-1].weight)
    out = neck(feats)
    assert out[0] is feats[0] and not torch.allclose(out[1], feats[1])
    torch.testing.assert_close(out[1], neck.blocks['1'](feats[1]))
    with pytest.raises(ValueError, match='indices into 2 backbone levels'):
        ContextNeck([4, 8], dict(type='mmctx.SimplifiedNonLocalBlock'), levels=(2, ))
    with pytest.raises(ValueError, match='built for 2 levels, got 1'):
        neck(feats[:1])
    from mmdet.registry import MODELS
    fpn = ContextNeck([4, 8], dict(type='mmctx.SimplifiedNonLocalBlock'), levels=(0, 1),
                      follow=dict(type='mmdet.FPN', in_channels=[4, 8], out_channels=6,
                                  num_outs=2))
    assert [o.shape[1] for o in fpn(feats)] == [6, 6]
    assert MODELS.get('mmctx.ContextNeck') is ContextNeck


# ----------------------------------------------------------------- converter
UPSTREAM = {
    'NLHead': ('mmseg::nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py',
               'configs/nonlocal/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    'DNLHead': ('mmseg::dnlnet/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py',
                'configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    'GCHead': ('mmseg::gcnet/gcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
               'configs/gcnet/gcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    'CCHead': ('mmseg::ccnet/ccnet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
               'configs/ccnet/ccnet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'EMAHead': ('mmseg::emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
                'configs/emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'LightHamHead': ('mmseg::segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py',
                     'configs/hamnet/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py'),
    'DAHead': ('mmseg::danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
               'configs/danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    # mmseg's R-D8 OCRNet configs are R-101 only: the model base they share, at R-50
    'OCRHead': ('mmseg::_base_/models/ocrnet_r50-d8.py',
                'configs/ocrnet/ocrnet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'APCHead': ('mmseg::apcnet/apcnet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
                'configs/apcnet/apcnet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'ISAHead': ('mmseg::isanet/isanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
                'configs/isanet/isanet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    'ANNHead': ('mmseg::ann/ann_r50-d8_4xb2-80k_cityscapes-512x1024.py',
                'configs/ann/ann_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
    # mmseg's 97x97 masks as they are: at the test's 64x96 input the attention map is
    # 4x6, which the masks over-cover (mmcv's PSAMask drops what points outside)
    'PSAHead': ('mmseg::psanet/psanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
                'configs/psanet/psanet_r50-d8_4xb2-80k_cityscapes-512x1024.py'),
}


def randomize_segmentor(model, seed=0):
    """Perturb every weight and BN statistic; give the context block real weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            block = '_block.' in name
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(('.gamma', '.gamma.scale')):  # zero-init residual scales
                p.copy_(noise.sign() * (0.5 + noise.abs()))  # |γ| >= 0.5: attention counts
            else:
                p.copy_(noise * 0.1 if block else p + noise * 0.01)
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


@pytest.mark.parametrize('kind', list(UPSTREAM))
def test_convert_released_checkpoint(kind, tmp_path):
    upstream_cfg, ours_cfg = UPSTREAM[kind]
    (tmp_path / 'upstream_cfg.py').write_text(f'_base_ = [{upstream_cfg!r}]\n')
    upstream = build_segmentor(Config.fromfile(str(tmp_path / 'upstream_cfg.py')))
    head = upstream.decode_head  # a cascade (OCRNet): the last head is the context head
    assert type(head[-1] if isinstance(head, torch.nn.ModuleList) else head).__name__ == kind
    randomize_segmentor(upstream)
    src, dst = str(tmp_path / 'upstream.pth'), str(tmp_path / 'mmctx.pth')
    torch.save(dict(meta=dict(CLASSES=('a', 'b')), state_dict=upstream.state_dict()), src)
    out = python('tools/convert_upstream.py', src, dst).stdout
    assert f'mmseg {kind} segmentor' in out

    ours = build_segmentor(Config.fromfile(osp.join(ROOT, ours_cfg)))
    ours_head = ours.decode_head[-1] if isinstance(ours.decode_head, torch.nn.ModuleList) \
        else ours.decode_head
    # the tool names the mmctx head and block the checkpoint now holds
    assert (f'-> mmctx.{type(ours_head.block).__name__} in '
            f'mmctx.{type(ours_head).__name__} (') in out
    ckpt = torch.load(dst, weights_only=True)
    ours.load_state_dict(ckpt['state_dict'], strict=True)
    assert ckpt['meta']['mmctx_converted_from']['head'] == kind
    upstream.eval(), ours.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():  # the same seed: LightHam redraws its NMF bases every forward
        torch.manual_seed(1)
        a = upstream(x, mode='tensor')
        torch.manual_seed(1)
        b = ours(x, mode='tensor')
    if isinstance(a, tuple):  # DAHead: (pam_cam, pam, cam) logits, all compared
        assert isinstance(b, tuple) and len(a) == len(b)
        a, b = torch.cat(a, 1), torch.cat(b, 1)
    assert a.abs().max() > 0.1  # the comparison is not between two zero maps
    assert (a - b).abs().max().item() <= 1e-4 * max(1., a.abs().max().item())


def test_convert_refuses_what_it_cannot_convert(tmp_path):
    src = str(tmp_path / 'fcn.pth')
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(1),
                                'decode_head.conv_seg.weight': torch.zeros(1)}), src)
    proc = subprocess.run([sys.executable, 'tools/convert_upstream.py', src,
                           str(tmp_path / 'out.pth')], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 1
    assert 'found no mmseg NLHead / DNLHead / GCHead block' in proc.stderr
    assert "'decode_head.conv_seg'" in proc.stderr
    assert not osp.exists(tmp_path / 'out.pth')
    proc = subprocess.run([sys.executable, 'tools/convert_upstream.py', src, src], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and 'DST must differ from SRC' in proc.stderr


# ------------------------------------------------------------ end to end
def tiny_overrides(data_root, crop=(64, 128), scale=(256, 128)):
    """Small backbone width, crop and scale for CPU runs on tiny generated data."""
    return [
        'model.pretrained=None', 'model.backbone.stem_channels=16',
        'model.backbone.base_channels=16', 'model.decode_head.in_channels=512',
        'model.decode_head.channels=32', 'model.auxiliary_head.in_channels=256',
        'model.auxiliary_head.channels=16', f'model.data_preprocessor.size={crop}',
        f'train_dataloader.dataset.pipeline.2.scale={scale}',
        f'train_dataloader.dataset.pipeline.3.crop_size={crop}',
        f'val_dataloader.dataset.pipeline.1.scale={scale}',
        f'test_dataloader.dataset.pipeline.1.scale={scale}',
        'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', 'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False', 'train_cfg.max_iters=2',
        'train_cfg.val_interval=2', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=2'
    ] + [f'{s}_dataloader.dataset.data_root={data_root}' for s in ('train', 'val', 'test')]


def check_run(work_dir, out):
    records = scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any('mIoU' in r for r in records) and 'mIoU' in out


def test_e2e_cityscapes_dnl(tmp_path, tiny_cityscapes):
    work_dir = str(tmp_path / 'wd')
    proc = python('tools/train.py', 'configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py',
                  '--work-dir', work_dir, '--cfg-options', *tiny_overrides(tiny_cityscapes))
    check_run(work_dir, proc.stdout + proc.stderr)


def test_e2e_ade20k_gcnet(tmp_path):
    from mmctx.testing import make_ade20k
    root = make_ade20k(str(tmp_path / 'ade'), size=(96, 128))
    work_dir = str(tmp_path / 'wd')
    proc = python('tools/train.py', 'configs/gcnet/gcnet_r50-d8_4xb4-80k_ade20k-512x512.py',
                  '--work-dir', work_dir, '--cfg-options',
                  *tiny_overrides(root, crop=(64, 64), scale=(128, 96)))
    check_run(work_dir, proc.stdout + proc.stderr)
    cfg_dump = glob.glob(osp.join(work_dir, '*.py'))[0]
    assert Config.fromfile(cfg_dump).model.decode_head.num_classes == 150


def test_dist_train_nonlocal_two_cpu_processes(tmp_path, tiny_cityscapes):
    if torch.cuda.is_available():
        pytest.skip('checks the CPU (gloo) path')
    work_dir = str(tmp_path / 'wd')
    proc = run(['bash', 'tools/dist_train.sh',
                'configs/nonlocal/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py', '2',
                '--work-dir', work_dir, '--cfg-options', *tiny_overrides(tiny_cityscapes)],
               env=dict(PORT=str(free_port()), PYTHON=sys.executable))
    out = proc.stdout + proc.stderr
    assert 'Distributed training: True' in out
    check_run(work_dir, out)


MEMORY_PROBE = r'''
import sys, torch
from mmengine.config import Config
import mmctx
from tests.test_seg import build_segmentor
def kib(field):
    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1])
model = build_segmentor(Config.fromfile(sys.argv[1])).eval()
x = torch.randn(1, 3, 1024, 2048)
before = kib('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')
with torch.inference_mode():
    logits = model(x, mode='tensor')
assert torch.isfinite(logits).all()
print('PEAK_MIB', (kib('VmHWM') - before) / 1024, 'TOTAL_MIB', kib('VmHWM') / 1024)
'''


def test_whole_image_inference_memory():
    """DNL R-50-D8 at 1024x2048 (128x256 positions in the head) in a fresh process."""
    proc = python('-c', MEMORY_PROBE, 'configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py')
    line = next(l for l in proc.stdout.splitlines() if l.startswith('PEAK_MIB'))
    peak, total = float(line.split()[1]), float(line.split()[3])
    print(f'whole-image inference: +{peak:.0f} MiB over the model, process peak {total:.0f} MiB')
    assert total < 6 * 1024, f'process peak {total:.0f} MiB >= 6 GiB'
