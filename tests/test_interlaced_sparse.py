"""InterlacedSparseBlock (ISA): invalid arguments and inputs, parity with mmseg's ISA
SelfAttentionBlock and ISAHead (copied weights, padding cases), a restatement of the
grouping and attention equations, the maps, registry, memory, gradients, precision."""
import itertools
import math

import pytest
import torch
from mmseg.models.decode_heads.isa_head import ISAHead
from mmseg.models.decode_heads.isa_head import SelfAttentionBlock as MMSegISARelation

from mmctx.models.blocks.interlaced_sparse import InterlacedSparseBlock, Relation

from .conftest import bn, conv1x1, largest_saved_for_backward
from .conftest import randomize as randomize_weights

BN = dict(type='BN')


def randomize(module, seed=0):
    """Weights of O(0.5), BN statistics away from (0, 1)."""
    return randomize_weights(module, std=0.5, seed=seed)


# ----------------------------------------------------------------- invalid arguments
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(in_channels=8, isa_channels=0), ValueError, 'isa_channels must be an int >= 1'),
    (dict(in_channels=8, isa_channels=2.), TypeError, 'isa_channels must be an int'),
    (dict(in_channels=8, down_factor=(8, )), TypeError,
     r'down_factor must be an int or a tuple of 2 ints \(one per axis\), got \(8,\)'),
    (dict(in_channels=8, down_factor='8'), TypeError, 'down_factor must be an int or a'),
    (dict(in_channels=8, down_factor=(2, 0)), ValueError,
     r'down_factor\[1\] must be an int >= 1, got 0'),
    (dict(in_channels=8, down_factor=(2, 3), dim=3), TypeError, 'a tuple of 3 ints'),
    (dict(in_channels=8, norm_cfg='BN'), TypeError,
     'norm_cfg must be None or a dict with a "type", got \'BN\''),
    (dict(in_channels=8, dim=4), ValueError, r'dim must be one of \[1, 2, 3\], got 4'),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        InterlacedSparseBlock(**kwargs)


def test_invalid_inputs():
    block = InterlacedSparseBlock(8)
    with pytest.raises(TypeError, match='expects a torch.Tensor, got ndarray'):
        block(torch.zeros(1, 8, 3, 3).numpy())
    with pytest.raises(ValueError, match=r'dim=2 and expects a 4D input .*got shape '
                       r'\(1, 8, 3\)'):
        block(torch.zeros(1, 8, 3))
    with pytest.raises(ValueError, match='in_channels=8, got an input with 6 channels'):
        block.forward_with_attention(torch.zeros(1, 6, 3, 3))


# ------------------------------------------------------------------ mmseg parity
@pytest.mark.parametrize('train', [False, True])
def test_relation_matches_mmseg_self_attention_block(train):
    ref = randomize(MMSegISARelation(8, 4, None, BN, dict(type='ReLU')), seed=1)
    ours = Relation(8, 4, BN, dict(type='ReLU'), dim=2)
    ours.load_state_dict(ref.state_dict())  # strict: the same parameter names
    ref.train(train), ours.train(train)
    x = torch.randn(3, 8, 5, 3)
    expected = ref(x)
    torch.testing.assert_close(ours(x)[0], expected, rtol=1e-5, atol=1e-5)
    if train:  # the BN statistics took the same update
        for (name, a), b in zip(ref.named_buffers(), ours.buffers()):
            torch.testing.assert_close(a, b, msg=name)


def isa_pair(down_factor, seed):
    """mmseg's ISAHead and an mmctx ContextHead loaded from it through the converter."""
    from mmctx.models.convert import convert_mmseg_segmentor
    from mmctx.models.heads import ContextHead
    common = dict(in_channels=6, channels=8, num_classes=3, norm_cfg=BN, dropout_ratio=0.)
    torch.manual_seed(seed)
    ref = randomize(ISAHead(isa_channels=4, down_factor=down_factor, **common), seed)
    ours = ContextHead(num_convs=1, kernel_size=3, concat_input=False, block=dict(
        type='mmctx.InterlacedSparseBlock', isa_channels=4, down_factor=down_factor,
        norm_cfg=BN), **common)
    sd = {f'decode_head.{k}': v for k, v in ref.state_dict().items()}
    converted, kind = convert_mmseg_segmentor(sd)
    assert kind == 'ISAHead'
    ours.load_state_dict({k[len('decode_head.'):]: v for k, v in converted.items()})
    return ref, ours


@pytest.mark.parametrize('down_factor, size', [
    ((3, 2), (7, 5)),  # both axes padded, odd pads (pad_h = 2, pad_w = 1)
    ((3, 2), (6, 4)),  # divisible: no padding
    ((4, 4), (5, 8)),  # H padded only (pad 3: 1 before, 2 after)
    ((8, 8), (3, 5)),  # smaller than one block: one long-range group per offset
    ((1, 3), (4, 7)),  # P = 1 on H: every local group a row segment
])
def test_isa_head_matches_mmseg(down_factor, size):
    ref, ours = isa_pair(down_factor, seed=sum(size))
    x = [torch.randn(2, 6, *size)]
    with torch.no_grad():
        expected = ref.eval()(x)
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(ours.eval()(x), expected, rtol=1e-5, atol=1e-5)
    # training mode (batch statistics over the groups) in fp64: a BN over groups of
    # one position amplifies fp32 rounding
    ref.double().train(), ours.double().train()
    x = [x[0].double()]
    torch.testing.assert_close(ours(x), ref(x))


# ----------------------------------------------------- restatement of the equations
def conv_module(x, m):
    """An mmcv ConvModule (1×1 conv, optional norm, ReLU) written out."""
    y = conv1x1(x, m.conv)
    if m.with_norm:
        y = bn(y, m.norm)
    return torch.relu(y) if m.with_activation else y


def relation(x_group, r):
    """softmax_j(q_i·k_j / √d) v_j over the positions of one group, then
    output_project; ``x_group`` (B, C, n) — B groups of n positions."""
    q, k = x_group, x_group
    for m in r.query_project:
        q = conv_module(q, m)
    for m in r.key_project:
        k = conv_module(k, m)
    v = conv1x1(x_group, r.value_project)
    logits = torch.einsum('bdi,bdj->bij', q, k) / math.sqrt(q.shape[1])
    y = torch.einsum('bij,bcj->bci', logits.softmax(-1), v)
    return conv_module(y, r.output_project)


def reference(block, x):
    """Zero-pad each axis to G·P (⌊pad/2⌋ before), then for every offset r the group
    {g·P + r} through the global relation, for every block g the group {g·P + r}
    through the local relation, crop, out_conv([·; x])."""
    n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    P = block.down_factor
    G = [math.ceil(s / p) for s, p in zip(spatial, P)]
    pads = [g * p - s for g, p, s in zip(G, P, spatial)]
    padded = x.new_zeros(n, c, *[g * p for g, p in zip(G, P)])
    inner = tuple(slice(pad // 2, pad // 2 + s) for pad, s in zip(pads, spatial))
    padded[(slice(None), slice(None)) + inner] = x
    offsets = list(itertools.product(*(range(p) for p in P)))
    blocks = list(itertools.product(*(range(g) for g in G)))

    def pos(g, r):
        return tuple(gi * pi + ri for gi, pi, ri in zip(g, P, r))

    def run(feats, groups, rel):
        """One relation on all ``groups`` (lists of positions) at once: they are the
        batch, so a BN in training mode sees all of them together."""
        stacked = torch.stack([torch.stack([feats[(slice(None), slice(None)) + p]
                                            for p in ps], -1) for ps in groups], 1)
        y = relation(stacked.reshape(-1, c, len(groups[0])), rel)  # (n·#groups, C, m)
        y = y.reshape(n, len(groups), c, -1)
        out = feats.clone()
        for j, ps in enumerate(groups):
            for i, p in enumerate(ps):
                out[(slice(None), slice(None)) + p] = y[:, j, :, i]
        return out

    long_range = [[pos(g, r) for g in blocks] for r in offsets]  # one per offset r
    short_range = [[pos(g, r) for r in offsets] for g in blocks]  # one per block g
    feats = run(padded, long_range, block.global_relation)
    feats = run(feats, short_range, block.local_relation)
    feats = feats[(slice(None), slice(None)) + inner]
    return conv_module(torch.cat([feats, x], 1), block.out_conv)


@pytest.mark.parametrize('dim, size, down_factor, train', [
    (2, (5, 4), (2, 3), False), (2, (4, 7), (3, 3), True), (1, (7, ), 3, False),
    (3, (3, 2, 5), (2, 2, 2), False), (3, (2, 3, 3), (1, 2, 3), True)])
def test_restatement(dim, size, down_factor, train):
    block = randomize(InterlacedSparseBlock(6, isa_channels=3, down_factor=down_factor,
                                            dim=dim), seed=dim).double().train(train)
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    with torch.no_grad():
        expected = reference(block, x)
        torch.testing.assert_close(block(x), expected)


# ------------------------------------------------------------ forward_with_attention
def test_forward_with_attention():
    block = randomize(InterlacedSparseBlock(8, isa_channels=4, down_factor=(2, 3)),
                      seed=5).eval()
    x = torch.randn(2, 8, 5, 7)  # padded to 6 x 9: G = (3, 3), P = (2, 3)
    with torch.no_grad():
        y, maps = block.forward_with_attention(x)
        torch.testing.assert_close(y, block(x))
        assert set(maps) == {'global', 'local'}
        assert maps['global'].shape == (2 * 6, 9, 9)
        assert maps['local'].shape == (2 * 9, 6, 6)
        for m in maps.values():
            torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:2]))
        # the global relation's output from its map, for the long-range groups
        padded = torch.nn.functional.pad(x, (1, 1, 0, 1))  # pad_w 2: 1 + 1, pad_h 1: 0 + 1
        groups = padded.reshape(2, 8, 3, 2, 3, 3).permute(0, 3, 5, 1, 2, 4).reshape(
            12, 8, 3, 3)
        rel = block.global_relation
        v = rel.value_project(groups).flatten(2)  # (12, C, 9)
        rebuilt = rel.output_project(torch.einsum('bij,bcj->bci', maps['global'], v)
                                     .reshape(12, 8, 3, 3))
        torch.testing.assert_close(rebuilt, rel(groups)[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- registry, memory, training
def test_registry_defaults_and_head():
    from mmctx.models.heads import ContextHead
    from mmctx.registry import MODELS
    block = MODELS.build(dict(type='mmctx.InterlacedSparseBlock', in_channels=16))
    assert isinstance(block, InterlacedSparseBlock) and block._abbr_ == 'isa_block'
    assert (block.isa_channels, block.down_factor, block.dim) == (8, (8, 8), 2)
    assert block.residual is False
    assert type(block.out_conv.norm).__name__ == 'BatchNorm2d'
    x = torch.randn(1, 16, 9, 10)
    assert block(x).shape == x.shape
    head = ContextHead(in_channels=16, channels=8, num_classes=2, num_convs=1,
                       concat_input=False, block=dict(type='InterlacedSparseBlock'))
    assert head.block_name == 'isa_block' and head.block.in_channels == 8


def test_no_group_map_kept_for_backward():
    """P = (2, 2) on 32 x 32: 4 long-range groups of 256 positions — their maps would be
    4·256² elements; the largest tensor saved is an activation (1·8·32·32)."""
    block = InterlacedSparseBlock(4, isa_channels=2, down_factor=(2, 2))
    x = torch.randn(1, 4, 32, 32, requires_grad=True)
    saved = largest_saved_for_backward(block, x)
    assert saved <= 8 * 32 * 32 < 4 * 256 ** 2
    _, maps = block.forward_with_attention(x)
    assert maps['global'].numel() == 4 * 256 ** 2  # what the explicit path forms


def test_gradients_reach_every_parameter():
    block = randomize(InterlacedSparseBlock(6, isa_channels=3, down_factor=(2, 2)), seed=2)
    x = torch.randn(2, 6, 5, 3, requires_grad=True)
    block(x).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bf16_autocast_maps_in_fp32():
    torch.manual_seed(3)
    block = InterlacedSparseBlock(16, down_factor=(2, 3)).eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        ref = block(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = block(x)
            _, maps = block.forward_with_attention(x)
    assert maps['global'].dtype == maps['local'].dtype == torch.float32
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref, rtol=5e-2, atol=5e-2)


def test_mmcv_plugin_contract():
    from mmcv.cnn import build_plugin_layer
    name, block = build_plugin_layer(dict(type='mmctx.InterlacedSparseBlock',
                                          down_factor=(2, 2)), in_channels=12, postfix='_2')
    assert name == 'isa_block_2' and isinstance(block, InterlacedSparseBlock)
    x = torch.randn(1, 12, 5, 6)
    assert block(x).shape == x.shape
