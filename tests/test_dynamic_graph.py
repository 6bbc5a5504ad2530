"""DynamicGraphBlock (DGMN): invalid arguments, the deformable sampling against explicit
loops and mmcv's DeformConv2d, a loop restatement of the whole block, the zero-offset
case as a dilated grouped unfold, registry / plugin, gradients, autocast."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmcv.ops import DeformConv2d

from mmctx.models.blocks.dynamic_graph import DynamicGraphBlock, deformable_unfold
from mmctx.registry import MODELS

from .conftest import bn, conv1x1


def randomize(block, seed=0, offset_std=1.5):
    """Every weight random, offsets of a few pixels, BN running statistics random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        if block.offset_convs is not None:
            for conv in block.offset_convs:
                fan_in = conv.weight[0].numel()
                conv.weight.mul_(2 * offset_std / math.sqrt(fan_in))
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return block


# ----------------------------------------------------------------- invalid arguments
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(in_channels=16, dim=3), ValueError, r'2-D only .*use dim=2, got dim=3'),
    (dict(in_channels=16, dim=1), ValueError, r'2-D only .*got dim=1'),
    (dict(in_channels=16, reduction=0), ValueError, 'reduction must be an int >= 1'),
    (dict(in_channels=16, reduction=32), ValueError,
     'reduction=32 leaves 0 channels for in_channels=16'),
    (dict(in_channels=16, groups=3), ValueError,
     r'groups=3 must divide the message channels in_channels // reduction = 4'),
    (dict(in_channels=16, groups=0), ValueError, 'groups must be an int >= 1'),
    (dict(in_channels=16, dilations=4), TypeError, 'dilations must be a non-empty list'),
    (dict(in_channels=16, dilations=()), TypeError, 'dilations must be a non-empty list'),
    (dict(in_channels=16, dilations=(1, 0)), ValueError, r'dilations\[1\] must be an int >= 1'),
    (dict(in_channels=16, dilations=(1, 2.)), TypeError, r'dilations\[1\] must be an int'),
    (dict(in_channels=16, kernel_size=4), ValueError, 'kernel_size must be odd, got 4'),
    (dict(in_channels=16, deform=1), TypeError, 'deform must be a bool'),
    (dict(in_channels=16, filter_act='sigmoid'), ValueError,
     r"filter_act must be one of \['softmax', None\], got 'sigmoid'"),
    (dict(in_channels=16, affinity_act='relu'), ValueError,
     r"affinity_act must be one of \['sigmoid', 'softmax', None\]"),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DynamicGraphBlock(**kwargs)


def test_invalid_inputs():
    block = DynamicGraphBlock(16)
    with pytest.raises(TypeError, match='expects a torch.Tensor, got ndarray'):
        block(torch.zeros(1, 16, 3, 3).numpy())
    with pytest.raises(ValueError, match=r'expects a 4D input .*got shape \(1, 16, 3\)'):
        block(torch.zeros(1, 16, 3))
    with pytest.raises(ValueError, match='in_channels=16, got an input with 8 channels'):
        block.forward_with_attention(torch.zeros(1, 8, 3, 3))


# ------------------------------------------------------------- deformable sampling
def bilinear(img, y, x):
    """``img (C, H, W)`` read at real ``(y, x)``: the four neighbours, zero outside."""
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    y0, x0 = math.floor(y), math.floor(x)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < img.shape[1] and 0 <= xx < img.shape[2]:
                out += (1 - abs(y - yy)) * (1 - abs(x - xx)) * img[:, yy, xx]
    return out


def sample_loops(img, offset, k, d):
    """``img (C, H, W)``, ``offset (2K, H, W)`` or None → ``(C, K, H, W)``, one position
    and tap at a time."""
    c, h, w = img.shape
    r = (k - 1) // 2
    out = torch.zeros(c, k * k, h, w, dtype=img.dtype)
    for py in range(h):
        for px in range(w):
            for t in range(k * k):
                i, j = divmod(t, k)
                dy, dx = (0., 0.) if offset is None else \
                    (float(offset[2 * t, py, px]), float(offset[2 * t + 1, py, px]))
                out[:, t, py, px] = bilinear(img, py + (i - r) * d + dy, px + (j - r) * d + dx)
    return out


@pytest.mark.parametrize('size, k, d', [((5, 6), 3, 2), ((1, 6), 3, 1), ((4, 1), 3, 3),
                                        ((3, 4), 5, 1)])
def test_sampling_integer_offsets_is_indexing(size, k, d):
    """Integer offsets (some far outside the map): exactly the pixels they point at."""
    g = torch.Generator().manual_seed(sum(size) + k)
    x = torch.randn(2, 3, *size, generator=g)
    offset = torch.randint(-4, 5, (2, 2 * k * k, *size), generator=g).float()
    out = deformable_unfold(x, offset, k, d)
    h, w = size
    r = (k - 1) // 2
    expected = torch.zeros(2, 3, k * k, h, w)
    for n in range(2):
        for t in range(k * k):
            i, j = divmod(t, k)
            for py in range(h):
                for px in range(w):
                    yy = py + (i - r) * d + int(offset[n, 2 * t, py, px])
                    xx = px + (j - r) * d + int(offset[n, 2 * t + 1, py, px])
                    if 0 <= yy < h and 0 <= xx < w:
                        expected[n, :, t, py, px] = x[n, :, yy, xx]
    assert (expected == 0).any() and (expected != 0).any()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size, d', [((5, 6), 2), ((1, 4), 1), ((6, 3), 4)])
def test_sampling_fractional_offsets_and_mmcv_deform_conv(size, d):
    g = torch.Generator().manual_seed(sum(size))
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=g)
    offset = torch.randn(2, 18, *size, dtype=torch.float64, generator=g) * 2
    out = deformable_unfold(x, offset, 3, d)
    expected = torch.stack([sample_loops(x[n], offset[n], 3, d) for n in range(2)])
    torch.testing.assert_close(out, expected)
    # mmcv's deformable conv on the same offsets = its weights on our sampled taps
    conv = DeformConv2d(3, 5, 3, padding=d, dilation=d, bias=False)
    with torch.no_grad():
        ref = conv(x.float(), offset.float())
    ours = torch.einsum('ock,nckhw->nohw', conv.weight.detach().flatten(2).double(), out)
    torch.testing.assert_close(ours.float(), ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- the whole block
def reference(block, x):
    """The block's equations, position by position (eval mode): output, weights
    ``(N, S, G, K, H, W)`` and offsets ``(N, S, K, 2, H, W)``."""
    n, _, h, w = x.shape
    k, g = block.kernel_size, block.groups
    taps = k * k
    feat = x
    if block.reduce is not None:
        feat = torch.relu(bn(conv1x1(x, block.reduce[0]), block.reduce[1]))
    c = feat.shape[1]
    total = torch.zeros_like(feat)
    all_w, all_off = [], []
    for s, d in enumerate(block.dilations):
        if block.offset_convs is not None:
            off = F.conv2d(feat, block.offset_convs[s].weight, padding=d, dilation=d)
        else:
            off = torch.zeros(n, 2 * taps, h, w, dtype=x.dtype)
        weight = block.kernel_convs[s].weight.reshape(block.kernel_convs[s].weight.shape[0], -1)
        ws = torch.zeros(n, g, taps, h, w, dtype=x.dtype)
        for b in range(n):
            sampled = sample_loops(feat[b], off[b], k, d)  # (C', K, H, W)
            for py in range(h):
                for px in range(w):
                    logit = weight @ sampled[:, :, py, px].reshape(-1)  # (G·K [+ K])
                    filt = logit[:g * taps].reshape(g, taps)
                    if block.filter_act == 'softmax':
                        filt = torch.exp(filt) / torch.exp(filt).sum(1, keepdim=True)
                    if block.affinity_act == 'sigmoid':
                        filt = filt / (1 + torch.exp(-logit[g * taps:]))
                    elif block.affinity_act == 'softmax':
                        a = torch.exp(logit[g * taps:])
                        filt = filt * a / a.sum()
                    ws[b, :, :, py, px] = filt
                    for gi in range(g):
                        chans = slice(gi * c // g, (gi + 1) * c // g)
                        total[b, chans, py, px] += block.beta[s] * (
                            sampled[chans, :, py, px] * filt[gi]).sum(1)
        all_w.append(ws)
        all_off.append(off.reshape(n, taps, 2, h, w))
    if block.expand is None:
        out = x + total
    else:
        out = x + torch.relu(bn(conv1x1(feat + total, block.expand[0]), block.expand[1]))
    return out, torch.stack(all_w, 1), torch.stack(all_off, 1)


@pytest.mark.parametrize('kwargs', [
    dict(reduction=2, groups=2),  # the paper's activations, reduce / expand (Cat11)
    dict(reduction=1, groups=4, filter_act=None, affinity_act='softmax'),  # official Cat33
    dict(reduction=2, groups=1, affinity_act=None, deform=False),
])
def test_matches_loop_restatement(kwargs):
    torch.manual_seed(0)
    block = randomize(DynamicGraphBlock(8, dilations=(1, 3), **kwargs)).double().eval()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    out, maps = block.forward_with_attention(x)
    with torch.no_grad():
        exp_out, exp_w, exp_off = reference(block, x)
    assert not torch.allclose(exp_out, x, atol=1e-2)
    if block.deform:  # fractional offsets of a few pixels
        assert 0.5 < exp_off.abs().mean() < 5 and (exp_off.frac().abs() > 0.05).float().mean() > 0.5
    torch.testing.assert_close(out, exp_out)
    torch.testing.assert_close(maps['neighbour_weights'], exp_w)
    torch.testing.assert_close(maps['offsets'], exp_off)
    torch.testing.assert_close(block(x), out)


def test_zero_offsets_are_a_dilated_grouped_unfold():
    """At init the offsets are 0: the block reads the dilated grid (the deform=False
    block with the same weights), i.e. messages from ``F.unfold``."""
    torch.manual_seed(1)
    block = DynamicGraphBlock(16, groups=2, dilations=(1, 2, 5)).eval()
    with torch.no_grad():
        for conv in block.kernel_convs:
            conv.weight.normal_(0, 0.5)
        block.beta.copy_(torch.tensor([0.5, -1., 2.]))
    x = torch.randn(2, 16, 7, 9)
    out, maps = block.forward_with_attention(x)
    assert maps['offsets'].abs().max() == 0
    plain = DynamicGraphBlock(16, groups=2, dilations=(1, 2, 5), deform=False).eval()
    missing, unexpected = plain.load_state_dict(block.state_dict(), strict=False)
    assert not missing and all(k.startswith('offset_convs.') for k in unexpected)
    torch.testing.assert_close(plain(x), out, rtol=1e-5, atol=1e-5)
    # restated with F.unfold: (N, C'·K, L) columns, grouped filters
    with torch.no_grad():
        h = block.reduce(x)
        total = 0
        for s, d in enumerate(block.dilations):
            cols = F.unfold(h, 3, dilation=d, padding=d).view(2, 2, 2, 9, 63)  # N,G,C/G,K,L
            logits = F.conv2d(h, block.kernel_convs[s].weight, padding=d, dilation=d)
            filt = logits[:, :18].reshape(2, 2, 9, 63).softmax(2)
            aff = logits[:, 18:].reshape(2, 1, 9, 63).sigmoid()
            m = (cols * (filt * aff).unsqueeze(2)).sum(3).reshape(2, 4, 7, 9)
            total = total + block.beta[s] * m
        expected = x + block.expand(h + total)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # the weights of each group are a distribution over taps times a sigmoid
    w = maps['neighbour_weights']
    assert w.shape == (2, 3, 2, 9, 7, 9) and (w >= 0).all() and (w.sum(3) < 1).all()


# ---------------------------------------------------------- registry, gradients
def test_registry_build_with_only_in_channels_and_plugin():
    block = MODELS.build(dict(type='mmctx.DynamicGraphBlock', in_channels=16))
    assert isinstance(block, DynamicGraphBlock) and block._abbr_ == 'dgmn_block'
    assert (block.channels, block.groups, block.dilations) == (4, 4, (1, 4, 8, 12))
    torch.testing.assert_close(block.beta, torch.ones(4))
    x = torch.randn(2, 16, 6, 5)
    assert block(x).shape == x.shape
    # mmdet ResNet, after conv2 of every c5 Bottleneck (the official 'after3x3')
    from mmdet.registry import MODELS as DET
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        net = DET.build(dict(type='ResNet', depth=50, base_channels=16, plugins=[dict(
            cfg=dict(type='mmctx.DynamicGraphBlock'), stages=(False, False, False, True),
            position='after_conv2')]))
    blocks = [(n, m) for n, m in net.named_modules() if isinstance(m, DynamicGraphBlock)]
    assert [n for n, _ in blocks] == [f'layer4.{i}.dgmn_block' for i in range(3)]
    assert all(m.in_channels == 128 for _, m in blocks)  # planes = 16·8
    net.eval()  # mmdet's ResNet.train() returns None: no chaining
    with torch.no_grad():
        assert torch.isfinite(net(torch.randn(1, 3, 64, 64))[-1]).all()


def test_every_parameter_gets_a_finite_gradient():
    block = DynamicGraphBlock(16, groups=2, dilations=(1, 2)).train()  # init: offsets 0
    x = torch.randn(2, 16, 6, 7, requires_grad=True)
    block(x).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_gradcheck_fractional_offsets():
    block = randomize(DynamicGraphBlock(4, groups=2, reduction=1, dilations=(1, 2)), seed=3)
    block = block.double().eval()
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x, ), eps=1e-6, atol=1e-5, fast_mode=True)


def test_bf16_autocast_runs_the_dynamic_part_in_fp32():
    torch.manual_seed(2)
    block = randomize(DynamicGraphBlock(16, groups=2, dilations=(1, 3)), offset_std=1.).eval()
    x = torch.randn(2, 16, 6, 6)
    ref = block(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, maps = block.forward_with_attention(x)
    assert maps['neighbour_weights'].dtype == torch.float32
    assert maps['offsets'].dtype == torch.float32
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_mask_rcnn_config_one_training_step():
    """The configs/dgmn Mask R-CNN: one loss + backward (RPN, box and mask losses);
    every block parameter in c5 learns. (tests/test_det.py builds both configs and
    checks where the blocks sit.)"""
    import os.path as osp

    import numpy as np
    from mmdet.structures.mask import BitmapMasks
    from mmengine.config import Config
    from mmengine.structures import InstanceData

    from .conftest import ROOT
    from .test_det import build_detector, data_sample
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'dgmn',
                                   'mask-rcnn_r50-dgmn-c5_fpn_1x_coco.py'))
    # few proposals and RoIs (as test_det's tiny e2e overrides): a fast CPU step
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=64)
    cfg.model.train_cfg.rcnn.sampler.num = 16  # <= 4 positives: a light mask head
    torch.manual_seed(0)
    model = build_detector(cfg)
    model.train()
    sample = data_sample(64, 96)
    masks = np.zeros((2, 64, 96), dtype=np.uint8)
    masks[0, 8:40, 10:50], masks[1, 20:60, 40:90] = 1, 1
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[10., 8., 50., 40.], [40., 20., 90., 60.]]),
        labels=torch.tensor([3, 7]), masks=BitmapMasks(masks, 64, 96))
    losses = model.loss(torch.randn(1, 3, 64, 96), [sample])
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
    total = sum(v if isinstance(v, torch.Tensor) else sum(v) for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    blocks = [(n, m) for n, m in model.backbone.named_modules()
              if isinstance(m, DynamicGraphBlock)]
    assert len(blocks) == 3
    for name, block in blocks:
        for pname, p in block.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, pname)
            assert p.grad.abs().sum() > 0, (name, pname)


def test_analysis_tools_record_the_maps_and_skip_query_independence():
    """collect_attention records the neighbour weights and offsets; they are not maps
    over all positions, so query_independence has no row for the block."""
    from mmctx.analysis import collect_attention, query_independence
    torch.manual_seed(4)
    block = randomize(DynamicGraphBlock(16, dilations=(1, 2)), seed=4)
    model = torch.nn.Sequential(block).eval()
    x = [torch.randn(1, 16, 6, 5) for _ in range(2)]
    (rec, ) = collect_attention(model, x[0]).values()
    _, maps = block.forward_with_attention(x[0])
    for key in ('neighbour_weights', 'offsets'):
        torch.testing.assert_close(rec[key], maps[key])
    assert 'pairwise' not in rec and query_independence(model, x, num_queries=4) == []
