"""PointwiseSpatialBlock (PSANet): bad input, mmcv PSAMask parity, mmseg PSAHead parity,
the equations restated with loops, registry, gradients, memory, autocast."""
import pytest
import torch
import torch.nn.functional as F

from mmctx.models.blocks import PointwiseSpatialBlock, psa_mask
from mmctx.models.blocks import pointwise_spatial
from mmctx.registry import MODELS

from .conftest import bn, conv1x1, largest_saved_for_backward, randomize

C = 6
#: mmseg's resize warns about align_corners=True sizes (its own rule picks them)
pytestmark = pytest.mark.filterwarnings('ignore:When align_corners=True')


def block(**kwargs):
    kwargs.setdefault('channels', 4)
    kwargs.setdefault('mask_size', (5, 7))
    return randomize(PointwiseSpatialBlock(C, **kwargs)).eval()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(psa_type='bi'), ValueError, r"psa_type must be one of \['bi-direction', "
                                      r"'collect', 'distribute'\], got 'bi'"),
    (dict(mask_size=(3, )), TypeError, r'mask_size must be an int or a pair'),
    (dict(mask_size='3x3'), TypeError, 'mask_size must be an int or a pair'),
    (dict(mask_size=(3, 0)), ValueError, r'mask_size\[1\] must be an int >= 1, got 0'),
    (dict(mask_size=(3., 3)), TypeError, r'mask_size\[0\] must be an int'),
    (dict(channels=0), ValueError, 'channels must be an int >= 1, got 0'),
    (dict(compact=1), TypeError, 'compact must be a bool'),
    (dict(psa_softmax='yes'), TypeError, 'psa_softmax must be a bool'),
    (dict(shrink_factor=0), ValueError, 'shrink_factor must be an int >= 1'),
    (dict(normalization_factor=0), ValueError, 'normalization_factor must be None or a '
                                               'number > 0, got 0'),
    (dict(normalization_factor='L'), ValueError, 'normalization_factor must be None'),
    (dict(outside_mask='inf'), ValueError, r"outside_mask must be one of \['zero', "
                                           r"'exclude'\]"),
    (dict(outside_mask='exclude', psa_softmax=False), ValueError,
     "with psa_softmax=False they are 0 already"),
    (dict(outside_mask='exclude', compact=True), ValueError, 'needs compact=False'),
    (dict(dim=3), ValueError, 'needs dim=2 .* got dim=3'),
    (dict(bogus=1), TypeError, 'bogus'),
])
def test_invalid_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        PointwiseSpatialBlock(C, **kwargs)


def test_wrong_inputs():
    b = block()
    with pytest.raises(ValueError, match=r'dim=2 and expects a 4D input .* got shape '
                                         r'\(1, 6, 3, 4, 5\)'):
        b(torch.randn(1, C, 3, 4, 5))
    with pytest.raises(ValueError, match='in_channels=6, got an input with 5 channels'):
        b(torch.randn(1, 5, 4, 4))
    with pytest.raises(TypeError, match='expects a torch.Tensor, got ndarray'):
        b(torch.randn(1, C, 4, 4).numpy())
    # mmseg floors a map whose H or W is a multiple of s: 1x4 with s=2 leaves 0 rows
    with pytest.raises(ValueError, match='shrink_factor=2 leaves no positions of a 1x4 map'):
        b(torch.randn(1, C, 1, 4))
    compact = block(mask_size=(2, 3), compact=True)
    compact(torch.randn(1, C, 4, 6))  # 4x6 / 2 = 2x3: fits
    with pytest.raises(ValueError, match=r'compact=True needs the attention map to be '
                                         r'mask_size=\(2, 3\), got 3x3'):
        compact(torch.randn(1, C, 6, 6))
    with pytest.raises(ValueError, match='a mask of size 3x3 needs 9 channels, got 8'):
        psa_mask(torch.randn(1, 8, 3, 3), 'collect', (3, 3))
    with pytest.raises(ValueError, match="psa_type must be one of"):
        psa_mask(torch.randn(1, 9, 3, 3), 'bi-direction', (3, 3))


# ------------------------------------------- the over-completion vs mmcv's op
SIZES = [  # (H, W), (mh, mw): odd and even masks, H != W, masks smaller and larger
    ((3, 4), (3, 5)), ((5, 3), (7, 9)), ((4, 6), (3, 3)), ((6, 5), (4, 6)),
    ((1, 1), (3, 3)), ((2, 7), (1, 1)), ((7, 7), (15, 13)), ((4, 9), (97, 5)),
]


@pytest.mark.parametrize('psa_type', ['collect', 'distribute'])
@pytest.mark.parametrize('size, mask_size', SIZES, ids=[f'{s}-{m}' for s, m in SIZES])
def test_psa_mask_equals_mmcv(psa_type, size, mask_size, monkeypatch):
    from mmcv.ops import PSAMask
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, mask_size[0] * mask_size[1], *size, generator=gen,
                    requires_grad=True)
    ref = PSAMask(psa_type, mask_size)(x)
    ours = psa_mask(x, psa_type, mask_size)
    assert torch.equal(ours, ref)
    grad = torch.randn(ref.shape, generator=gen)
    g_ref, = torch.autograd.grad(ref, x, grad)
    g_ours, = torch.autograd.grad(ours, x, grad)
    torch.testing.assert_close(g_ours, g_ref)
    # the chunked path (one owner row at a time) gives the same map
    monkeypatch.setattr(pointwise_spatial, 'CHUNK_ELEMENTS', 1)
    chunked = psa_mask(x, psa_type, mask_size)
    assert torch.equal(chunked, ref)
    torch.testing.assert_close(torch.autograd.grad(chunked, x, grad)[0], g_ref)


# --------------------------------------------------------- mmseg PSAHead parity
def mmseg_and_ours(in_channels=C, channels=4, num_classes=3, **psa):
    from mmseg.models.decode_heads import PSAHead

    from mmctx.models.convert import convert_mmseg_segmentor
    from mmctx.models.heads import PointwiseSpatialHead
    common = dict(in_channels=in_channels, channels=channels, num_classes=num_classes,
                  norm_cfg=dict(type='BN'), dropout_ratio=0.)
    upstream = randomize(PSAHead(**common, **psa)).eval()
    ours = PointwiseSpatialHead(**common, **psa).eval()
    state = {f'decode_head.{k}': v for k, v in upstream.state_dict().items()}
    converted, kind = convert_mmseg_segmentor(state)
    assert kind == 'PSAHead'
    ours.load_state_dict({k[len('decode_head.'):]: v for k, v in converted.items()},
                         strict=True)
    return upstream, ours


PARITY = [  # psa options, input size (H, W)
    (dict(mask_size=(5, 7)), (7, 9)),  # both odd: ceil, align_corners=True
    (dict(mask_size=(5, 7)), (8, 11)),  # one even: floor, align_corners=False
    (dict(mask_size=(3, 3), psa_type='collect'), (9, 6)),  # mask smaller than the map
    (dict(mask_size=(4, 6), psa_type='distribute'), (9, 13)),  # even mask
    (dict(mask_size=(15, 17), shrink_factor=1), (5, 6)),  # mask larger than the map
    (dict(mask_size=(5, 5), normalization_factor=None, psa_softmax=False), (7, 7)),
    (dict(mask_size=(3, 5), shrink_factor=3, normalization_factor=2.5), (10, 14)),
    (dict(mask_size=(4, 5), compact=True), (8, 10)),  # compact, bi-direction
]


@pytest.mark.parametrize('psa, size', PARITY, ids=[str(i) for i in range(len(PARITY))])
def test_parity_mmseg_psa_head(psa, size):
    upstream, ours = mmseg_and_ours(**psa)
    x = [torch.randn(2, C, *size)]
    with torch.no_grad():
        a, b = upstream(x), ours(x)
    assert a.abs().max() > 0.1
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_parity_mmseg_psa_head_train_mode_and_gradients():
    upstream, ours = mmseg_and_ours(mask_size=(5, 5))
    upstream.train(), ours.train()
    x = torch.randn(2, C, 7, 9, requires_grad=True)
    a, b = upstream([x]), ours([x])
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    g = torch.randn(a.shape)
    ga, = torch.autograd.grad(a, x, g)
    gb, = torch.autograd.grad(b, x, g)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('ours_type, mmseg_type', [('collect', 'distribute'),
                                                    ('distribute', 'collect')])
def test_compact_single_branch_is_mmsegs_other_type(ours_type, mmseg_type):
    """mmseg transposes a compact mask for psa_type='collect' (the official code, and
    mmseg's own bi-direction branch, for distribute): its types are swapped there."""
    from mmseg.models.decode_heads import PSAHead

    from mmctx.models.heads import PointwiseSpatialHead
    common = dict(in_channels=C, channels=4, num_classes=3, norm_cfg=dict(type='BN'),
                  mask_size=(3, 4), compact=True)
    upstream = randomize(PSAHead(psa_type=mmseg_type, **common)).eval()
    ours = PointwiseSpatialHead(psa_type=ours_type, **common).eval()
    state = upstream.state_dict()
    ours.load_state_dict({(f'psa_block.{k}' if k.split('.')[0] in ('reduce', 'attention',
                                                                     'proj') else k): v
                          for k, v in state.items()})
    x = [torch.randn(2, C, 6, 8)]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), upstream(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- the equations, restated
def conv_module(x, m, padding=0):
    """``act(norm(conv(x)))`` of an mmcv ConvModule with a 1×1 conv (padding as given)."""
    if padding:
        x = F.pad(x, (padding, ) * 4)
    y = conv1x1(x, m.conv)
    return torch.relu(bn(y, m.bn))


def restated_branch(u, attention, mask_size, kind, compact, softmax, nu, outside):
    """z and the map A (receiver x sender) of one branch, position by position."""
    n, c, h, w = u.shape
    mh, mw = mask_size
    mask = conv1x1(conv_module(u, attention[0]), attention[1])  # (N, mh*mw, h, w)
    pos = [(i, j) for i in range(h) for j in range(w)]
    L = len(pos)
    logits = torch.zeros(n, L, L, dtype=u.dtype)  # [owner p, other q]
    for a, (i, j) in enumerate(pos):
        for b, (k, l) in enumerate(pos):
            if compact:
                logits[:, a, b] = mask[:, b, i, j]
                continue
            di, dj = k - i + (mh - 1) // 2, l - j + (mw - 1) // 2  # window index
            if 0 <= di < mh and 0 <= dj < mw:
                logits[:, a, b] = mask[:, di * mw + dj, i, j]
            elif outside == 'exclude':
                logits[:, a, b] = float('-inf')
    weights = logits.clone()
    if softmax:
        for a in range(L):
            if kind == 'collect':  # over the senders q of receiver p
                weights[:, a, :] = logits[:, a, :].softmax(-1)
            else:  # over the senders p (owners) of receiver q
                weights[:, :, a] = logits[:, :, a].softmax(-1)
    recv_send = weights if kind == 'collect' else weights.transpose(1, 2)
    v = u.reshape(n, c, L)
    z = torch.zeros(n, c, L, dtype=u.dtype)
    for r in range(L):
        for s in range(L):
            z[:, :, r] += recv_send[:, r, s, None] * v[:, :, s] / nu
    return z.reshape(n, c, h, w), recv_send / nu


RESTATED = [
    (dict(mask_size=(3, 5)), (5, 7)),
    (dict(mask_size=(4, 2), psa_type='collect', outside_mask='exclude'), (3, 4)),
    (dict(mask_size=(7, 3), psa_type='distribute', shrink_factor=1,
          normalization_factor=None), (3, 4)),
    (dict(mask_size=(3, 3), psa_softmax=False, normalization_factor=3.), (6, 4)),
    (dict(mask_size=(2, 3), compact=True), (4, 6)),
]


@pytest.mark.parametrize('kwargs, size', RESTATED, ids=[str(i) for i in range(len(RESTATED))])
def test_matches_the_equations_restated(kwargs, size):
    b = block(**{k: v for k, v in kwargs.items()})
    x = torch.randn(2, C, *size, dtype=torch.float64)
    b = b.double()
    out, maps = b.forward_with_attention(x)
    torch.testing.assert_close(b(x), out)
    H, W = size
    s = b.shrink_factor
    if s == 1:
        h, w, align = H, W, False
    elif H % s and W % s:
        h, w, align = -(-H // s), -(-W // s), True
    else:
        h, w, align = H // s, W // s, False
    kinds = (['collect', 'distribute'] if b.psa_type == 'bi-direction' else [b.psa_type])
    parts = [(b.reduce, b.attention), (b.reduce_p, b.attention_p)]
    feats = []
    for kind, (reduce, attention) in zip(kinds, parts):
        u = conv_module(x, reduce)
        if s != 1:
            u = F.interpolate(u, size=(h, w), mode='bilinear', align_corners=align)
        z, A = restated_branch(u, attention, b.mask_size, kind, b.compact, b.psa_softmax,
                               b.normalization_factor, b.outside_mask)
        feats.append(z)
        torch.testing.assert_close(maps[kind], A)
    assert set(maps) == set(kinds)
    o = conv_module(torch.cat(feats, 1), b.proj, padding=1)  # mmseg's padded 1x1 proj
    o = F.interpolate(o, size=(H, W), mode='bilinear', align_corners=align)
    torch.testing.assert_close(out, o)
    if b.psa_softmax:  # each receiver's weights sum to 1/ν in both branches
        for A in maps.values():
            torch.testing.assert_close(A.sum(-1) * b.normalization_factor,
                                       torch.ones(2, h * w, dtype=x.dtype))


def test_outside_mask_zero_leaves_weight_outside_the_window():
    """mmseg's over-completion fills pairs outside the window with logit 0: after the
    softmax they keep weight; 'exclude' gives them none."""
    x = torch.randn(1, C, 6, 6)
    zero = block(mask_size=(3, 3), psa_type='collect', shrink_factor=1)
    excl = block(mask_size=(3, 3), psa_type='collect', shrink_factor=1,
                 outside_mask='exclude')
    A0 = zero.forward_with_attention(x)[1]['collect'][0]
    A1 = excl.forward_with_attention(x)[1]['collect'][0]
    far = (0, 35)  # position (0, 0) and (5, 5): 5 rows apart, window half 1
    assert A0[far] > 1e-3 and A1[far] == 0
    assert (A1 > 0).sum(-1).max() == 9 and (A0 > 0).sum(-1).min() == 36


# ------------------------------------------------------------ registry / host
def test_registry_build_with_only_in_channels():
    b = MODELS.build(dict(type='mmctx.PointwiseSpatialBlock', in_channels=8))
    assert isinstance(b, PointwiseSpatialBlock) and b._abbr_ == 'psa_block'
    assert (b.channels, b.mask_size, b.psa_type) == (2, (97, 97), 'bi-direction')
    assert b.attention[1].out_channels == 97 * 97 and b.proj.conv.out_channels == 8
    b.eval()
    x = torch.randn(1, 8, 9, 7)
    out, maps = b.forward_with_attention(x)
    assert out.shape == x.shape  # the plugin contract: C in, C out
    assert maps['collect'].shape == maps['distribute'].shape == (1, 20, 20)  # 5x4 map
    torch.testing.assert_close(b(x), out)
    assert not torch.allclose(b(torch.randn(1, 8, 9, 7)), out)


def test_head_in_mmseg_registry_and_refuses_conflicting_block_args():
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as SEG
    init_default_scope('mmseg')
    head = SEG.build(dict(type='mmctx.PointwiseSpatialHead', in_channels=8, channels=4,
                          num_classes=3, mask_size=(3, 3),
                          block=dict(type='mmctx.PointwiseSpatialBlock',
                                     outside_mask='exclude')))
    assert head.psa_block.outside_mask == 'exclude' and head.block is head.psa_block
    assert head.bottleneck.conv.in_channels == 16
    with pytest.raises(ValueError, match=r"sets mask_size=\(5, 5\).* remove mask_size"):
        SEG.build(dict(type='mmctx.PointwiseSpatialHead', in_channels=8, channels=4,
                       num_classes=3, mask_size=(3, 3),
                       block=dict(type='mmctx.PointwiseSpatialBlock', mask_size=(5, 5))))


# ------------------------------------------------------------------ gradients
def test_every_parameter_gets_a_finite_gradient():
    b = block(mask_size=(3, 5)).train()
    b(torch.randn(2, C, 7, 9)).square().sum().backward()
    for name, p in b.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize('kwargs', [dict(mask_size=(3, 3)),
                                    dict(mask_size=(3, 5), psa_type='distribute',
                                         outside_mask='exclude', shrink_factor=1)])
def test_gradcheck_double(kwargs):
    b = PointwiseSpatialBlock(3, channels=2, **kwargs).double()
    randomize(b).eval()
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(b, (x, ), eps=1e-6, atol=1e-5)
    m = torch.randn(1, 15, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: psa_mask(t, 'distribute', (3, 5)), (m, ))


def test_keeps_only_the_normalised_map_for_backward():
    """mmcv's PSAMask keeps its mask input (N, mh·mw, L); here the largest tensor kept
    is the (N, L, L) map — smaller, with a mask larger than the map."""
    # channels=2: the mask conv's weight (225 x 2) is below the map, so the map counts
    b = block(mask_size=(15, 15), psa_type='collect', shrink_factor=1, channels=2).train()
    x = torch.randn(2, C, 4, 5, requires_grad=True)
    L = 20
    largest = largest_saved_for_backward(b, x)
    assert largest == 2 * L * L < 2 * 15 * 15 * L


def test_bf16_autocast_maps_in_fp32():
    b = block(mask_size=(5, 5))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, maps = b.forward_with_attention(torch.randn(1, C, 7, 7) * 30)
    assert maps['collect'].dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(maps['collect'].sum(-1), torch.ones(1, 16))
