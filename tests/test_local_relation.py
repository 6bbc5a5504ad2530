"""LocalRelationBlock and LR-ResNet: bad arguments and inputs, an explicit-loop
re-statement of the paper's equations (borders, strides), channel sharing, the
geometry prior, chunked/checkpointed = plain path, gradients, the mmpretrain
backbone and its ImageNet configs (forward, a tiny training run)."""
import glob
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from mmctx.models.blocks import LocalRelationBlock

from .conftest import ROOT, conv1x1, largest_saved_for_backward

LRNET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'lrnet', '*_in1k.py')))


# --- bad arguments and inputs first ---------------------------------------------------

@pytest.mark.parametrize('kwargs, error, match', [
    (dict(dim=3), ValueError, 'dim must be 2, got 3'),
    (dict(dim=1), ValueError, 'dim must be 2, got 1'),
    (dict(kernel_size=4), ValueError, 'kernel_size must be odd'),
    (dict(kernel_size=7.0), TypeError, 'kernel_size must be an int'),
    (dict(kernel_size=0), ValueError, 'kernel_size must be an int >= 1'),
    (dict(channel_sharing=3), ValueError, 'out_channels divisible by channel_sharing'),
    (dict(out_channels=12), ValueError, 'out_channels=12, channel_sharing=8'),
    (dict(stride=0), ValueError, 'stride must be an int >= 1'),
    (dict(composability='dot'), ValueError, 'composability must be one of'),
    (dict(appearance=False, geometry=False), ValueError, 'appearance or the geometry'),
    (dict(geometry='yes'), TypeError, 'geometry must be a bool'),
    (dict(with_cp=1), TypeError, 'with_cp must be a bool'),
    (dict(geometry_channels=0), ValueError, 'geometry_channels must be an int >= 1'),
    (dict(chunk_elements=0), ValueError, 'chunk_elements must be an int >= 1'),
    (dict(geometry=False, geometry_channels=4), ValueError, 'geometry=False switches off'),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LocalRelationBlock(16, **kwargs)


def test_invalid_inputs():
    block = LocalRelationBlock(16)
    with pytest.raises(TypeError, match='expects a torch.Tensor, got ndarray'):
        block(torch.randn(1, 16, 4, 4).numpy())
    with pytest.raises(ValueError, match=r'expects a 4D input \(N, C, H, W\)'):
        block(torch.randn(1, 16, 4, 4, 4))
    with pytest.raises(ValueError, match='in_channels=16, got an input with 8 channels'):
        block(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r'expects a 4D input'):
        block.forward_with_attention(torch.randn(16, 4, 4))


# --- an independent re-statement: explicit loops over the window -----------------------

def randomized(block, seed=0, scale=0.7):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return block


def restated(block, x):
    """``y_c(p') = Σ_{p ∈ Ω(p') ∩ image} softmax_p(Φ(q(p'), k(p)) + G(p − p'))·x_c(p)``
    (``Ω(p')`` the window of ``p'``), written with explicit loops over groups, outputs
    and window offsets (fp64)."""
    n, _, h, w = x.shape
    kk, s, m = block.kernel_size, block.stride, block.channel_sharing
    pad, cout = kk // 2, block.out_channels
    g = cout // m
    v = x if block.value_conv is None else conv1x1(x, block.value_conv)
    if block.appearance:
        q, k = conv1x1(x, block.query_conv), conv1x1(x, block.key_conv)

    def phi(a, b):
        return {'squared_difference': -(a - b) ** 2, 'absolute_difference': -(a - b).abs(),
                'product': a * b}[block.composability]

    def prior(dy, dx):  # the 2-layer MLP on the normalised relative position
        l1, l2 = block.geometry_mlp[0], block.geometry_mlp[2]
        pos = torch.tensor([dy, dx], dtype=x.dtype) / max(pad, 1)
        return l2.weight @ torch.relu(l1.weight @ pos + l1.bias) + l2.bias  # (G, )

    ho, wo = math.ceil(h / s), math.ceil(w / s)
    out = torch.zeros(n, cout, ho, wo, dtype=x.dtype)
    weights = torch.zeros(n, g, kk * kk, ho, wo, dtype=x.dtype)
    for gi in range(g):
        for oy in range(ho):
            for ox in range(wo):
                cy, cx = s * oy, s * ox
                logits, where = [], []
                for dy in range(-pad, pad + 1):
                    for dx in range(-pad, pad + 1):
                        py, px = cy + dy, cx + dx
                        if not (0 <= py < h and 0 <= px < w):
                            continue  # padded: not in the softmax
                        logit = torch.zeros(n, dtype=x.dtype)
                        if block.appearance:
                            logit = logit + phi(q[:, gi, cy, cx], k[:, gi, py, px])
                        if block.geometry:
                            logit = logit + prior(dy, dx)[gi]
                        logits.append(logit)
                        where.append(((dy + pad) * kk + dx + pad, py, px))
                a = torch.stack(logits, -1).softmax(-1)  # (N, valid)
                for i, (j, py, px) in enumerate(where):
                    weights[:, gi, j, oy, ox] = a[:, i]
                    out[:, gi * m:(gi + 1) * m, oy, ox] += (
                        a[:, i, None] * v[:, gi * m:(gi + 1) * m, py, px])
    return out, weights


@pytest.mark.parametrize('kwargs, size', [
    (dict(kernel_size=3), (5, 6)),
    (dict(kernel_size=5, stride=2, composability='absolute_difference'), (5, 6)),
    (dict(kernel_size=5, composability='product', out_channels=6, channel_sharing=3), (4, 5)),
    (dict(kernel_size=3, stride=2, geometry=False), (6, 5)),
    (dict(kernel_size=5, appearance=False), (4, 6)),
])
def test_restatement_with_explicit_loops(kwargs, size):
    torch.manual_seed(0)
    kwargs = dict(dict(channel_sharing=2), **kwargs)
    block = randomized(LocalRelationBlock(4, **kwargs).double())
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    expected, expected_w = restated(block, x)
    torch.testing.assert_close(block(x), expected)
    out, maps = block.forward_with_attention(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(maps['local'], expected_w)
    # every output's weights sum to 1 over the window positions inside the image
    torch.testing.assert_close(maps['local'].sum(2), torch.ones_like(maps['local'][:, :, 0]))
    assert set(maps) == {'local'}


def test_kernel_size_one_is_the_identity():
    block = randomized(LocalRelationBlock(8, kernel_size=1))
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(block(x), x)


def test_border_outputs_are_not_pulled_to_zero():
    """Padded positions are masked out of the softmax: a constant input stays constant
    at the borders too (with zero-padded positions in the softmax it would shrink)."""
    block = randomized(LocalRelationBlock(8, kernel_size=7, channel_sharing=4))
    x = torch.full((1, 8, 6, 9), 3.0)
    torch.testing.assert_close(block(x), x)
    _, maps = block.forward_with_attention(x)
    w = maps['local']  # (1, G, 49, 6, 9); output (0, 0) sees offsets Δy, Δx >= 0 only
    grid = w[0, :, :, 0, 0].view(-1, 7, 7)
    assert (grid[:, :3, :] == 0).all() and (grid[:, :, :3] == 0).all()
    assert (grid[:, 3:, 3:] > 0).all()


# --- channel sharing and the geometry prior ----------------------------------------------

def test_channel_sharing_groups_are_contiguous_channels():
    torch.manual_seed(1)
    block = randomized(LocalRelationBlock(16, kernel_size=3, channel_sharing=4))
    assert block.groups == 4 and block.query_conv.out_channels == 4
    x = torch.randn(2, 16, 5, 6)
    out, maps = block.forward_with_attention(x)
    w = maps['local']  # (N, G, 9, H, W)
    assert w.shape == (2, 4, 9, 5, 6)
    cols = F.unfold(x, 3, padding=1).view(2, 16, 9, 5, 6)
    contiguous = (cols * w.repeat_interleave(4, dim=1)).sum(2)  # channel c: group c // 4
    interleaved = (cols * w.repeat(1, 4, 1, 1, 1)).sum(2)  # channel c: group c % 4
    torch.testing.assert_close(out, contiguous)
    assert not torch.allclose(out, interleaved, atol=1e-3)
    # m = 1: one weight per channel; m = C: one weight for all channels
    assert LocalRelationBlock(16, channel_sharing=1).key_conv.out_channels == 16
    one = LocalRelationBlock(16, channel_sharing=16)
    assert one.key_conv.out_channels == 1 and one.geometry_table().shape == (1, 49)


def test_geometry_prior_is_a_table_computed_once_per_forward():
    torch.manual_seed(2)
    block = randomized(LocalRelationBlock(8, kernel_size=5, channel_sharing=2,
                                          appearance=False, chunk_elements=1))
    assert block.query_conv is None and block.key_conv is None
    calls = []
    block.geometry_mlp.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 8, 7, 8)
    block(x)
    assert len(calls) == 1  # 7 chunks of one row, one table
    table = block.geometry_table()  # (G, k²)
    assert table.shape == (4, 25)
    l1, l2 = block.geometry_mlp[0], block.geometry_mlp[2]
    pos = torch.tensor([[dy / 2, dx / 2] for dy in range(-2, 3) for dx in range(-2, 3)])
    torch.testing.assert_close(table, (torch.relu(pos @ l1.weight.t() + l1.bias)
                                       @ l2.weight.t() + l2.bias).t())
    # geometry only: the weights are the softmax of the table, the same for any input,
    # renormalised over the positions inside the image at the borders
    _, maps = block.forward_with_attention(x)
    _, again = block.forward_with_attention(torch.randn(2, 8, 7, 8))
    torch.testing.assert_close(maps['local'], again['local'])
    w = maps['local'][0]  # (G, 25, 7, 8)
    torch.testing.assert_close(w[:, :, 3, 4], table.softmax(-1))  # an interior output
    corner = table.view(4, 5, 5)[:, 2:, 2:].reshape(4, -1).softmax(-1)
    torch.testing.assert_close(w[:, :, 0, 0].view(4, 5, 5)[:, 2:, 2:].reshape(4, -1), corner)


# --- the memory-efficient path: chunks, recomputation, the same numbers ------------------

@pytest.mark.parametrize('stride, with_cp', [(1, True), (2, True), (1, False)])
def test_chunked_checkpointed_path_equals_the_plain_path(stride, with_cp):
    torch.manual_seed(3)
    block = randomized(LocalRelationBlock(16, kernel_size=5, channel_sharing=4,
                                          stride=stride, with_cp=with_cp), scale=0.3)
    x = torch.randn(2, 16, 9, 11)
    wo = (11 - 1) // stride + 1
    block.chunk_elements = 2 * 16 * 25 * wo * 2  # two output rows per chunk
    chunks = []
    inner = block._chunk
    block._chunk = lambda *a: chunks.append(1) or inner(*a)

    def grads(fn):
        xx = x.clone().requires_grad_()
        block.zero_grad()
        out = fn(xx)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), xx.grad, {n: p.grad.clone() for n, p in block.named_parameters()}

    out, gx, gp = grads(block)
    assert len(chunks) >= 3 * (2 if with_cp else 1)  # forward (+ recomputation) chunks
    ref, rgx, rgp = grads(lambda t: block.forward_with_attention(t)[0])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, rgx)
    for name in rgp:
        assert rgp[name].abs().sum() > 0, name  # every parameter gets a gradient
        torch.testing.assert_close(gp[name], rgp[name], msg=name)


def test_forward_keeps_no_unfolded_tensor_for_backward():
    block = LocalRelationBlock(16, kernel_size=7, channel_sharing=8)
    x = torch.randn(1, 16, 20, 20, requires_grad=True)
    unfolded = 16 * 49 * 20 * 20
    padded = 16 * 26 * 26  # the zero-padded value map
    assert largest_saved_for_backward(block, x) <= padded
    block.with_cp = False  # the measure can see a chunk's unfolded values
    assert largest_saved_for_backward(block, x) >= unfolded


def test_gradcheck_fp64():
    torch.manual_seed(4)
    block = randomized(LocalRelationBlock(4, out_channels=6, kernel_size=3,
                                          channel_sharing=3, stride=2,
                                          chunk_elements=40).double(), scale=0.5)
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    params = tuple(block.parameters())

    def fn(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(
                block, {n: p for (n, _), p in zip(block.named_parameters(), ps)}):
            return block(x)

    assert torch.autograd.gradcheck(fn, (x, *[p.detach().requires_grad_() for p in params]),
                                    fast_mode=True)


def test_bf16_autocast_keeps_logits_in_fp32():
    torch.manual_seed(5)
    block = LocalRelationBlock(16, kernel_size=5)
    x = torch.randn(2, 16, 6, 7)
    ref = block(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = block(x)
        _, maps = block.forward_with_attention(x)
    assert y.dtype == torch.float32 and maps['local'].dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=5e-2, atol=5e-2)
    assert not torch.allclose(ref, x, atol=1e-1)


# --- registry, plugin contract, ContextHead ---------------------------------------------

def test_registry_build_with_only_in_channels_and_plugin_contract():
    from mmcv.cnn import build_plugin_layer

    from mmctx.models.blocks._base import build_block
    from mmctx.registry import MODELS
    block = MODELS.build(dict(type='mmctx.LocalRelationBlock', in_channels=16))
    assert isinstance(block, LocalRelationBlock) and block._abbr_ == 'local_relation'
    assert (block.kernel_size, block.channel_sharing, block.stride, block.groups) == \
        (7, 8, 1, 2)
    assert block.value_conv is None and not block.residual
    name, plugin = build_plugin_layer(dict(type='mmctx.LocalRelationBlock'),
                                      in_channels=16)
    assert name == 'local_relation'
    x = torch.randn(2, 16, 5, 6)
    assert plugin(x).shape == x.shape  # same channels and size out
    wide = build_block(dict(type='LocalRelationBlock', out_channels=32, stride=2),
                       in_channels=16)
    assert wide(x).shape == (2, 32, 3, 3) and wide.value_conv.out_channels == 32
    assert wide.term_macs(2, 5, 6) == dict(
        key_query=2 * 16 * 4 * (30 + 9), value=2 * 30 * 16 * 32, composability=2 * 4 * 9 * 49,
        aggregation=2 * 32 * 9 * 49)


def test_context_head_takes_the_block():
    """As a ContextHead block (a local control: a 7×7 window per position)."""
    from mmseg.registry import MODELS as SEG_MODELS
    head = SEG_MODELS.build(dict(type='mmctx.ContextHead', in_channels=8, channels=16,
                                 num_classes=3, block=dict(type='LocalRelationBlock')))
    assert isinstance(head.block, LocalRelationBlock) and head.block.in_channels == 16
    logits = head([torch.randn(1, 8, 9, 10)])
    assert logits.shape == (1, 3, 9, 10) and torch.isfinite(logits).all()


# --- LR-ResNet (mmpretrain) ------------------------------------------------------------

def _lr_resnet(**kwargs):
    from mmctx.registry import MODELS
    return MODELS.build(dict(type='mmctx.LRResNet', **kwargs))  # whatever the default scope


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(depth=18), ValueError, r'depth must be one of \[26, 38, 50, 101\], got 18'),
    (dict(depth=26, relation=dict(in_channels=8)), ValueError,
     r"must not set \['in_channels'\]"),
    (dict(depth=26, relation=[7]), TypeError, 'relation must be a dict'),
    (dict(depth=26, deep_stem=True), ValueError, 'deep_stem=True has none'),
    (dict(depth=26, lr_stages=(True, True)), ValueError, 'lr_stages must be 4 bools'),
    (dict(depth=26, dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1)), ValueError,
     'layer4.0 has dilation 2'),
    (dict(depth=26, lr_stem=1), TypeError, 'lr_stem must be a bool'),
])
def test_lr_resnet_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _lr_resnet(**kwargs)


@pytest.mark.parametrize('path', LRNET_CONFIGS, ids=[osp.basename(p) for p in LRNET_CONFIGS])
def test_lrnet_imagenet_configs(path):
    """Both configs build in mmpretrain's ImageClassifier; LR-ResNet-26 runs forward."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.train_cfg.max_epochs == 100 and cfg.auto_scale_lr.base_batch_size == 256
    assert cfg.param_scheduler.type == 'CosineAnnealingLR'
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    depth = 26 if 'lrnet26' in osp.basename(path) else 50
    blocks = model.backbone.relation_layers()
    stages = (2, 2, 2, 2) if depth == 26 else (3, 4, 6, 3)
    assert [n for n, _ in blocks] == ['conv1.3'] + [
        f'layer{s + 1}.{i}.conv2' for s, num in enumerate(stages) for i in range(num)]
    strides = [b.stride for _, b in blocks]
    firsts = [1 + sum(stages[:s]) for s in range(4)]  # the first block of each stage
    assert strides == [2] + [2 if i in firsts[1:] else 1 for i in range(1, len(blocks))]
    widths = [b.in_channels for _, b in blocks]
    assert widths[:2] == [64, 128] and widths[-1] == 1024  # inner width = out / 2
    assert all(b.kernel_size == 7 and b.channel_sharing == 8 and b.out_channels ==
               b.in_channels for _, b in blocks)
    # the relation layers keep their own init (mmpretrain's Kaiming is fan-out)
    q = blocks[1][1].query_conv.weight
    assert abs(q.std().item() - 128 ** -0.5) < 0.2 * 128 ** -0.5
    if depth == 26:
        params = sum(p.numel() for p in model.parameters())
        assert 15.0e6 < params < 15.7e6  # 15.34 M (README; the paper's LR-Net-26: 14.7 M)
        model.eval()
        with torch.no_grad():
            logits = model(torch.randn(1, 3, 48, 40), mode='tensor')
        assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_lr_resnet_stem_and_stages_switch_off():
    net = _lr_resnet(depth=26, lr_stem=False, lr_stages=(False, True, False, False),
                     base_channels=16, stem_channels=16)
    assert isinstance(net.conv1, torch.nn.Conv2d) and net.conv1.kernel_size == (7, 7)
    assert [n for n, _ in net.relation_layers()] == ['layer2.0.conv2', 'layer2.1.conv2']
    assert isinstance(net.layer1[0].conv2, torch.nn.Conv2d)
    net.eval()  # mmpretrain's ResNet.train returns None
    out = net(torch.randn(1, 3, 32, 32))
    assert out[-1].shape == (1, 512, 1, 1) and torch.isfinite(out[-1]).all()


def test_lrnet_trains_on_tiny_imagenet(tmp_path):
    """tools/train.py, one epoch = 2 iterations (4 images, batch 2) of LR-ResNet-26 on a
    tiny ImageNet in mmpretrain's layout (crops 224 / 7 = 32), and a validation."""
    from mmctx.testing import make_imagenet

    from .conftest import python, scalars
    root = make_imagenet(str(tmp_path / 'imagenet'), splits=dict(train=4, val=2),
                         size=(40, 40))
    config = osp.join(ROOT, 'configs', 'lrnet', 'lrnet26_8xb32-coslr_in1k.py')
    work_dir = str(tmp_path / 'wd')
    python('tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
           'tiny_run.factor=7', f'tiny_run.data_root={root}')
    records = scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any('accuracy/top1' in r for r in records)
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
