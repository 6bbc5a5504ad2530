"""AsymmetricNonLocalBlock (ANN's APNB / AFNB) and AsymmetricNonLocalHead: invalid
arguments and inputs, parity with mmseg's APNB / AFNB / ANNHead (copied weights, odd
sizes), a restatement of the pooling and attention equations, the map, registry,
memory, gradients."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from mmseg.models.decode_heads.ann_head import AFNB, APNB, ANNHead

from mmctx.models.blocks.asymmetric_non_local import AsymmetricNonLocalBlock

from .conftest import bn, conv1x1, largest_saved_for_backward
from .conftest import randomize as randomize_weights

BN, RELU = dict(type='BN'), dict(type='ReLU')
MMSEG = dict(conv_cfg=None, norm_cfg=BN, act_cfg=RELU)


def randomize(module, seed=0):
    """Weights of O(0.5), BN statistics away from (0, 1)."""
    return randomize_weights(module, std=0.5, seed=seed)


# ----------------------------------------------------------------- invalid arguments
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(in_channels=8, project_channels=0), ValueError,
     'project_channels must be an int >= 1'),
    (dict(in_channels=8, key_pool_scales=()), TypeError,
     r'key_pool_scales must be a non-empty tuple of ints >= 1, got \(\)'),
    (dict(in_channels=8, key_pool_scales=(1, 0)), ValueError,
     r'key_pool_scales\[1\] must be an int >= 1, got 0'),
    (dict(in_channels=8, query_scales=1), TypeError, 'query_scales must be a non-empty'),
    (dict(in_channels=8, query_scales=(1.5, )), TypeError, r'query_scales\[0\] must be an int'),
    (dict(in_channels=8, key_in_channels=0), ValueError, 'key_in_channels must be an int'),
    (dict(in_channels=8, act_cfg='ReLU'), TypeError, 'act_cfg must be None or a dict'),
    (dict(in_channels=8, dim=0), ValueError, r'dim must be one of \[1, 2, 3\], got 0'),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AsymmetricNonLocalBlock(**kwargs)


def test_invalid_inputs():
    apnb = AsymmetricNonLocalBlock(8)
    x = torch.zeros(2, 8, 4, 4)
    with pytest.raises(ValueError, match='built without key_in_channels .*APNB'):
        apnb(x, torch.zeros(2, 8, 4, 4))
    with pytest.raises(ValueError, match='in_channels=8, got an input with 6 channels'):
        apnb(torch.zeros(2, 6, 4, 4))
    afnb = AsymmetricNonLocalBlock(8, key_in_channels=5)
    with pytest.raises(ValueError, match=r'key_in_channels=5 \(AFNB\): forward\(x, '
                       'key_feats\\) needs the key input'):
        afnb(x)
    with pytest.raises(TypeError, match='key_feats as a torch.Tensor, got list'):
        afnb(x, [torch.zeros(2, 5, 3, 3)])
    with pytest.raises(ValueError, match=r'key_feats of shape \(N=2, C_k=5, <2 spatial '
                       r'sizes>\), got \(2, 4, 3, 3\)'):
        afnb.forward_with_attention(x, torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r'got \(1, 5, 3, 3\)'):
        afnb(x, torch.zeros(1, 5, 3, 3))
    with pytest.raises(ValueError, match=r'query_scales \[4\] max-pool the queries by more '
                       r'than the input size \(3, 5\)'):
        AsymmetricNonLocalBlock(8, query_scales=(1, 4))(torch.zeros(1, 8, 3, 5))


# ------------------------------------------------------------------ mmseg parity
@pytest.mark.parametrize('query_scales, pools, size', [
    ((1, ), (1, 3, 6, 8), (7, 5)),  # mmseg's default pyramid, map smaller than 8
    ((1, ), (1, 3, 6, 8), (13, 10)),  # uneven adaptive bins
    ((1, 1), (2, 3), (6, 9)),  # two stages, their contexts summed
    ((1, ), (1, ), (1, 4)),  # a single global key
])
def test_apnb_matches_mmseg(query_scales, pools, size):
    ref = randomize(APNB(8, 4, 8, query_scales, pools, **MMSEG), seed=sum(size))
    ours = AsymmetricNonLocalBlock(8, 4, pools, query_scales)
    ours.load_state_dict(ref.state_dict())  # strict: mmseg's names, shared key/query
    assert ours.stages[0].query_project is ours.stages[0].key_project
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        expected = ref.eval()(x)
        torch.testing.assert_close(ours.eval()(x), expected, rtol=1e-5, atol=1e-5)
    ref.double().train(), ours.double().train()
    x = x.double()
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize('high, low', [((7, 5), (7, 5)), ((6, 4), (9, 11)), ((3, 3), (2, 5))])
def test_afnb_matches_mmseg(high, low):
    ref = randomize(AFNB(5, 8, 4, 8, (1, ), (1, 3, 6, 8), **MMSEG), seed=high[0])
    ours = AsymmetricNonLocalBlock(8, 4, key_in_channels=5)
    ours.load_state_dict(ref.state_dict())
    assert ours.stages[0].query_project is not ours.stages[0].key_project
    assert not ours.bottleneck.with_activation  # AFNB: conv + norm only
    x, key_feats = torch.randn(2, 8, *high), torch.randn(2, 5, *low)
    with torch.no_grad():
        expected = ref.eval()(key_feats, x)  # mmseg: (low_feats, high_feats)
        torch.testing.assert_close(ours.eval()(x, key_feats), expected, rtol=1e-5,
                                   atol=1e-5)


def ann_pair(seed):
    from mmctx.models.heads import AsymmetricNonLocalHead
    common = dict(in_channels=[5, 8], in_index=[0, 1], channels=6, project_channels=4,
                  key_pool_scales=(1, 2, 3), num_classes=3, norm_cfg=BN)
    ref = randomize(ANNHead(**common), seed)
    ours = AsymmetricNonLocalHead(**common)
    ours.load_state_dict(ref.state_dict())  # strict, no key changes
    return ref.eval(), ours.eval()


@pytest.mark.parametrize('size', [(5, 7), (8, 3)])
def test_ann_head_matches_mmseg(size):
    ref, ours = ann_pair(seed=size[0])
    inputs = [torch.randn(2, 5, *size), torch.randn(2, 8, *size)]
    with torch.no_grad():
        expected = ref(inputs)
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(ours(inputs), expected, rtol=1e-5, atol=1e-5)
    assert type(ours.block).__name__ == 'AsymmetricNonLocalBlock' and ours.block is ours.context
    assert ours.fusion.key_in_channels == 5 and ours.fusion.in_channels == 8


def test_converter_recognises_ann_head():
    from mmctx.models.convert import convert_mmseg_segmentor, describe_block
    ref, _ = ann_pair(seed=0)
    sd = {f'decode_head.{k}': v for k, v in ref.state_dict().items()}
    converted, kind = convert_mmseg_segmentor(sd)
    assert kind == 'ANNHead' and list(converted) == list(sd)
    assert any('AsymmetricNonLocalHead' in n for n in describe_block(kind, sd))


def test_head_refuses_conv_cfg():
    from mmctx.models.heads import AsymmetricNonLocalHead
    with pytest.raises(ValueError, match='conv_cfg must be None'):
        AsymmetricNonLocalHead(in_channels=[4, 8], in_index=[0, 1], channels=4,
                               project_channels=2, num_classes=2,
                               conv_cfg=dict(type='Conv2d'))


# ----------------------------------------------------- restatement of the equations
def conv_module(x, m):
    y = conv1x1(x, m.conv)
    if m.with_norm:
        y = bn(y, m.norm)
    return torch.relu(y) if m.with_activation else y


def adaptive_bins(size, out):
    """PyTorch's adaptive pooling bins: [⌊i·S/s⌋, ⌈(i+1)·S/s⌉)."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def pooled(t, scales):
    """(N, C, *S) → (N, C, K): the mean of every adaptive bin, scale by scale, bins
    row-major."""
    spatial, cols = t.shape[2:], []
    for s in scales:
        for cell in itertools.product(*(adaptive_bins(n, s) for n in spatial)):
            index = (slice(None), slice(None)) + tuple(slice(a, b) for a, b in cell)
            cols.append(t[index].flatten(2).mean(-1))
    return torch.stack(cols, -1)


def reference(block, x, key_feats=None):
    """y = bottleneck([Σ_t W_o softmax(q kᵀ/√d) v ; x]) with k, v pooled."""
    keys = x if key_feats is None else key_feats
    context = 0
    for stage in block.stages:
        q = conv_module(x, stage.query_project).flatten(2)  # (N, d, L)
        k = pooled(conv_module(keys, stage.key_project), block.key_pool_scales)
        v = pooled(conv1x1(keys, stage.value_project), block.key_pool_scales)
        a = (torch.einsum('ndi,ndj->nij', q, k) / math.sqrt(q.shape[1])).softmax(-1)
        y = torch.einsum('nij,ncj->nci', a, v).reshape(x.shape[0], -1, *x.shape[2:])
        context = context + conv1x1(y, stage.out_project)
    return conv_module(torch.cat([context, x], 1), block.bottleneck)


@pytest.mark.parametrize('dim, size, key_size, fusion', [
    (2, (5, 7), None, False), (2, (4, 3), (7, 6), True), (1, (9, ), None, False),
    (3, (3, 4, 2), None, False), (3, (2, 3, 3), (3, 2, 4), True)])
def test_restatement(dim, size, key_size, fusion):
    block = randomize(AsymmetricNonLocalBlock(
        6, 3, key_pool_scales=(1, 2, 3), query_scales=(1, 1),
        key_in_channels=4 if fusion else None, dim=dim), seed=dim).double().eval()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    key_feats = torch.randn(2, 4, *key_size, dtype=torch.float64) if fusion else None
    with torch.no_grad():
        torch.testing.assert_close(block(x, key_feats), reference(block, x, key_feats))


def test_query_scale_pools_queries_and_resizes_the_context():
    """The [NF] choice for t > 1: max-pooled queries, context resized bilinearly."""
    block = randomize(AsymmetricNonLocalBlock(6, 3, (1, 2), query_scales=(2, )),
                      seed=4).double().eval()
    x = torch.randn(1, 6, 6, 5, dtype=torch.float64)
    stage = block.stages[0]
    with torch.no_grad():
        q = F.max_pool2d(conv_module(x, stage.query_project), 2)  # (1, d, 3, 2)
        k = pooled(conv_module(x, stage.key_project), (1, 2))
        v = pooled(conv1x1(x, stage.value_project), (1, 2))
        a = (torch.einsum('ndi,ndj->nij', q.flatten(2), k) / math.sqrt(3)).softmax(-1)
        y = torch.einsum('nij,ncj->nci', a, v).reshape(1, 3, 3, 2)
        y = F.interpolate(y, size=(6, 5), mode='bilinear', align_corners=False)
        expected = conv_module(torch.cat([conv1x1(y, stage.out_project), x], 1),
                               block.bottleneck)
        torch.testing.assert_close(block(x), expected)
        _, maps = block.forward_with_attention(x)
        assert maps['pooled'].shape == (1, 6, 5)  # 3·2 pooled queries, 1 + 4 keys


# ------------------------------------------------------------ forward_with_attention
def test_forward_with_attention():
    block = randomize(AsymmetricNonLocalBlock(8, 4, query_scales=(1, 1)), seed=6).eval()
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        y, maps = block.forward_with_attention(x)
        torch.testing.assert_close(y, block(x))
        assert set(maps) == {'pooled', 'pooled_1'} and 'pairwise' not in maps
        assert block.num_keys == 110
        for m in maps.values():
            assert m.shape == (2, 63, 110)
            torch.testing.assert_close(m.sum(-1), torch.ones(2, 63))
        # the first stage's context from its map and the pooled values
        stage = block.stages[0]
        v = pooled(stage.value_project(x), block.key_pool_scales)  # (N, d, 110)
        rebuilt = stage.out_project(torch.einsum('nij,ncj->nci', maps['pooled'], v)
                                    .reshape(2, 4, 9, 7))
        torch.testing.assert_close(rebuilt, stage(x, x)[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- registry, memory, training
def test_registry_defaults_and_zero_init():
    from mmctx.registry import MODELS
    block = MODELS.build(dict(type='mmctx.AsymmetricNonLocalBlock', in_channels=16))
    assert isinstance(block, AsymmetricNonLocalBlock) and block._abbr_ == 'ann_block'
    assert (block.project_channels, block.key_pool_scales, block.query_scales,
            block.key_in_channels, block.dim) == (8, (1, 3, 6, 8), (1, ), None, 2)
    assert block.residual is False
    x = torch.randn(2, 16, 5, 6)
    # out_project starts at zero (mmseg / official): the context is zero at init
    assert not block.stages[0].out_project.weight.any()
    block.eval()
    with torch.no_grad():
        expected = block.bottleneck(torch.cat([torch.zeros_like(x), x], 1))
        torch.testing.assert_close(block(x), expected)
    randomize(block).init_weights()
    assert not block.stages[0].out_project.weight.any()


def test_no_map_kept_for_backward():
    """32 x 32 queries, 110 pooled keys: the map would be 1024·110 elements; the largest
    saved tensor is an activation (1·8·32·32)."""
    block = AsymmetricNonLocalBlock(4, 2)
    x = torch.randn(1, 4, 32, 32, requires_grad=True)
    assert largest_saved_for_backward(block, x) <= 8 * 32 * 32 < 1024 * 110


@pytest.mark.parametrize('fusion', [False, True])
def test_gradients_reach_every_parameter(fusion):
    block = randomize(AsymmetricNonLocalBlock(6, 3, (1, 2), key_in_channels=4 if fusion
                                              else None), seed=3)
    x = torch.randn(2, 6, 5, 4, requires_grad=True)
    key_feats = torch.randn(2, 4, 3, 6, requires_grad=True) if fusion else None
    block(x, key_feats).pow(2).sum().backward()
    for t in (x, key_feats) if fusion else (x, ):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bf16_autocast_map_in_fp32():
    torch.manual_seed(3)
    block = randomize(AsymmetricNonLocalBlock(16), seed=8).eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        ref = block(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = block(x)
            _, maps = block.forward_with_attention(x)
    assert maps['pooled'].dtype == torch.float32 and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() <= 5e-2 * ref.abs().max()


def test_mmcv_plugin_contract():
    from mmcv.cnn import build_plugin_layer
    name, block = build_plugin_layer(dict(type='mmctx.AsymmetricNonLocalBlock'),
                                     in_channels=12, postfix='_1')
    assert name == 'ann_block_1' and isinstance(block, AsymmetricNonLocalBlock)
    x = torch.randn(1, 12, 5, 6)
    assert block(x).shape == x.shape
