"""Official LESA_detection checkpoints (mmdet 2.11 Mask R-CNN R-50 and HTC WRN-50-2,
``Chenglin-Yang/LESA_detection``) → ``tools/convert_upstream.py`` → mmctx's configs: the
same boxes, scores, labels and masks as the official model.

What is restated here, for this test only (no code imported or copied from the official
repository, and nothing of mmctx's ``LESABlock`` / ``LESAResNet`` on the official side):

* the official detection LESA module (:class:`OfficialDetectionLESA`): its parameter
  names and shapes and its eval-mode equations, written from the paper / official
  equations with a materialised ``L × L`` attention and the 2-D relative term gathered
  per (query, key) pair;
* the official backbone (:func:`official_backbone`): the Bottleneck layout of the
  official ``ResNet(strides=(1, 2, 2, 2), dcn=..., stage_with_dcn=(F, T, T, T),
  stage_with_lesa=(F, F, T, T), stage_with_first_conv=(T, T, T, F))``, built on
  torchvision's ResNet-50 / Wide-ResNet-50-2 (whose state-dict keys are mmdet's ResNet
  keys, and whose widths are the official ``wrn=True`` ones).

Shared with upstream on both sides: mmdet's detector, FPN neck and RPN / RoI heads (the
official model is the mmdet detector built from the mmctx config with its ``backbone``
replaced), and mmcv's deformable-conv op (``mmcv.ops.DeformConv2dPack``, the official
``type='DCN'``).
"""
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn

from .conftest import ROOT, python
from .test_det import build_detector, data_sample, small_test_cfg

#: the test's input side: stage maps 32, 16, 8, 4 (mmcv's CPU DCN needs ≥ 3×3)
SIZE = 128
STAGE_SIZES = (SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 32)
HEADS = 8


def dcn3x3(channels, stride=1, groups=1):
    """The official ``build_conv_layer(dict(type='DCN', deform_groups=1), ...)``."""
    from mmcv.ops import DeformConv2dPack
    return DeformConv2dPack(channels, channels, 3, stride=stride, padding=1,
                            groups=groups, deform_groups=1, bias=False)


class OfficialDetectionLESA(nn.Module):
    """The official detection LESA module (``pe_type='detection_qr'``, ``dcn``, the
    ``df_channel_shrink=[2]`` gate), restated: official parameter names, eval-mode
    equations, one fixed square size ``size`` (the official ``kernel_size``; a stride-2
    module computes at its input size and average-pools).

    ``sign=-1`` flips the relative offsets (query minus key): only to show that the
    comparison notices a wrong convention.
    """

    def __init__(self, c, size, stride=1, groups=HEADS):
        super().__init__()
        self.g, self.dq, self.dv, self.size, self.sign = groups, c // groups // 2, \
            c // groups, size, 1
        self.qkv_transform = nn.Conv1d(c, 2 * c, 1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(2 * c)
        self.bn_similarity = nn.BatchNorm2d(2 * groups)
        self.bn_output = nn.BatchNorm1d(c)
        self.x_transform = nn.Sequential(dcn3x3(c, groups=groups),
                                         nn.Conv2d(c, c, 1, bias=False))
        self.bn_x = nn.BatchNorm2d(c)
        self.reasoning = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * c, c, 1, bias=False),
                                       nn.BatchNorm2d(c), nn.ReLU())
        self.projection = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.rel_height = nn.Parameter(torch.randn(2 * size - 1, self.dq) * self.dq ** -0.5)
        self.rel_width = nn.Parameter(torch.randn(2 * size - 1, self.dq) * self.dq ** -0.5)
        self.pooling = nn.AvgPool2d(stride, stride) if stride > 1 else None

    def forward(self, x):
        n, c, h, w = x.shape
        assert h == w == self.size, 'the official module supports its one size only'
        g, dq, L = self.g, self.dq, h * w
        # per head: channels [q (dq), k (dq), v (dv)] of its block of 2·dq + dv
        qkv = self.bn_qkv(self.qkv_transform(x.reshape(n, c, L))).view(n, g, -1, L)
        q, k, v = qkv[:, :, :dq], qkv[:, :, dq:2 * dq], qkv[:, :, 2 * dq:]
        # query i at (y_i, x_i), key j at (y_j, x_j): r^h[y_j − y_i] + r^w[x_j − x_i]
        ys, xs = torch.arange(L) // w, torch.arange(L) % w
        dy = self.sign * (ys.view(1, L) - ys.view(L, 1)) + h - 1  # [i, j]
        dx = self.sign * (xs.view(1, L) - xs.view(L, 1)) + w - 1
        rel = self.rel_height[dy] + self.rel_width[dx]  # (L, L, dq)
        qk = torch.einsum('ngdi,ngdj->ngij', q, k)
        qr = torch.einsum('ngdi,ijd->ngij', q, rel)
        logits = self.bn_similarity(torch.cat([qk, qr], 1)).view(n, 2, g, L, L).sum(1)
        a = logits.softmax(-1)  # over the keys j
        sv = torch.einsum('ngij,ngdj->ngdi', a, v).reshape(n, c, L)  # head-major
        binary = self.bn_output(sv).view(n, c, h, w)
        unary = self.bn_x(self.x_transform(x))
        gate = torch.sigmoid(self.projection(self.reasoning(torch.cat([unary, binary], 1))))
        out = unary + gate * binary
        return out if self.pooling is None else self.pooling(out)


def official_backbone(wide):
    """The official LESA detection ResNet-50 (``wrn=wide``) for a ``SIZE``² input,
    on torchvision's ResNet: DCN 3×3 in the non-LESA Bottlenecks of stages 2–4, LESA
    (no ``bn2``) in stage 3 but its first block and in all of stage 4, tables for the
    stage sizes (twice that for the stride-2 block); ``forward`` returns the 4 stage
    outputs as mmdet's ResNet."""
    from torchvision.models.resnet import Bottleneck, ResNet

    class StageOutputs(ResNet):
        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            outs = []
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = layer(x)
                outs.append(x)
            return tuple(outs)

    net = StageOutputs(Bottleneck, [3, 4, 6, 3], width_per_group=128 if wide else 64)
    del net.fc  # not in a detector
    for stage, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        if stage == 0:
            continue
        for index, block in enumerate(layer):
            width, stride = block.conv2.in_channels, block.conv2.stride[0]
            if stage == 3 or (stage == 2 and index > 0):
                block.conv2 = OfficialDetectionLESA(width, STAGE_SIZES[stage] * stride,
                                                    stride)
                block.bn2 = nn.Identity()
            else:
                block.conv2 = dcn3x3(width, stride)
    return net


def randomize_and_calibrate(backbone, img, seed):
    """Random weights (DCN offsets included: about a pixel) and BN affines, then BN
    running statistics measured on a batch of ``img`` and another random image:
    non-trivial means and variances that keep the eval-mode features of ``img`` in a
    sane range through the 16 blocks. (Random statistics compound through the residual
    stream; and ``bn_output`` normalises attention averages, whose per-image spread is
    small next to the spread between images: statistics of one other image alone blow
    up the binary term.)"""
    from torch.nn.modules.batchnorm import _BatchNorm
    gen = torch.Generator().manual_seed(seed)

    def randn(t, std):
        return torch.randn(t.shape, generator=gen) * std

    with torch.no_grad():
        for name, m in backbone.named_modules():
            if isinstance(m, _BatchNorm):
                m.weight.copy_(1 + randn(m.weight, 0.2))
                m.bias.copy_(randn(m.bias, 0.2))
                m.reset_running_stats()
                m.momentum = None  # one forward: the running stats are its batch stats
            elif name.endswith('conv_offset'):
                m.weight.copy_(randn(m.weight, 0.5 / math.sqrt(m.weight[0].numel())))
                m.bias.copy_(randn(m.bias, 0.5))
            elif isinstance(m, (nn.Conv1d, nn.Conv2d)) or type(m).__name__.startswith(
                    'DeformConv2d'):
                m.weight.copy_(randn(m.weight, math.sqrt(2 / m.weight[0].numel())))
            elif isinstance(m, OfficialDetectionLESA):
                m.rel_height.copy_(randn(m.rel_height, m.dq ** -0.5))
                m.rel_width.copy_(randn(m.rel_width, m.dq ** -0.5))
        backbone.train()
        backbone(torch.cat([img, torch.randn(img.shape, generator=gen)]))
        backbone.eval()
        for m in backbone.modules():
            if isinstance(m, _BatchNorm):
                m.momentum = 0.1
    return backbone


def in_float64(backbone):
    """Run ``backbone`` in float64 and hand float32 features on."""
    backbone.double()
    backbone.register_forward_pre_hook(lambda m, args: (args[0].double(), ))
    backbone.register_forward_hook(lambda m, args, out: tuple(o.float() for o in out))


CASES = {
    'mask-rcnn-r50': ('mask-rcnn_lesa-r50-dconv-c3-c5_fpn_8xb1-20e_coco-1024x1024.py', False),
    'htc-wrn50': ('htc_lesa-wrn50-dconv-c3-c5_fpn_4xb1-20e_coco-1280x1280.py', True),
}


@pytest.mark.parametrize('case', list(CASES))
def test_official_lesa_detection_checkpoint_gives_the_official_predictions(case, tmp_path):
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    name, wide = CASES[case]
    path = osp.join(ROOT, 'configs', 'lesa', name)
    test_cfg = small_test_cfg(score_thr=0.)
    torch.manual_seed(0)

    # the official model: mmdet's detector (neck, heads) around the restated backbone
    official = build_detector(Config.fromfile(path), test_cfg)
    img = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    official.backbone = randomize_and_calibrate(official_backbone(wide), img, seed=1)
    official.eval()
    src, dst = str(tmp_path / 'official.pth'), str(tmp_path / 'mmctx.pth')
    torch.save({'state_dict': official.state_dict(), 'meta': {'mmdet_version': '2.11.0'}},
               src)
    out = python('tools/convert_upstream.py', src, dst).stdout
    assert 'official LESA_detection checkpoint' in out
    assert 'tables for 8x8' in out and 'deformable unary 3x3' in out
    assert '8 LESA blocks: layer3.1, layer3.2, layer3.3, layer3.4, layer3.5, layer4.0' in out
    assert ('HTC with WRN-50-2 widths' if wide else 'Mask R-CNN with ResNet-50 widths') in out

    # mmctx's model, as a user at this input size would build it
    cfg = Config.fromfile(path)
    cfg.model.backbone.pe_sizes = STAGE_SIZES
    ours = build_detector(cfg, test_cfg)
    # the official wrn=True widens the Bottlenecks only: its stem stays 64 wide (as
    # torchvision's wide_resnet50_2)
    stem, official_stem = ours.backbone.conv1.out_channels, official.backbone.conv1.out_channels
    assert stem == official_stem == 64, f'stem: mmctx {stem} channels, official {official_stem}'
    load_checkpoint(ours, dst, map_location='cpu', strict=True)
    ours.eval()

    offsets = []  # the deformation really happens (|offset| ~ a pixel)
    dcn = official.backbone.layer3[1].conv2.x_transform[0]
    hook = dcn.conv_offset.register_forward_hook(lambda m, i, o: offsets.append(o))
    with torch.no_grad():
        # float32, as deployed: mmctx's fused attention vs the materialised official one
        expected = official.backbone(img)
        got = ours.backbone(img)
        hook.remove()
        assert offsets[0].abs().mean() > 0.2
        assert all(0.1 < e.std() < 10 for e in expected)  # sane, non-trivial features
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
        # float64 backbones (then float32 features for the mmdet heads, whose mmcv ops
        # are float32-only): the two functions agree to rounding, and the predictions
        # see the same features, so no near-tie among the scores can flip
        for model in (official, ours):
            in_float64(model.backbone)
        expected64 = official.backbone(img)
        got64 = ours.backbone(img)
        for g, e in zip(got64, expected64):
            assert e.dtype == torch.float32
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6 * e.abs().max().item())
        (a, ), (b, ) = (model(img, [data_sample(SIZE, SIZE)], mode='predict')
                        for model in (official, ours))
    a, b = a.pred_instances, b.pred_instances
    assert len(a) == 10 and a.scores.std() > 0.01
    assert torch.equal(b.labels, a.labels)
    torch.testing.assert_close(b.bboxes, a.bboxes, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-5, atol=1e-6)
    assert b.masks.shape == a.masks.shape == (10, SIZE, SIZE)
    assert a.masks.any() and not a.masks.all()
    assert (b.masks != a.masks).sum() <= 4  # a mask probability at 0.5 ± rounding

    # ... and the comparison can fail: the wrong sign of the relative offsets on the
    # official side, or one perturbed table entry on mmctx's, changes the stage-4 output
    with torch.no_grad():
        for m in official.backbone.modules():
            if isinstance(m, OfficialDetectionLESA):
                m.sign = -1
        flipped = official.backbone(img)[-1]
        ours.backbone.layer4[1].conv2.rel_height[0, 0] += 1.
        perturbed = ours.backbone(img)[-1]
    tol = dict(rtol=1e-4, atol=1e-4 * expected[-1].abs().max().item())
    for wrong in (flipped, perturbed):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(wrong, expected[-1], **tol)
