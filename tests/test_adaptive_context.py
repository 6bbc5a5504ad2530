"""AdaptiveContextBlock / AdaptiveContextHead (APCNet): arguments, parity with mmseg's
ACM and APCHead, the equations, registry, gradients, precision."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmseg.models.decode_heads.apc_head import ACM, APCHead

from mmctx.models.blocks import AdaptiveContextBlock
from mmctx.models.convert import convert_mmseg_segmentor, mmseg_target_block
from mmctx.models.heads import AdaptiveContextHead

from .conftest import bn, conv1x1
from .test_object_context import NORM, randomise

SIZES = {1: [(7, ), (4, )], 2: [(5, 7), (3, 2)], 3: [(2, 3, 5), (3, 2, 2)]}


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(channels=0), ValueError, 'channels must be an int >= 1, got 0'),
    (dict(pool_scales=()), TypeError, 'pool_scales must be a non-empty list or tuple'),
    (dict(pool_scales=3), TypeError, 'pool_scales must be a non-empty list or tuple'),
    (dict(pool_scales=(1, 0)), ValueError, 'each of pool_scales must be an int >= 1, got 0'),
    (dict(pool_scales=(1, 2.)), TypeError, 'each of pool_scales must be an int'),
    (dict(pool_scales=(2, 2)), ValueError, r'pool_scales has duplicates: \(2, 2\)'),
    (dict(fusion=1), TypeError, 'fusion must be a bool'),
    (dict(out_channels=0), ValueError, 'out_channels must be an int >= 1'),
    (dict(kernel_size=2), ValueError, 'kernel_size must be odd'),
    (dict(dim=0), ValueError, r'dim must be one of \[1, 2, 3\], got 0'),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaptiveContextBlock(**dict(dict(in_channels=8), **kwargs))


def test_invalid_inputs():
    block = AdaptiveContextBlock(8, 4, dim=3)
    with pytest.raises(TypeError, match='expects a torch.Tensor, got ndarray'):
        block(torch.randn(2, 8, 2, 3, 4).numpy())
    with pytest.raises(ValueError,
                       match=r'dim=3 and expects a 5D input .* got shape \(2, 8, 3, 4\)'):
        block(torch.randn(2, 8, 3, 4))
    with pytest.raises(ValueError, match='in_channels=8, got an input with 6 channels'):
        block(torch.randn(2, 6, 2, 3, 4))
    with pytest.raises(TypeError, match='one input level'):
        AdaptiveContextHead(block=dict(type='AdaptiveContextBlock'), in_channels=[4, 8],
                            in_index=[0, 1], input_transform='multiple_select', channels=4,
                            num_classes=3)


# ------------------------------------------------------------ parity with mmseg
@pytest.mark.parametrize('size, train, fusion', [((7, 9), False, True), ((5, 3), True, True),
                                                 ((13, 6), True, False), ((1, 4), False, True)])
def test_parity_with_mmseg_acm(size, train, fusion):
    """Each ACM is mmseg's (copied weights); the block is bottleneck([x; ACM_s(x)…]).
    Sizes below and between the pool scales (adaptive pooling with overlapping bins)."""
    c, d, scales = 6, 4, (1, 2, 3, 6)
    acms = [randomise(ACM(s, fusion, c, d, **NORM), i) for i, s in enumerate(scales)]
    block = randomise(AdaptiveContextBlock(c, d, scales, fusion, out_channels=5), 9)
    state = {f'acm_modules.{i}.{k}': v for i, m in enumerate(acms)
             for k, v in m.state_dict().items()}
    state.update({f'bottleneck.{k}': v for k, v in block.bottleneck.state_dict().items()})
    block.load_state_dict(state)  # same names: strict
    for m in (block, *acms):
        m.train(train)
    x = torch.randn(2, c, *size)
    refs = [m(x) for m in acms]
    assert min(r.abs().max() for r in refs) > 0.1
    ref = block.bottleneck(torch.cat([x] + refs, 1))
    # the bottleneck sums its parts' convolutions (no concatenation): same values up to
    # the order of the sums, 2e-5 apart at most over 40 seeds of this test
    tol = dict(rtol=1e-4, atol=5e-5)
    for acm, r in zip(block.acm_modules, refs):
        torch.testing.assert_close(acm(x)[0], r, **tol)
    torch.testing.assert_close(block(x), ref, **tol)
    out, maps = block.forward_with_attention(x)
    torch.testing.assert_close(out, ref, **tol)
    assert list(maps) == ['affinity_s1', 'affinity_s2', 'affinity_s3', 'affinity_s6']


def test_parity_with_mmseg_apc_head():
    """APCHead → AdaptiveContextHead through the checkpoint converter's table."""
    common = dict(in_channels=10, channels=6, num_classes=3, norm_cfg=dict(type='BN'))
    upstream = randomise(APCHead(pool_scales=(1, 2, 3), **common), 3).eval()
    ours = AdaptiveContextHead(
        block=dict(type='mmctx.AdaptiveContextBlock', channels=6, pool_scales=(1, 2, 3)),
        **common).eval()
    sd = {f'decode_head.{k}': v for k, v in upstream.state_dict().items()}
    converted, kind = convert_mmseg_segmentor(sd)
    assert kind == 'APCHead' and mmseg_target_block(kind) == 'mmctx.AdaptiveContextBlock'
    ours.load_state_dict({k[len('decode_head.'):]: v for k, v in converted.items()})
    assert ours.block is ours.apc_block and ours.block.out_channels == 6
    inputs = [torch.randn(2, 10, 7, 5)] * 4
    ref = upstream(inputs)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours(inputs), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='sets out_channels=4.*remove out_channels'):
        AdaptiveContextHead(block=dict(type='AdaptiveContextBlock', out_channels=4), **common)


# ---------------------------------------------------------------- the equations
def adaptive_avg_pool(x: torch.Tensor, s: int) -> torch.Tensor:
    """Average over the bins ``[⌊i·n/s⌋, ⌈(i+1)·n/s⌉)`` of every spatial axis (the
    definition of adaptive average pooling), as ``(N, C, s^dim)``, row-major."""
    import itertools
    axes = x.shape[2:]
    bins = [[(i * n // s, -(-(i + 1) * n // s)) for i in range(s)] for n in axes]
    cells = []
    for cell in itertools.product(*bins):
        region = x[(slice(None), slice(None)) + tuple(slice(a, b) for a, b in cell)]
        cells.append(region.flatten(2).mean(-1))
    return torch.stack(cells, -1)


def cna(x, m, kernel=1):
    conv = conv1x1(x, m.conv) if kernel == 1 else \
        (F.conv1d, F.conv2d, F.conv3d)[x.dim() - 3](x, m.conv.weight, padding=kernel // 2)
    return torch.relu(bn(conv, m.norm))


def reference(block: AdaptiveContextBlock, x: torch.Tensor):
    """APCNet's ACMs from the equations (einsum on flattened positions)."""
    n = x.shape[0]
    one = (1, ) * (x.dim() - 2)
    outs, maps = [x], {}
    for s, m in zip(block.pool_scales, block.acm_modules):
        pooled = adaptive_avg_pool(x, s).reshape(n, x.shape[1], -1, *one[1:])
        P = cna(pooled, m.pooled_redu_conv).reshape(n, block.channels, -1)  # (N, c, K)
        xr = cna(x, m.input_redu_conv)  # (N, c, *S)
        g = cna(xr.flatten(2).mean(-1).reshape(n, -1, *one), m.global_info)
        A = torch.sigmoid(conv1x1(xr + g, m.gla)).reshape(n, s**(x.dim() - 2), -1)
        z = torch.einsum('nkl,nck->ncl', A, P).reshape(xr.shape)
        out = torch.relu(cna(z, m.residual_conv) + xr)
        outs.append(cna(out, m.fusion_conv) if m.fusion_conv is not None else out)
        maps[f'affinity_s{s}'] = A.transpose(1, 2)
    return cna(torch.cat(outs, 1), block.bottleneck, kernel=3), maps


@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('train', [False, True])
def test_equations(dim, train):
    c = 5
    block = randomise(AdaptiveContextBlock(c, 3, (1, 2, 3), dim=dim).double(), 4)
    block.train(train)
    for size in SIZES[dim]:
        x = torch.randn(2, c, *size, dtype=torch.float64)
        out_ref, maps_ref = reference(block, x)
        torch.testing.assert_close(block(x), out_ref)
        out, maps = block.forward_with_attention(x)
        torch.testing.assert_close(out, out_ref)
        assert set(maps) == set(maps_ref)
        for key, value in maps_ref.items():
            assert maps[key].shape == (2, math.prod(size), int(key[len('affinity_s'):])**dim)
            torch.testing.assert_close(maps[key], value)


# ---------------------------------------------------- registry, init, training
def test_registry_defaults_and_gradients():
    from mmctx.registry import MODELS
    block = MODELS.build(dict(type='mmctx.AdaptiveContextBlock', in_channels=8))
    assert isinstance(block, AdaptiveContextBlock) and block._abbr_ == 'apc_block'
    assert block.channels == 2 and block.pool_scales == (1, 2, 3, 6) and block.fusion
    assert block.out_channels == 8 and not block.residual  # plugin contract: C out
    assert AdaptiveContextBlock(2048).channels == 512  # = mmseg's APCNet configs
    assert block.bottleneck.conv.kernel_size == (3, 3)
    # a batch of 8: with 2, training BN maps the two global (scale-1) descriptors to
    # ±1 per channel, and their convs get a vanishing gradient (as in mmseg). With 4,
    # about 1 draw in 25 (11 seeds of 300) has the scale-1 ACM's global descriptor
    # ReLU-dead in exactly the images whose pooled descriptor is ReLU-dead too (BN over
    # N×1 values, then ReLU), so no gradient reaches `global_info` at all (as in mmseg);
    # with 8 it was 1 draw in 300, and conftest's seed fixes one that is not degenerate
    x = torch.randn(8, 8, 7, 6, requires_grad=True)
    block.train()
    ((block(x) - torch.randn(8, 8, 7, 6))**2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_gradcheck():
    block = randomise(AdaptiveContextBlock(3, 2, (1, 2)).double().eval(), 5)
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x, ), fast_mode=True)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    block = randomise(AdaptiveContextBlock(8, 4), 6, std=0.3).eval().to(device)
    x = torch.randn(2, 8, 9, 7, device=device)
    ref, ref_maps = block.forward_with_attention(x)
    with torch.autocast(device, dtype=dtype):
        out, maps = block.forward_with_attention(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 5e-2
    for key, value in ref_maps.items():
        assert maps[key].dtype == torch.float32  # sigmoid and aggregation in fp32
        assert (maps[key] - value).abs().max() < 5e-2
