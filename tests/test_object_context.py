"""ObjectContextBlock / ObjectContextHead (OCR): arguments, parity with mmseg's
SpatialGatherModule + ObjectAttentionBlock and OCRHead, the equations, plugin vs
cascade form, registry, gradients, precision."""
import pytest
import torch
import torch.nn.functional as F
from mmseg.models.decode_heads.ocr_head import (ObjectAttentionBlock, OCRHead,
                                                SpatialGatherModule)

from mmctx.models.blocks import ObjectContextBlock
from mmctx.models.convert import convert_mmseg_segmentor, mmseg_target_block
from mmctx.models.heads import ObjectContextHead

from .conftest import bn, conv1x1, randomize

SIZES = {1: [(7, ), (12, )], 2: [(5, 7), (3, 11)], 3: [(2, 3, 5), (3, 2, 3)]}
NORM = dict(conv_cfg=None, norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    """Random weights and BN statistics, so that no term is trivially zero."""
    return randomize(module, std=std, seed=seed)


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(channels=0), ValueError, 'channels must be an int >= 1, got 0'),
    (dict(channels=2.), TypeError, 'channels must be an int'),
    (dict(num_regions=0), ValueError, 'num_regions must be an int >= 1, got 0'),
    (dict(num_regions=1.5), TypeError, 'num_regions must be an int'),
    (dict(scale=0), ValueError, 'scale must be a number > 0, got 0'),
    (dict(scale='1'), TypeError, 'scale must be a number > 0, got str'),
    (dict(scale=True), TypeError, 'scale must be a number'),
    (dict(dim=4), ValueError, r'dim must be one of \[1, 2, 3\], got 4'),
    (dict(norm_cfg='BN'), TypeError, 'norm_cfg must be None or a dict'),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ObjectContextBlock(**dict(dict(in_channels=8), **kwargs))


def test_invalid_inputs():
    block = ObjectContextBlock(8, 4)
    x = torch.randn(2, 8, 5, 7)
    with pytest.raises(TypeError, match='expects a torch.Tensor, got list'):
        block([1, 2])
    with pytest.raises(ValueError, match=r'dim=2 and expects a 4D input .* got shape \(2, 8, 5\)'):
        block(torch.randn(2, 8, 5))
    with pytest.raises(ValueError, match='in_channels=8, got an input with 6 channels'):
        block(torch.randn(2, 6, 5, 7))
    with pytest.raises(TypeError, match='regions as a torch.Tensor'):
        block(x, regions=[1])
    with pytest.raises(ValueError, match=r'regions must be \(N, K, \*S\).* got \(2, 3, 5, 6\)'):
        block(x, torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match='regions must be'):
        block(x, torch.randn(1, 3, 5, 7))  # batch
    with pytest.raises(ValueError, match='regions must be'):
        block(x, torch.randn(2, 3, 35))  # rank
    cascade = ObjectContextBlock(8, 4, num_regions=None)
    with pytest.raises(ValueError, match="num_regions=None .*pass the previous head's logits"):
        cascade(x)
    with pytest.raises(ValueError, match='num_regions=None'):
        cascade.forward_with_attention(x)


# ------------------------------------------------------------ parity with mmseg
@pytest.mark.parametrize('size, train, scale', [((5, 7), False, 1), ((3, 11), True, 1),
                                                ((1, 9), True, 2.5), ((6, 1), False, 2.5)])
def test_parity_with_mmseg_modules(size, train, scale):
    c, d, k = 12, 4, 3
    # mmseg's ObjectAttentionBlock uses ``scale`` for its (broken) query pooling too:
    # only the gather module takes it (see the block's Note)
    attention, gather = randomise(ObjectAttentionBlock(c, d, 1, **NORM), 1), \
        SpatialGatherModule(scale)
    block = ObjectContextBlock(c, d, num_regions=None, scale=scale)
    block.load_state_dict(attention.state_dict())  # same names: strict
    attention.train(train), block.train(train)
    x, regions = torch.randn(2, c, *size), torch.randn(2, k, *size) * 2
    ref = attention(x, gather(x, regions))
    assert ref.abs().max() > 0.1
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block(x, regions), ref, **tol)
    out, maps = block.forward_with_attention(x, regions)
    torch.testing.assert_close(out, ref, **tol)
    # the soft regions: the gather module's weights
    torch.testing.assert_close(maps['regions'], F.softmax(scale * regions.flatten(2), dim=2))


def test_parity_with_mmseg_ocr_head():
    """OCRHead (in a cascade: decode_head.1) → ObjectContextHead through the
    checkpoint converter's table; same logits."""
    common = dict(in_channels=10, channels=12, num_classes=3, norm_cfg=dict(type='BN'))
    upstream = randomise(OCRHead(ocr_channels=4, **common), 2).eval()
    ours = ObjectContextHead(block=dict(type='mmctx.ObjectContextBlock', channels=4),
                             **common).eval()
    sd = {f'decode_head.1.{k}': v for k, v in upstream.state_dict().items()}
    sd['decode_head.0.conv_seg.weight'] = torch.zeros(1)  # the FCNHead, untouched
    converted, kind = convert_mmseg_segmentor(sd)
    assert kind == 'OCRHead' and mmseg_target_block(kind) == 'mmctx.ObjectContextBlock'
    assert converted['decode_head.0.conv_seg.weight'] is sd['decode_head.0.conv_seg.weight']
    prefix = 'decode_head.1.'
    ours.load_state_dict({k[len(prefix):]: v for k, v in converted.items()
                          if k.startswith(prefix)})
    assert ours.block_name == 'ocr_block' and ours.block is ours.ocr_block
    inputs = [torch.randn(2, 10, 6, 5)] * 4
    prev = torch.randn(2, 3, 6, 5)
    ref = upstream(inputs, prev)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours(inputs, prev), ref, rtol=1e-5, atol=1e-5)


def test_head_fills_in_the_cascade_form():
    common = dict(in_channels=10, channels=12, num_classes=3)
    head = ObjectContextHead(block=dict(type='ObjectContextBlock'), **common)
    assert head.block.num_regions is None and head.block.region_conv is None
    assert head.block.in_channels == 12 and head.block.channels == 6
    with pytest.raises(ValueError, match='sets num_regions=19.*remove num_regions'):
        ObjectContextHead(block=dict(type='mmctx.ObjectContextBlock', num_regions=19),
                          **common)
    with pytest.raises(TypeError, match='block config must be a dict'):
        ObjectContextHead(block='ObjectContextBlock', **common)


# ---------------------------------------------------------------- the equations
def cna(x, m):
    """mmcv ConvModule (1×1 conv → BN → ReLU), written out."""
    return torch.relu(bn(conv1x1(x, m.conv), m.norm))


def reference(block: ObjectContextBlock, x: torch.Tensor, regions: torch.Tensor):
    """OCR from the paper's equations (einsum on flattened positions)."""
    n, c = x.shape[:2]
    X = x.reshape(n, c, -1)  # (N, C, L)
    M = torch.softmax(block.scale * regions.reshape(n, regions.shape[1], -1), dim=-1)
    f = torch.einsum('nkl,ncl->nck', M, X)  # (N, C, K): object representations
    f = f.reshape(*f.shape, *(1, ) * (x.dim() - 3))  # a "(K, 1, …) image" for the convs
    q = cna(cna(x, block.query_project[0]), block.query_project[1]).reshape(n, -1, X.shape[-1])
    k = cna(cna(f, block.key_project[0]), block.key_project[1]).reshape(n, block.channels, -1)
    v = cna(f, block.value_project).reshape(n, block.channels, -1)
    w = torch.softmax(torch.einsum('ndl,ndk->nlk', q, k) / block.channels**0.5, dim=-1)
    y = torch.einsum('nlk,ndk->ndl', w, v).reshape(n, -1, *x.shape[2:])
    context = cna(y, block.out_project)
    return cna(torch.cat([context, x], 1), block.bottleneck), M, w


@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('train', [False, True])
def test_equations(dim, train):
    c = 6
    block = randomise(ObjectContextBlock(c, 3, num_regions=4, scale=1.5, dim=dim).double(), 3)
    block.train(train)
    for size in SIZES[dim]:
        x = torch.randn(2, c, *size, dtype=torch.float64)
        regions = conv1x1(x, block.region_conv)  # the plugin form's own regions
        out_ref, M, w = reference(block, x, regions)
        torch.testing.assert_close(block(x), out_ref)
        torch.testing.assert_close(block(x, regions), out_ref)
        out, maps = block.forward_with_attention(x)
        torch.testing.assert_close(out, out_ref)
        assert set(maps) == {'regions', 'relation'}
        torch.testing.assert_close(maps['regions'], M)
        torch.testing.assert_close(maps['relation'], w)
        # a coarse prediction from elsewhere (the cascade form) with another K
        other = torch.randn(2, 5, *size, dtype=torch.float64)
        torch.testing.assert_close(block(x, other), reference(block, x, other)[0])


# ---------------------------------------------------- registry, init, training
def test_registry_defaults_and_gradients():
    from mmctx.registry import MODELS
    block = MODELS.build(dict(type='mmctx.ObjectContextBlock', in_channels=8))
    assert isinstance(block, ObjectContextBlock) and block._abbr_ == 'ocr_block'
    assert block.channels == 4 and block.num_regions == 16 and block.scale == 1.
    assert block.region_conv.out_channels == 16 and not block.residual
    assert ObjectContextBlock(512).channels == 256  # = mmseg's OCRNet ocr_channels
    assert block.region_conv.weight.std() < 0.05 and not block.region_conv.bias.any()
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    block.train()
    ((block(x) - torch.randn(2, 8, 5, 6))**2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    for name, p in block.named_parameters():  # the region classifier learns end to end
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_gradcheck():
    block = randomise(ObjectContextBlock(3, 2, num_regions=2).double().eval(), 4)
    x = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x, ), fast_mode=True)
    assert torch.autograd.gradcheck(block, (x, regions), fast_mode=True)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    block = randomise(ObjectContextBlock(8, 4, num_regions=5), 5, std=0.3).eval().to(device)
    x = torch.randn(2, 8, 6, 5, device=device)
    ref, ref_maps = block.forward_with_attention(x, x[:, :5] * 20)  # sharp regions
    with torch.autocast(device, dtype=dtype):
        out, maps = block.forward_with_attention(x, x[:, :5] * 20)
        out_eff = block(x, x[:, :5] * 20)
    for o in (out, out_eff):
        assert torch.isfinite(o).all()
        assert (o.float() - ref).norm() / ref.norm() < 5e-2
    assert maps['regions'].dtype == maps['relation'].dtype == torch.float32
    torch.testing.assert_close(maps['regions'], ref_maps['regions'])  # fp32 softmax
    assert (maps['relation'] - ref_maps['relation']).abs().max() < 5e-2
