"""Detection: ContextResNet (blocks after the residual add), every COCO config,
mmdet GCNet checkpoint conversion, end-to-end Mask R-CNN runs on a tiny COCO."""
import copy
import glob
import math
import os.path as osp
import pickle
import re

import pytest
import torch
from mmengine.config import Config

import mmctx  # noqa: F401
from mmctx.models.backbones.context_resnet import AfterAddBottleneck, ContextResNet
from mmctx.models.blocks._base import ContextBlockBase
from mmctx.utils import syncbn_to_bn

from .conftest import ROOT, python, scalars

ALL_DET_CONFIGS = sorted(
    f for f in glob.glob(osp.join(ROOT, 'configs', '**', '*_coco*.py'), recursive=True)
    if '_base_' not in f)
#: the context-block (plugin / after-add) detectors; LESA backbones: tests/test_lesa.py
DET_CONFIGS = [f for f in ALL_DET_CONFIGS if '_lesa-' not in osp.basename(f)]


def build_detector(cfg, test_cfg=None):
    """Build a config's model on CPU: SyncBN -> BN, no pretrained weights."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    syncbn_to_bn(cfg._cfg_dict)
    cfg.model.backbone.init_cfg = None
    if test_cfg is not None:
        cfg.model.test_cfg = test_cfg
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


def small_test_cfg(score_thr=0.05):
    """Fewer proposals and detections than COCO's, for fast CPU forwards."""
    return dict(rpn=dict(nms_pre=200, max_per_img=16, nms=dict(type='nms', iou_threshold=0.7),
                         min_bbox_size=0),
                rcnn=dict(score_thr=score_thr, nms=dict(type='nms', iou_threshold=0.5),
                          max_per_img=10, mask_thr_binary=0.5))


def data_sample(h, w):
    from mmdet.structures import DetDataSample
    return DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                       batch_input_shape=(h, w), scale_factor=(1., 1.)))


def randomize(model, seed=0, block_std=0.1):
    """Perturb every weight and BN statistic; give the context blocks real weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if re.search(r'(context_block|_block)\.', name):
                p.copy_(noise * block_std)
            else:
                p.add_(noise * 0.01)
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


# ------------------------------------------------------------- ContextResNet
def tiny_resnet(**kwargs):
    """An R-50 layout with narrow stages (base_channels 8): fast, still Bottlenecks."""
    return dict(depth=50, stem_channels=8, base_channels=8, norm_eval=False,
                frozen_stages=-1, **kwargs)


NL = dict(type='mmctx.NonLocalBlock', reduction=2)


@pytest.mark.parametrize('after_add, error, match', [
    ([NL], TypeError, 'after_add must be None or a dict'),
    (dict(block=NL), ValueError, r"missing: \['indices'\]"),
    (dict(block=NL, indices=[[], [], [0], []], where=1), ValueError, r"unknown: \['where'\]"),
    (dict(block=NL, indices=[[], [0]]), ValueError, r'one list of block indices per stage'),
    (dict(block=NL, indices=[[], [], [6], []]), ValueError,
     r'stage 2 \(layer3\) has 6 blocks: use -6..5'),
    (dict(block=NL, indices=[[], [], [-7], []]), ValueError, 'has index -7'),
    (dict(block=NL, indices=[[], [], [5, -1], []]), ValueError, 'names a block twice'),
    (dict(block=NL, indices=[[], [], [1.0], []]), TypeError, 'must hold ints'),
    (dict(block=NL, indices=[[], [], 4, []]), TypeError, r'indices\[2\] must be a list'),
    (dict(block='NonLocalBlock', indices=[[], [], [4], []]), TypeError,
     'block config must be a dict'),
    (dict(block=NL, indices=[[], [], [4], []], postfix=None), TypeError, 'postfix'),
])
def test_context_resnet_refuses_bad_arguments(after_add, error, match):
    with pytest.raises(error, match=match):
        ContextResNet(**tiny_resnet(after_add=after_add))


def test_context_resnet_needs_bottlenecks_and_distinct_names():
    with pytest.raises(TypeError, match='needs mmdet Bottleneck blocks.*BasicBlock'):
        ContextResNet(depth=18, after_add=dict(block=NL, indices=[[0], [], [], []]))
    gc = dict(type='mmctx.GlobalContextBlock', ratio=1. / 4)
    plugins = [dict(cfg=gc, stages=(False, False, True, False), position='after_conv3')]
    with pytest.raises(ValueError, match="layer3.4 already has a module named 'gc_block'"):
        ContextResNet(**tiny_resnet(plugins=plugins,
                                    after_add=dict(block=gc, indices=[[], [], [-2], []])))
    model = ContextResNet(**tiny_resnet(plugins=plugins, after_add=dict(
        block=gc, indices=[[], [], [-2], []], postfix='_after_add')))
    bottleneck = model.layer3[4]
    assert bottleneck.after_conv3_plugin_names == ['gc_block']
    assert bottleneck.after_add_name == 'gc_block_after_add'
    assert [n for n, _ in model.after_add_blocks()] == ['layer3.4']


def copy_weights(src, dst):
    """Load ``src``'s weights into ``dst`` where names match; return the leftovers."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    return set(missing), set(unexpected)


def test_block_input_is_the_pre_relu_residual_sum():
    from mmdet.models.backbones import ResNet
    block = dict(type='mmctx.DisentangledNonLocalBlock', preset='official_det')
    ours = ContextResNet(**tiny_resnet(after_add=dict(block=block,
                                                      indices=[[], [0], [-2], [-1]])))
    plain = ResNet(**tiny_resnet())
    randomize(ours, block_std=0.2)
    missing, unexpected = copy_weights(ours, plain)
    assert not missing and {k.split('.')[2] for k in unexpected} == {'dnl_block'}
    ours.eval(), plain.eval()

    # spies: in ours, each chosen Bottleneck's input and its block's input/output
    inputs, seen, outputs = {}, {}, {}
    for name, b in ours.after_add_blocks():
        bottleneck = ours.get_submodule(name)
        bottleneck.register_forward_pre_hook(
            lambda m, i, name=name: inputs.update({name: i[0]}))
        bottleneck.register_forward_hook(lambda m, i, o, name=name: outputs.update({name: o}))
        b.register_forward_hook(lambda m, i, o, name=name: seen.update({name: (i[0], o)}))
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        ours(x)
    assert set(seen) == {'layer2.0', 'layer3.4', 'layer4.2'}
    for name, (block_in, block_out) in seen.items():
        # mmdet's Bottleneck on the same input: its ReLU runs three times, the last
        # time on out + identity
        relu_inputs = []
        mmdet_bottleneck = plain.get_submodule(name)
        hook = mmdet_bottleneck.relu.register_forward_pre_hook(
            lambda m, i: relu_inputs.append(i[0].clone()))
        with torch.no_grad():
            mmdet_bottleneck(inputs[name])
        hook.remove()
        assert len(relu_inputs) == 3
        torch.testing.assert_close(block_in, relu_inputs[-1])  # the pre-ReLU sum
        assert (block_in < 0).any()  # ... really before the ReLU
        assert not torch.allclose(block_out, block_in, atol=1e-3)  # the block acts
        torch.testing.assert_close(outputs[name], torch.relu(block_out))


def test_zero_init_block_gives_plain_resnet_output_and_keeps_it_after_init_weights():
    from mmdet.models.backbones import ResNet
    ours = ContextResNet(**tiny_resnet(
        after_add=dict(block=NL, indices=[[], [], [-2], [0, 1, 2]])))
    ours.init_weights()  # mmdet's Kaiming init, then the blocks' own (zero) init
    assert len(ours.after_add_blocks()) == 4
    for _, block in ours.after_add_blocks():
        assert block.conv_out.conv.weight.abs().sum() == 0
    plain = ResNet(**tiny_resnet())
    randomize(ours)
    for _, block in ours.after_add_blocks():  # randomize gave them weights: zero again
        block.reset_parameters()
    copy_weights(ours, plain)
    ours.eval(), plain.eval()
    x = torch.randn(1, 3, 41, 33)
    with torch.no_grad():
        for a, b in zip(ours(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the patched Bottlenecks survive what runners do to models (EMA copies, pickling)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert [n for n, _ in clone.after_add_blocks()] == [n for n, _ in ours.after_add_blocks()]
        with torch.no_grad():
            torch.testing.assert_close(clone(x)[-1], plain(x)[-1], rtol=0, atol=0)


def test_with_cp_matches_and_every_block_parameter_gets_a_gradient():
    block = dict(type='mmctx.DisentangledNonLocalBlock', preset='official_det')
    args = tiny_resnet(after_add=dict(block=block, indices=[[], [], [-2], [0]]))
    plain_cp, with_cp = ContextResNet(**args), ContextResNet(with_cp=True, **args)
    randomize(plain_cp, block_std=0.2)
    with_cp.load_state_dict(plain_cp.state_dict())
    x = torch.randn(2, 3, 65, 57, dtype=torch.float64)
    results = []
    for model in (plain_cp, with_cp):  # float64: the two paths must agree to rounding
        model.double().train()
        xi = x.clone().requires_grad_()
        sum(o.square().mean() for o in model(xi)).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((xi.grad, grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, g in results[0][1].items():
        torch.testing.assert_close(g, results[1][1][name])
    # every block weight learns (biases that whitening or the softmax over positions
    # cancel get exactly zero gradient, in the official code as well)
    cancelled = ('theta.bias', 'phi.bias', 'conv_mask.bias')
    block_params = [n for n, _ in with_cp.named_parameters()
                    if 'dnl_block' in n and not n.endswith(cancelled)]
    assert len(block_params) == 2 * 5
    assert [n for n in block_params if not results[1][1][n].abs().sum() > 0] == []


# --------------------------------------------------------------------- configs
def test_configs_found():
    # GC/SNL/NL x R-50/101 x BN/SyncBN + 4 blocks x 2 places (GCNet / DNL tables) +
    # A², GloRe, LatentGNN, CGNL, EMA, Hamburger at the DNL table's 2 places +
    # DGMN in c5 after conv2 x R-50/101
    assert len(DET_CONFIGS) == 38


BLOCKS = {'gcb': 'GlobalContextBlock', 'snl': 'SimplifiedNonLocalBlock',
          'nl': 'NonLocalBlock', 'dnl': 'DisentangledNonLocalBlock',
          'a2net': 'DoubleAttentionBlock', 'glore': 'GloReBlock',
          'latentgnn': 'LatentGNNBlock', 'cgnl': 'CGNLBlock', 'emanet': 'EMABlock',
          'hamnet': 'HamburgerBlock', 'dgmn': 'DynamicGraphBlock'}


def expected_blocks(name, model):
    """{Bottleneck name: 'plugin' | 'after_add' | 'after_conv2'} that the file name
    promises."""
    backbone = model.backbone
    layers = [getattr(backbone, n) for n in backbone.res_layers]
    if '-dgmn-c5_' in name:  # every Bottleneck of c5, after conv2 (official 'after3x3')
        return {f'layer4.{i}': 'after_conv2' for i in range(len(layers[3]))}
    if '-c3-c5_' in name:  # every Bottleneck of c3-c5, after conv3 (mmdet plugin)
        return {f'layer{s + 1}.{i}': 'plugin' for s in (1, 2, 3)
                for i in range(len(layers[s]))}
    assert '-c4' in name, name
    where = {f'layer3.{len(layers[2]) - 2}': 'after_add'}
    if '-c4-c5all_' in name:
        where.update({f'layer4.{i}': 'after_add' for i in range(len(layers[3]))})
    return where


@pytest.mark.parametrize('path', DET_CONFIGS, ids=[osp.relpath(p, ROOT) for p in DET_CONFIGS])
def test_config_builds_and_runs_forward(path):
    name = osp.basename(path)
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmdet' and cfg.custom_imports['imports'] == ['mmctx']
    syncbn = cfg.model.backbone.norm_cfg.type == 'SyncBN'
    assert syncbn == ('-syncbn-' in name) and cfg.model.backbone.norm_eval == (not syncbn)
    model = build_detector(cfg, small_test_cfg(score_thr=0.)).eval()
    assert 'SyncBatchNorm' not in str(model)
    assert model.backbone.depth == (101 if name.startswith('mask-rcnn_r101') else 50)
    assert type(model.roi_head.bbox_head).__name__ == (
        'Shared4Conv1FCBBoxHead' if '4conv1fc' in name else 'Shared2FCBBoxHead')

    # the blocks the name promises, where it promises them, and nowhere else
    algo = re.match(r'mask-rcnn_r\d+(?:-syncbn)?-([a-z0-9]+)', name).group(1)
    where = expected_blocks(name, model)
    found = {}
    for bname, bottleneck in model.backbone.named_modules():
        blocks = [(n, m) for n, m in bottleneck.named_children()
                  if isinstance(m, ContextBlockBase)]
        if not blocks:
            continue
        assert len(blocks) == 1, (bname, blocks)
        child, block = blocks[0]
        assert type(block).__name__ == BLOCKS[algo], bname
        if isinstance(bottleneck, AfterAddBottleneck):
            assert bottleneck.after_add_name == child
            found[bname] = 'after_add'
        elif getattr(bottleneck, 'after_conv2_plugin_names', None):
            assert bottleneck.after_conv2_plugin_names == [child]
            assert block.in_channels == bottleneck.conv2.out_channels
            found[bname] = 'after_conv2'
        else:
            assert bottleneck.after_conv3_plugin_names == [child]
            assert block.in_channels == bottleneck.conv3.out_channels
            found[bname] = 'plugin'
        if algo == 'gcb':
            ratio = 1. / int(re.search(r'-gcb-r(\d+)-', name).group(1))
            assert block.ratio == ratio and block.fusion_types == ('channel_add', )
        if algo == 'nl':
            assert block.reduction == (4 if found[bname] == 'after_add' else 2)
        if algo == 'dnl':
            assert block.preset == 'official_det'
        if algo == 'dgmn':  # the official ReDynamicWeightsCat33 'deformatt'
            assert (block.reduction, block.groups, block.dilations, block.filter_act,
                    block.affinity_act) == (1, 4, (1, 4, 8, 12), None, 'softmax')
    assert found == where

    # one forward through backbone, RPN and both RoI heads: every block runs once
    calls = []
    for bname in found:
        for m in model.backbone.get_submodule(bname).children():
            if isinstance(m, ContextBlockBase):
                m.register_forward_hook(lambda *_, n=bname: calls.append(n))
    with torch.no_grad():
        (cls_score, bbox_pred, mask_pred), = model(torch.randn(1, 3, 64, 96),
                                                   [data_sample(64, 96)], mode='tensor')
    assert sorted(calls) == sorted(found)
    assert cls_score.shape == (16, 81) and mask_pred.shape == (16, 80, 28, 28)
    assert all(torch.isfinite(t).all() for t in (cls_score, bbox_pred, mask_pred))


# ----------------------------------------------------------------- converter
def test_convert_mmdet_gcnet_checkpoint(tmp_path):
    """Random upstream mmdet GCNet Mask R-CNN -> CLI -> mmctx config: same predictions."""
    torch.manual_seed(1)  # the initial weights and the image: not the suite's RNG state
    name = 'mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco.py'
    (tmp_path / 'upstream_cfg.py').write_text(f"_base_ = ['mmdet::gcnet/{name}']\n")
    test_cfg = small_test_cfg(score_thr=0.)
    upstream = build_detector(Config.fromfile(str(tmp_path / 'upstream_cfg.py')), test_cfg)
    plugins = [m for m in upstream.backbone.modules() if type(m).__name__ == 'ContextBlock']
    assert len(plugins) == 13
    randomize(upstream)
    src, dst = str(tmp_path / 'upstream.pth'), str(tmp_path / 'mmctx.pth')
    torch.save(dict(meta=dict(epoch=12), state_dict=upstream.state_dict()), src)
    out = python('tools/convert_upstream.py', src, dst).stdout
    assert ('mmdet detector with ContextBlock backbone plugins -> '
            'mmctx.GlobalContextBlock') in out
    for note in ('13 blocks in layer2-layer4', 'ResNet-50', 'ratio 128/512 = 1/4'):
        assert f'note: {note}' in out

    ours = build_detector(Config.fromfile(osp.join(ROOT, 'configs', 'gcnet', name)), test_cfg)
    ckpt = torch.load(dst, weights_only=True)
    ours.load_state_dict(ckpt['state_dict'], strict=True)
    assert ckpt['meta']['mmctx_converted_from']['plugin'] == 'ContextBlock'
    assert ckpt['meta']['epoch'] == 12
    upstream.eval(), ours.eval()
    img = torch.rand(1, 3, 128, 160) * 255
    with torch.no_grad():
        # the blocks matter: the backbone features differ without them
        feats = upstream.backbone(img)
        for m in plugins:
            m.channel_add_conv[-1].weight.mul_(0)
        assert not torch.allclose(feats[-1], upstream.backbone(img)[-1], atol=1e-3)
        upstream.load_state_dict(torch.load(src, weights_only=True)['state_dict'])
        a = upstream.predict(img, [data_sample(128, 160)])[0].pred_instances
        b = ours.predict(img, [data_sample(128, 160)])[0].pred_instances
    assert len(a) == 10 and a.scores.std() > 0
    torch.testing.assert_close(b.bboxes, a.bboxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(b.labels, a.labels)
    assert b.masks.shape == a.masks.shape == (10, 128, 160) and a.masks.any()
    assert (b.masks != a.masks).float().mean() < 1e-3


# ----------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    from mmctx.testing import make_coco
    return make_coco(str(tmp_path_factory.mktemp('coco')), splits=dict(train=4, val=2))


def tiny_det_overrides(root, scale=(128, 96)):
    """Tiny images, few proposals, one epoch of 2 iterations, the tiny COCO paths."""
    ann = osp.join(root, 'annotations', 'instances_val2017.json')
    opts = [
        'model.backbone.init_cfg=None', f'train_dataloader.dataset.pipeline.2.scale={scale}',
        'model.train_cfg.rpn_proposal.nms_pre=200',
        'model.train_cfg.rpn_proposal.max_per_img=64',
        'model.train_cfg.rcnn.sampler.num=64', 'model.test_cfg.rpn.nms_pre=200',
        'model.test_cfg.rpn.max_per_img=32', 'model.test_cfg.rcnn.max_per_img=10',
        'model.test_cfg.rcnn.score_thr=0.0', 'train_dataloader.batch_size=2',
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
        'default_hooks.logger.interval=1',
        f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}'
    ]
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={root}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    for split in ('val', 'test'):
        opts.append(f'{split}_dataloader.dataset.pipeline.1.scale={scale}')
    return opts


@pytest.mark.parametrize('config, block_key', [
    ('configs/gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py',
     'backbone.layer2.0.gc_block.conv_mask.weight'),
    ('configs/dnl/mask-rcnn_r50-syncbn-dnl-c4_fpn-4conv1fc_16xb4-1x_coco.py',
     'backbone.layer3.4.dnl_block.gamma'),
])
def test_e2e_coco_train_and_validate(config, block_key, tmp_path, tiny_coco):
    work_dir = str(tmp_path / 'wd')
    proc = python('tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
                  *tiny_det_overrides(tiny_coco))
    records = scalars(work_dir)
    losses = [r for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(r['loss']) for r in losses)
    assert all(k in losses[0] for k in ('loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'))
    metrics = [r for r in records if 'coco/bbox_mAP' in r]
    assert len(metrics) == 1, records
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP'):
        assert 0 <= metrics[0][key] <= 1, (key, metrics[0])
    assert 'Evaluating bbox' in proc.stdout + proc.stderr
    ckpt = torch.load(osp.join(work_dir, 'epoch_1.pth'), weights_only=True)
    assert block_key in ckpt['state_dict'] and ckpt['meta']['epoch'] == 1
