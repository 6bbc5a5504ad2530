"""The context-block library: bad input first, then parity, paths, reliability."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from mmctx.models.blocks import (DNL_PRESETS, DisentangledNonLocalBlock, DualAttentionBlock,
                                 GlobalContextBlock, NonLocalBlock, PairwiseNonLocalBlock,
                                 SimplifiedNonLocalBlock, SqueezeExcitationBlock,
                                 UnaryNonLocalBlock)
from mmctx.models.blocks import attention
from mmctx.models.blocks.convert import convert_block_state_dict
from mmctx.registry import MODELS

from .conftest import randomize

C = 8
#: (id, class, kwargs, starts as identity)
BLOCKS = [
    ('nl-embedded_gaussian', NonLocalBlock, {}, True),
    ('nl-gaussian', NonLocalBlock, dict(mode='gaussian'), True),
    ('nl-dot_product', NonLocalBlock, dict(mode='dot_product'), True),
    ('nl-concatenation', NonLocalBlock, dict(mode='concatenation'), True),
    ('nl-sub_sample', NonLocalBlock, dict(sub_sample=True, use_scale=False), True),
    ('dnl-mmseg', DisentangledNonLocalBlock, {}, True),
    ('dnl-official_seg', DisentangledNonLocalBlock, dict(preset='official_seg'), False),
    ('dnl-official_det', DisentangledNonLocalBlock, dict(preset='official_det'), False),
    ('dnl-analytic-unary', DisentangledNonLocalBlock, dict(unary='analytic'), True),
    ('dnl-sub_sample', DisentangledNonLocalBlock, dict(sub_sample=True), True),
    ('dnl-concatenation', DisentangledNonLocalBlock,
     dict(mode='concatenation', temperature=1.), True),
    ('pairwise-only', PairwiseNonLocalBlock, {}, True),
    ('unary-only', UnaryNonLocalBlock, {}, True),
    ('unary-only-full', UnaryNonLocalBlock, dict(preset='official_seg'), False),
    ('gc-att-add', GlobalContextBlock, dict(ratio=1. / 4), True),
    ('gc-avg-add-mul', GlobalContextBlock,
     dict(ratio=1. / 4, pooling_type='avg', fusion_types=('channel_add', 'channel_mul')),
     False),
    ('snl', SimplifiedNonLocalBlock, {}, True),
    ('se', SqueezeExcitationBlock, dict(ratio=1. / 4), False),
]
IDS = [b[0] for b in BLOCKS]
PAIRWISE_CLASSES = (NonLocalBlock, DisentangledNonLocalBlock, PairwiseNonLocalBlock,
                    UnaryNonLocalBlock)
SHAPES = {1: (2, C, 11), 2: (2, C, 5, 7), 3: (2, C, 3, 4, 6)}


def build(cls, kwargs, dim=2, **extra):
    return cls(C, dim=dim, **kwargs, **extra)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize('make, error, match', [
    (lambda: NonLocalBlock(C, mode='cosine'), ValueError, r"mode must be one of .*'cosine'"),
    (lambda: NonLocalBlock(C, reduction=16), ValueError, 'reduction=16 leaves 0 channels'),
    (lambda: NonLocalBlock(C, reduction=0), ValueError, 'reduction must be an int >= 1'),
    (lambda: NonLocalBlock(C, reduction=2.), TypeError, 'reduction must be an int'),
    (lambda: NonLocalBlock(0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (lambda: NonLocalBlock('8'), TypeError, 'in_channels must be an int'),
    (lambda: NonLocalBlock(C, dim=4), ValueError, r'dim must be one of \[1, 2, 3\], got 4'),
    (lambda: NonLocalBlock(C, use_scale=1), TypeError, 'use_scale must be a bool'),
    (lambda: DisentangledNonLocalBlock(C, preset='paper'), ValueError, 'preset must be one of'),
    (lambda: DisentangledNonLocalBlock(C, whiten='std'), ValueError, 'whiten must be one of'),
    (lambda: DisentangledNonLocalBlock(C, unary='mask'), ValueError, 'unary must be one of'),
    (lambda: DisentangledNonLocalBlock(C, value='half'), ValueError, 'value must be one of'),
    (lambda: DisentangledNonLocalBlock(C, temperature=0), ValueError, 'temperature must be'),
    (lambda: NonLocalBlock(C, qk_init_std=0), ValueError, 'qk_init_std must be a number > 0'),
    (lambda: DisentangledNonLocalBlock(C, qk_init_std='0.1'), ValueError,
     "qk_init_std must be a number > 0, got '0.1'"),
    (lambda: NonLocalBlock(C, value_init_std=-1.), ValueError,
     'value_init_std must be a number > 0, got -1.0'),
    (lambda: DisentangledNonLocalBlock(C, mode='dot_product'), ValueError,
     'needs temperature=1, got 0.05'),
    (lambda: DisentangledNonLocalBlock(C, pairwise=False, unary='none'), ValueError,
     'models no context'),
    (lambda: DisentangledNonLocalBlock(C, preset='official_det', norm_cfg=dict(type='BN')),
     ValueError, "value='full' has none"),
    (lambda: PairwiseNonLocalBlock(C, unary='conv'), ValueError, 'unary term off'),
    (lambda: UnaryNonLocalBlock(C, pairwise=True), ValueError, 'pairwise term off'),
    (lambda: DisentangledNonLocalBlock(C, bogus=1), TypeError, 'bogus'),
    (lambda: GlobalContextBlock(C, ratio=0), ValueError, r'ratio must be in \(0, 1\], got 0'),
    (lambda: GlobalContextBlock(C, ratio=1. / 16), ValueError, 'leaves 0 channels'),
    (lambda: GlobalContextBlock(C, ratio='1/4'), TypeError, 'ratio must be a number'),
    (lambda: GlobalContextBlock(C, pooling_type='max'), ValueError, 'pooling_type must be'),
    (lambda: GlobalContextBlock(C, fusion_types=()), ValueError, 'at least one'),
    (lambda: GlobalContextBlock(C, fusion_types='channel_add'), TypeError, 'list or tuple'),
    (lambda: GlobalContextBlock(C, fusion_types=('channel_sub', )), ValueError,
     "each of fusion_types must be one of .*'channel_sub'"),
    (lambda: GlobalContextBlock(C, fusion_types=('channel_add', ) * 2), ValueError,
     'duplicates'),
    (lambda: SqueezeExcitationBlock(C, ratio=2), ValueError, r'ratio must be in \(0, 1\]'),
])
def test_invalid_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize('name, cls, kwargs, _', BLOCKS, ids=IDS)
def test_wrong_inputs(name, cls, kwargs, _):
    block = build(cls, kwargs)
    with pytest.raises(ValueError, match=r'dim=2 and expects a 4D input .* got shape \(2, 8, 5, 6, 7\)'):
        block(torch.randn(2, C, 5, 6, 7))
    with pytest.raises(ValueError, match='in_channels=8, got an input with 6 channels'):
        block(torch.randn(2, 6, 5, 7))
    with pytest.raises(TypeError, match='expects a torch.Tensor, got ndarray'):
        block(torch.randn(2, C, 5, 7).numpy())


# -------------------------------------------------------- registry / plugins
ABBRS = {NonLocalBlock: 'nl_block', DisentangledNonLocalBlock: 'dnl_block',
         PairwiseNonLocalBlock: 'pairwise_nl_block', UnaryNonLocalBlock: 'unary_nl_block',
         GlobalContextBlock: 'gc_block', SimplifiedNonLocalBlock: 'snl_block',
         SqueezeExcitationBlock: 'se_block'}


def test_registered_names_and_abbrs():
    for cls, abbr in ABBRS.items():
        assert MODELS.get(cls.__name__) is cls
        assert cls._abbr_ == abbr
    assert len(set(ABBRS.values())) == len(ABBRS)


@pytest.mark.parametrize('name, cls, kwargs, identity', BLOCKS, ids=IDS)
def test_in_mmdet_resnet_plugins(name, cls, kwargs, identity):
    from mmdet.registry import MODELS as DET_MODELS
    torch.manual_seed(0)
    base = dict(type='mmdet.ResNet', depth=50, base_channels=4, out_indices=(3, ),
                norm_cfg=dict(type='BN'))
    plain = DET_MODELS.build(base)
    cfg = dict(type=f'mmctx.{cls.__name__}', **kwargs)
    if cls is GlobalContextBlock or cls is SqueezeExcitationBlock:
        cfg['ratio'] = 1. / 16
    net = DET_MODELS.build(dict(base, plugins=[dict(
        cfg=cfg, stages=(False, False, True, True), position='after_conv3')]))
    net.init_weights()  # mmengine's init must keep each block's own init
    plain.eval(), net.eval()  # (mmdet's ResNet.train returns None)
    names = [n for n, m in net.named_modules() if isinstance(m, cls)]
    assert len(names) == 6 + 3 and all(n.endswith(ABBRS[cls]) for n in names)
    net.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    out, ref = net(x)[0], plain(x)[0]
    assert torch.isfinite(out).all()
    if identity:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    else:
        assert not torch.allclose(out, ref)


@pytest.mark.parametrize('name, cls, kwargs, identity', BLOCKS, ids=IDS)
def test_in_mmaction_resnet3d(name, cls, kwargs, identity):
    from mmaction.registry import MODELS as ACTION_MODELS
    torch.manual_seed(0)
    base = dict(depth=50, pretrained=None, pretrained2d=False, base_channels=4,
                norm_eval=False)
    plain = ACTION_MODELS.build(dict(type='mmaction.ResNet3d', **base))
    plain.init_weights()
    plain.eval()
    net = MODELS.build(dict(
        type='mmctx.ContextResNet3d', **base,
        non_local=((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0)),
        context_cfg=dict(type=cls.__name__, **kwargs)))
    net.init_weights()
    net.eval()
    assert len(net.context_blocks()) == 5
    assert all(isinstance(b, cls) and b.dim == 3 for b in net.context_blocks())
    net.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 4, 32, 32)
    out, ref = net(x), plain(x)
    assert torch.isfinite(out).all()
    if identity:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    else:
        assert not torch.allclose(out, ref)


# ------------------------------------------------------------- upstream parity
def _check_parity(upstream, ours, x, atol=1e-5):
    for train in (False, True):
        upstream.train(train)
        ours.train(train)
        diff = (upstream(x) - ours(x)).abs().max().item()
        assert diff <= atol, f'train={train}: max abs diff {diff:.3g}'


NL_OPTIONS = list(itertools.product(
    ['embedded_gaussian', 'gaussian', 'dot_product', 'concatenation'], [False, True],
    [True, False]))


# every option in 2D; NonLocal1d / NonLocal3d (3D pools 1×2×2) on a subset
@pytest.mark.parametrize('mode, sub_sample, use_scale, dim', [
    o + (2, ) for o in NL_OPTIONS] + [o + (d, ) for o in NL_OPTIONS for d in (1, 3)
                                     if o[2] and o[0] in ('embedded_gaussian', 'dot_product')])
def test_parity_mmcv_nonlocal(mode, sub_sample, use_scale, dim):
    from mmcv.cnn import NonLocal1d, NonLocal2d, NonLocal3d
    norm = dict(type=('BN1d', 'BN', 'BN3d')[dim - 1])
    upstream = randomize((NonLocal1d, NonLocal2d, NonLocal3d)[dim - 1](
        16, sub_sample=sub_sample, mode=mode, use_scale=use_scale, norm_cfg=norm))
    ours = NonLocalBlock(16, mode=mode, sub_sample=sub_sample, use_scale=use_scale,
                         norm_cfg=norm, dim=dim)
    ours.load_state_dict(convert_block_state_dict(upstream.state_dict(), 'mmcv_nonlocal'))
    shape = {1: (2, 16, 13), 2: (2, 16, 9, 11), 3: (2, 16, 3, 6, 7)}[dim]
    _check_parity(upstream, ours, torch.randn(shape))


@pytest.mark.parametrize('pooling_type, fusion_types', list(itertools.product(
    ['att', 'avg'], [('channel_add', ), ('channel_mul', ), ('channel_add', 'channel_mul')])))
def test_parity_mmcv_context_block(pooling_type, fusion_types):
    from mmcv.cnn import ContextBlock
    upstream = randomize(ContextBlock(16, 1. / 4, pooling_type, fusion_types))
    ours = GlobalContextBlock(16, 1. / 4, pooling_type, fusion_types)
    ours.load_state_dict(convert_block_state_dict(upstream.state_dict(),
                                                  'mmcv_context_block'))
    _check_parity(upstream, ours, torch.randn(2, 16, 9, 11))


@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN')])
def test_parity_mmseg_dnl(norm_cfg):
    from mmseg.models.decode_heads.dnl_head import DisentangledNonLocal2d
    # std 0.1: with T = 0.05 larger weights give logits in the hundreds, where fp32
    # rounding (mmseg divides twice, we multiply once) alone exceeds 1e-5
    upstream = randomize(DisentangledNonLocal2d(
        16, temperature=0.05, reduction=2, use_scale=True, mode='embedded_gaussian',
        norm_cfg=norm_cfg), std=0.1)
    ours = DisentangledNonLocalBlock(16, preset='mmseg', norm_cfg=norm_cfg)
    missing, unexpected = ours.load_state_dict(
        convert_block_state_dict(upstream.state_dict(), 'mmseg_dnl'))
    assert not missing and not unexpected
    _check_parity(upstream, ours, torch.randn(2, 16, 9, 11) * 3)


def _official_dnl_reference(block, x, whiten, scale, temperature):
    """The official DNL block written from its equations (REFERENCE.md §3.2 b/c)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)  # (N, C, L)
    conv = lambda m, t: torch.einsum('oc,ncl->nol', m.weight.reshape(m.weight.shape[:2]), t) + (
        0 if m.bias is None else m.bias[None, :, None])
    q, k, v = conv(block.theta, flat), conv(block.phi, flat), conv(block.g, flat)
    if whiten == 'channel':
        q, k = q - q.mean(2, keepdim=True), k - k.mean(2, keepdim=True)
    else:  # one scalar mean over channels and positions (official 'ln_nostd')
        q, k = q - q.mean((1, 2), keepdim=True), k - k.mean((1, 2), keepdim=True)
    sim = torch.einsum('ndi,ndj->nij', q, k) * scale / temperature
    out_sim = block.gamma * torch.einsum('nij,ncj->nci', sim.softmax(-1), v)
    mask = conv(block.conv_mask, flat).softmax(-1)  # (N, 1, L)
    out_gc = torch.einsum('ncj,noj->nco', v, mask)  # (N, C, 1)
    return x + (out_sim + out_gc).reshape(x.shape)


@pytest.mark.parametrize('preset', ['official_seg', 'official_det'])
def test_official_dnl_presets_match_their_equations(preset):
    # in float64: with T = 0.05 the logits are sharp enough for fp32 rounding of two
    # different summation orders to reach 1e-5; the equations must match exactly
    block = randomize(DisentangledNonLocalBlock(16, preset=preset)).double().eval()
    assert block.g.bias is None and block.conv_out is None
    assert block.inter_channels == 16 // DNL_PRESETS[preset]['reduction']
    x = torch.randn(2, 16, 6, 7, dtype=torch.double) * 2
    if preset == 'official_det':
        ref = _official_dnl_reference(block, x, 'channel', (16 // 4)**-0.5, 0.05)
    else:
        ref = _official_dnl_reference(block, x, 'global', 1., 1.)
    torch.testing.assert_close(block(x), ref, rtol=0, atol=1e-10)


def test_analytic_unary_matches_its_equation():
    block = randomize(DisentangledNonLocalBlock(C, unary='analytic', pairwise=False))
    x = torch.randn(2, C, 4, 5)
    flat = x.reshape(2, C, -1)
    theta = block.theta.weight[:, :, 0, 0]
    phi = block.phi.weight[:, :, 0, 0]
    q = theta @ flat + block.theta.bias[:, None]
    k = phi @ flat + block.phi.bias[:, None]
    weights = torch.einsum('nd,ndj->nj', q.mean(2), k).softmax(-1)  # (N, L)
    _, maps = block.forward_with_attention(x)
    torch.testing.assert_close(maps['unary'][:, 0], weights, rtol=0, atol=1e-6)
    assert set(maps) == {'unary'}


def test_pairwise_and_unary_only_are_dnl_with_a_term_off():
    x = torch.randn(2, C, 5, 6)
    full = randomize(DisentangledNonLocalBlock(C)).eval()
    pair = PairwiseNonLocalBlock(C).eval()
    unary = UnaryNonLocalBlock(C).eval()
    pair.load_state_dict({k: v for k, v in full.state_dict().items()
                          if not k.startswith('conv_mask')})
    unary.load_state_dict({k: v for k, v in full.state_dict().items()
                           if not k.startswith(('theta', 'phi'))})
    _, maps = full.forward_with_attention(x)
    _, pmaps = pair.forward_with_attention(x)
    _, umaps = unary.forward_with_attention(x)
    torch.testing.assert_close(pmaps['pairwise'], maps['pairwise'])
    torch.testing.assert_close(umaps['unary'], maps['unary'])
    assert set(pmaps) == {'pairwise'} and set(umaps) == {'unary'}
    # conv_out is linear once BN is in eval mode: the terms add up
    base = full.conv_out(torch.zeros(2, C // 2, 5, 6))
    torch.testing.assert_close(full(x) - x + base, (pair(x) - x) + (unary(x) - x),
                               rtol=0, atol=1e-5)


# --------------------------------------------------------- paths and identity
@pytest.mark.parametrize('budget', [None, 0], ids=['kept-map', 'fused'])
@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('name, cls, kwargs, _', BLOCKS, ids=IDS)
def test_efficient_and_explicit_paths_agree(name, cls, kwargs, _, dim, budget, monkeypatch):
    """In training the softmax modes keep the map within the budget (default) and use
    the fused kernel beyond it (budget 0): both agree with the explicit path."""
    monkeypatch.setattr(attention, 'CHUNK_ELEMENTS', 64)  # many concatenation chunks
    block = randomize(build(cls, kwargs, dim=dim, map_budget_mb=budget)
                      if cls in PAIRWISE_CLASSES else build(cls, kwargs, dim=dim),
                      std=0.1)  # T = 0.05: keep logits O(10)
    x = torch.randn(SHAPES[dim]) * 2
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1 = block(x1)
    out2, maps = block.forward_with_attention(x2)
    torch.testing.assert_close(out1, out2, rtol=0, atol=1e-5)
    grad = torch.randn_like(out1)
    g1 = torch.autograd.grad(out1, [x1] + list(block.parameters()), grad)
    g2 = torch.autograd.grad(out2, [x2] + list(block.parameters()), grad)
    # atol 1e-5 on the scale of the gradients: a parameter gradient sums over positions,
    # and one that is analytically 0 (phi's bias under softmax) is rounding noise
    scale = max(1., max(a.abs().max().item() for a in g1))
    for a, b in zip(g1, g2):
        assert (a - b).abs().max().item() <= 1e-5 * scale
    softmax_terms = [m for term, m in maps.items()
                     if term == 'unary' or block.mode in ('embedded_gaussian', 'gaussian')]
    for m in softmax_terms:  # explicit maps are distributions over keys
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))


def _spy_paths(monkeypatch):
    """Record the SDPA calls (shape, contiguity, kwargs) and the kept-map calls."""
    calls = dict(sdpa=[], kept=0)
    sdpa, kept = F.scaled_dot_product_attention, attention.KeptMapAttention.apply

    def spy(q, k, v, **kw):
        calls['sdpa'].append((q.shape, q.is_contiguous(), k.is_contiguous(),
                              v.is_contiguous(), kw))
        return sdpa(q, k, v, **kw)

    def spy_kept(*args):
        calls['kept'] += 1
        return kept(*args)

    monkeypatch.setattr(attention.F, 'scaled_dot_product_attention', spy)
    monkeypatch.setattr(attention.KeptMapAttention, 'apply', spy_kept)
    return calls


def test_softmax_modes_use_sdpa_and_keep_no_map(monkeypatch):
    calls = _spy_paths(monkeypatch)
    block = DisentangledNonLocalBlock(16)
    with torch.no_grad():  # inference: the fused kernel whatever the budget
        block(torch.randn(2, 16, 6, 5))
    (shape, *contiguous, kw), = calls['sdpa']
    assert shape == (2, 1, 30, 8) and all(contiguous)
    assert kw['scale'] == pytest.approx(8**-0.5 / 0.05)  # √d and temperature folded in
    assert calls['kept'] == 0


@pytest.mark.parametrize('block_budget, region, env, kept', [
    (None, None, None, True),     # default 512 MiB: a (2, 30, 30) map is kept
    (0, None, None, False),       # the block's budget wins
    (None, 0, None, False),       # a map_budget() region
    (None, None, '0', False),     # the environment
    (None, 0, '512', False),      # a region over the environment
    (1, 0, '0', True),            # a block's budget over both
    (0.001, None, None, False),   # 0.001 MiB = 1048 B < the map's 2·30·30·4 = 7200 B
])
def test_map_budget_chooses_the_path(block_budget, region, env, kept, monkeypatch):
    """Training keeps the map when B·Lq·Lk·4 bytes fit the budget; the block's
    ``map_budget_mb`` beats a ``map_budget()`` region, which beats
    ``$MMCTX_MAP_BUDGET_MB``, which beats the default."""
    calls = _spy_paths(monkeypatch)
    if env is None:
        monkeypatch.delenv('MMCTX_MAP_BUDGET_MB', raising=False)
    else:
        monkeypatch.setenv('MMCTX_MAP_BUDGET_MB', env)
    block = DisentangledNonLocalBlock(16, map_budget_mb=block_budget)
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    if region is None:
        block(x).sum().backward()
    else:
        with attention.map_budget(region):
            block(x).sum().backward()
    assert (calls['kept'], len(calls['sdpa'])) == ((1, 0) if kept else (0, 1))


def test_map_budget_limit_is_inclusive_and_bad_budgets_are_refused(monkeypatch):
    calls = _spy_paths(monkeypatch)
    q, k, v = (torch.randn(2, n, 4, requires_grad=True) for n in (32, 64, 64))
    exact = 2 * 32 * 64 * 4 / (1 << 20)  # the map's MiB
    attention.softmax_attention(q, k, v, 1., budget_mb=exact)
    attention.softmax_attention(q, k, v, 1., budget_mb=exact * 0.999)
    assert calls['kept'] == 1 and len(calls['sdpa']) == 1
    for bad in (-1, 'big', True):
        with pytest.raises(ValueError, match='a map budget is a number of MiB >= 0'):
            NonLocalBlock(C, map_budget_mb=bad)
        with pytest.raises(ValueError, match='a map budget is a number of MiB >= 0'):
            with attention.map_budget(bad):
                pass
    monkeypatch.setenv('MMCTX_MAP_BUDGET_MB', 'lots')
    with pytest.raises(ValueError, match="MMCTX_MAP_BUDGET_MB must be .* got 'lots'"):
        attention.map_budget_bytes()
    assert 'map_budget_mb=0' in repr(NonLocalBlock(C, map_budget_mb=0))


@pytest.mark.parametrize('dtype, shapes', [
    (torch.float64, (2, 37, 29, 5, 7)),      # d < dv
    (torch.float32, (1, 1100, 700, 24, 8)),  # d > dv, more query rows than one step
])
def test_kept_map_equals_the_fused_kernel(dtype, shapes, monkeypatch):
    """Values and all three gradients of the kept-map path against the fused kernel
    (q/k or v zero-padded to one width; the same sums in another order), across several
    row steps; backward may run twice (retain_graph) and gives the same gradients."""
    monkeypatch.setattr(attention, 'KEPT_MAP_ROWS', 256)
    torch.manual_seed(0)
    b, lq, lk, d, dv = shapes
    q, k, v = (torch.randn(b, n, c, dtype=dtype, requires_grad=True)
               for n, c in ((lq, d), (lk, d), (lk, dv)))
    grad = torch.randn(b, lq, dv, dtype=dtype)
    width = max(d, dv)
    ref = F.scaled_dot_product_attention(
        F.pad(q, (0, width - d)).unsqueeze(1), F.pad(k, (0, width - d)).unsqueeze(1),
        F.pad(v, (0, width - dv)).unsqueeze(1), scale=0.4).squeeze(1)[..., :dv]
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    out, _ = attention.softmax_attention(q, k, v, 0.4)
    assert out.grad_fn.name() == 'KeptMapAttentionBackward'
    tol = dict(rtol=0, atol=1e-12 if dtype == torch.float64 else 2e-5)
    torch.testing.assert_close(out, ref, **tol)
    for _ in range(2):
        grads = torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
        for a, r in zip(grads, ref_grads):
            torch.testing.assert_close(a, r, **tol)


@pytest.mark.parametrize('mode', ['no_grad', 'inference_mode', 'no_requires_grad'])
@pytest.mark.parametrize('dtype, shapes', [
    (torch.float64, (2, 37, 29, 5, 7)),  # d < dv (DANet's PAM: 64 vs 512)
    (torch.float32, (3, 50, 41, 24, 8)),  # d > dv
    (torch.float32, (5, 9, 11, 3, 6)),  # small maps: whole images per chunk
])
def test_unpadded_query_chunks_without_grad(mode, dtype, shapes, monkeypatch):
    """Without a gradient, q/k and v of different widths run as query chunks (no
    zero-padding for the fused kernel, one logits buffer): the fused kernel's values,
    across several chunks and images, the last chunk partial (12 query rows of one
    image per chunk; for the small maps, 2 whole images per chunk as batched products);
    equal widths and traced calls keep the fused kernel."""
    b, lq, lk, d, dv = shapes
    small = lq * lk < 100
    monkeypatch.setattr(attention, 'INFERENCE_CHUNK_ELEMENTS',
                        2 * lq * lk if small else 12 * lk)
    bmm_batches = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, 'bmm', lambda a, *r, **kw: bmm_batches.append(a.shape[0])
                        or bmm(a, *r, **kw))
    torch.manual_seed(1)
    q, k, v = (torch.randn(b, n, c, dtype=dtype) for n, c in ((lq, d), (lk, d), (lk, dv)))
    ref = F.scaled_dot_product_attention(
        F.pad(q, (0, max(d, dv) - d)).unsqueeze(1), F.pad(k, (0, max(d, dv) - d)).unsqueeze(1),
        F.pad(v, (0, max(d, dv) - dv)).unsqueeze(1), scale=0.4).squeeze(1)[..., :dv]
    chunks, sdpa = [], []
    chunked = attention._chunked_attention
    monkeypatch.setattr(attention, '_chunked_attention',
                        lambda *a: chunks.append(a[0].shape) or chunked(*a))
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, 'scaled_dot_product_attention',
                        lambda *a, **kw: sdpa.append(1) or fused(*a, **kw))
    if mode == 'no_requires_grad':
        out, weights = attention.softmax_attention(q, k, v, 0.4)
    else:
        with getattr(torch, mode)():
            out, weights = attention.softmax_attention(q, k, v, 0.4)
    assert weights is None and chunks == [q.shape] and not sdpa
    # two products per chunk: batches of 2 images (the last one partial) or none
    assert bmm_batches == ([2, 2, 2, 2, 1, 1] if small else [])
    monkeypatch.setattr(torch, 'bmm', bmm)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
    explicit, _ = attention.softmax_attention(q, k, v, 0.4, need_weights=True)
    torch.testing.assert_close(out, explicit, rtol=0,
                               atol=1e-12 if dtype == torch.float64 else 1e-5)
    # equal widths, a trace: the fused kernel; a gradient: the training chunks
    attention.softmax_attention(q, k, q.clone(), 0.4)
    with attention.map_budget(0):
        trained, _ = attention.softmax_attention(q.requires_grad_(), k, v, 0.4)
    assert trained.grad_fn.name() == 'ChunkedAttentionBackward'
    monkeypatch.setattr(attention, 'traced', lambda: True)
    attention.softmax_attention(q.detach(), k, v, 0.4)
    assert len(chunks) == 1 and len(sdpa) == 2
    # written channels-first; transposed views of (B, C, L) tensors (as the blocks pass
    # their conv outputs) are read in place and give the same values (up to
    # the products' order of sums)
    assert out.transpose(1, 2).is_contiguous()
    monkeypatch.setattr(attention, 'traced', lambda: False)
    views = [t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    torch.testing.assert_close(attention.softmax_attention(*views, 0.4)[0], out, rtol=0,
                               atol=1e-12 if dtype == torch.float64 else 1e-5)
    assert len(chunks) == 2 and not views[0].is_contiguous()


@pytest.mark.parametrize('shapes, elements', [
    ((2, 13, 11, 3, 5), 4 * 11),     # d < dv, 4 query rows of one image per chunk
    ((3, 7, 9, 6, 2), 2 * 7 * 9),    # d > dv, two whole images per chunk (batched)
    ((2, 13, 11, 3, 5), 10 ** 6),    # everything in one chunk
])
def test_chunked_attention_training(shapes, elements, monkeypatch):
    """Training beyond the map budget with q/k and v of different widths runs
    :class:`ChunkedAttention` (its hand-written backward, nothing zero-padded):
    gradcheck in fp64 across chunk layouts, the explicit path's values and gradients,
    backward twice (retain_graph), no map saved for backward; equal widths keep the
    fused kernel."""
    torch.manual_seed(2)
    b, lq, lk, d, dv = shapes
    q, k, v = (torch.randn(b, n, c, dtype=torch.float64, requires_grad=True)
               for n, c in ((lq, d), (lk, d), (lk, dv)))
    torch.autograd.gradcheck(
        lambda *t: attention.ChunkedAttention.apply(*t, None, None, 0.6, elements),
        (q, k, v))
    monkeypatch.setattr(attention, 'TRAINING_CHUNK_ELEMENTS', elements)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t,
                                                  lambda t: t):
        with attention.map_budget(0):
            out, _ = attention.softmax_attention(q, k, v, 0.6)
    assert out.grad_fn.name() == 'ChunkedAttentionBackward'
    # saved for backward: (scaled) q, k, v and the output, no map
    assert sorted(sizes) == sorted(t.numel() for t in (q, k, v, out))
    ref, weights = attention.softmax_attention(q, k, v, 0.6, need_weights=True)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    for _ in range(2):
        for a, r in zip(torch.autograd.grad(out, (q, k, v), grad, retain_graph=True),
                        ref_grads):
            torch.testing.assert_close(a, r)
    with attention.map_budget(0):  # equal widths: the fused kernel
        same, _ = attention.softmax_attention(q, k, torch.randn_like(k), 0.6)
    assert same.grad_fn.name() != 'ChunkedAttentionBackward'


@pytest.mark.parametrize('path', ['kept', 'chunked', 'inference'])
@pytest.mark.parametrize('align', [16, 1])
def test_keys_padded_to_the_alignment(path, align, monkeypatch, masked_keys):
    """The paths that write logits into a buffer pad the keys to a multiple of
    KEY_ALIGN (300 → 304; zero keys whose logits are -inf): the explicit path's values
    and gradients (of the 300 real keys) either way; small maps (< 16 × KEY_ALIGN keys)
    stay unpadded."""
    monkeypatch.setattr(attention, 'KEY_ALIGN', align)
    torch.manual_seed(3)
    dv = 5 if path == 'kept' else 7  # equal widths only for the kept map
    shapes = ((20, 5), (300, 5), (300, dv))
    q, k, v = (torch.randn(2, n, c, dtype=torch.float64, requires_grad=path != 'inference')
               for n, c in shapes)
    ref, _ = attention.softmax_attention(q, k, v, 0.3, need_weights=True)
    with attention.map_budget(512 if path == 'kept' else 0), \
            torch.set_grad_enabled(path != 'inference'):
        out, _ = attention.softmax_attention(q, k, v, 0.3)
    assert masked_keys and set(masked_keys) == {(304 if align == 16 else 300, 300)}
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    if path != 'inference':
        assert out.grad_fn.name() == ('KeptMapAttentionBackward' if path == 'kept'
                                      else 'ChunkedAttentionBackward')
        grad = torch.randn_like(out)
        for a, r in zip(torch.autograd.grad(out, (q, k, v), grad),
                        torch.autograd.grad(ref, (q, k, v), grad)):
            assert a.shape == r.shape
            torch.testing.assert_close(a, r, rtol=0, atol=1e-12)
    masked_keys.clear()
    small = [t[:, :200].detach() for t in (q, k, v)]
    with torch.no_grad():
        attention.softmax_attention(*small, 0.3)
    assert set(masked_keys) <= {(200, 200)}


@pytest.mark.parametrize('budget', [512, 0], ids=['kept-map', 'recomputed'])
@pytest.mark.parametrize('cls, kwargs', [
    (NonLocalBlock, {}), (DisentangledNonLocalBlock, {}),
    (DualAttentionBlock, dict(cam=False))], ids=['nl', 'dnl', 'pam'])
def test_blocks_with_padded_keys(cls, kwargs, budget, monkeypatch):
    """Whole blocks, 2 images of 17×17 = 289 positions (padded to 304 keys): output and
    every gradient (input and parameters) as without the padding."""
    torch.manual_seed(5)
    block = cls(16, **kwargs).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.1)
    x, grad = torch.randn(2, 2, 16, 17, 17, dtype=torch.float64)
    results = []
    for align in (16, 1):
        monkeypatch.setattr(attention, 'KEY_ALIGN', align)
        xx = x.clone().requires_grad_()
        with attention.map_budget(budget):
            y = block(xx)
        results.append([y] + list(torch.autograd.grad(y, [xx] + list(block.parameters()),
                                                      grad)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize('batch, lq', [(0, 5), (2, 0)])
def test_softmax_attention_on_empty_inputs(batch, lq):
    """No image or no query: every CPU path (kept map, training chunks, inference
    chunks) returns an empty output and an empty gradient instead of dividing by 0."""
    q, k, v = (torch.randn(batch, n, c, requires_grad=True)
               for n, c in ((lq, 3), (5, 3), (5, 6)))
    for budget in (512, 0):
        with attention.map_budget(budget):
            out, _ = attention.softmax_attention(q, k, v, 0.5)
        out.sum().backward()
        assert out.shape == (batch, lq, 6) and q.grad.shape == q.shape
    with torch.no_grad():
        assert attention.softmax_attention(q, k, v, 0.5)[0].shape == (batch, lq, 6)


def test_kept_map_gradcheck():
    q, k, v = (torch.randn(2, n, 3, dtype=torch.float64, requires_grad=True)
               for n in (6, 5, 5))
    assert torch.autograd.gradcheck(
        lambda *t: attention.softmax_attention(*t, 0.7)[0], (q, k, v))


def test_kept_map_saves_one_map_and_the_fused_kernel_none():
    """Memory: the kept path saves exactly one B·Lq·Lk map for backward (the
    explicit path in mmcv keeps several), the fused kernel none."""
    q, k, v = (torch.randn(2, n, 8, requires_grad=True) for n in (48, 40, 40))

    def saved_map_elements(budget):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with attention.map_budget(budget):
                attention.softmax_attention(q, k, v, 1.)
        return sum(n for n in sizes if n >= 48 * 40)

    assert saved_map_elements(512) == 2 * 48 * 40
    assert saved_map_elements(0) == 0


@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('name, cls, kwargs, identity', BLOCKS, ids=IDS)
def test_identity_at_init(name, cls, kwargs, identity, dim):
    block = build(cls, kwargs, dim=dim)
    x = torch.randn(SHAPES[dim])
    if identity:
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    elif cls is DisentangledNonLocalBlock or cls is UnaryNonLocalBlock:
        # official recipes: γ = 0 gates the pairwise term only; unary is live
        no_pair = UnaryNonLocalBlock(C, preset=block.preset, dim=dim)
        no_pair.load_state_dict(block.state_dict(), strict=False)
        torch.testing.assert_close(block(x), no_pair(x), rtol=0, atol=1e-6)
        assert not torch.allclose(block(x), x)
    else:
        assert not torch.allclose(block(x), x)


@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN')])
def test_nonlocal_zero_inits_the_output_norm_or_conv(norm_cfg):
    block = NonLocalBlock(C, norm_cfg=norm_cfg)
    last = block.conv_out.norm if norm_cfg else block.conv_out.conv
    assert last.weight.abs().sum() == 0 and last.bias.abs().sum() == 0
    randomize(block)
    block.init_weights()  # what mmengine calls: back to the block's own init
    assert last.weight.abs().sum() == 0
    assert block.g.weight.std() < 0.05  # N(0, 0.01)


@pytest.mark.parametrize('cls, std', [(NonLocalBlock, 0.3), (DisentangledNonLocalBlock, 0.07),
                                      (PairwiseNonLocalBlock, 0.07)])
def test_init_stds_set_the_query_key_and_value_inits(cls, std):
    torch.manual_seed(0)
    block = cls(64, qk_init_std=std, value_init_std=0.2)
    default = cls(64)
    for conv in (block.theta, block.phi):  # 64 * 32 weights: the sample std is within 10 %
        assert abs(conv.weight.std().item() - std) < 0.1 * std
        assert conv.bias.abs().sum() == 0
    assert abs(default.theta.weight.std().item() - 0.01) < 0.001  # mmcv's init unchanged
    assert abs(block.g.weight.std().item() - 0.2) < 0.02
    assert abs(default.g.weight.std().item() - 0.01) < 0.001
    last = block.conv_out.norm if block.conv_out.with_norm else block.conv_out.conv
    assert last.weight.abs().sum() == 0  # still the identity at init
    randomize(block)
    block.init_weights()
    assert abs(block.phi.weight.std().item() - std) < 0.1 * std
    assert f'qk_init_std={std}, value_init_std=0.2' in repr(block)
    assert 'init_std' not in repr(default)


# --------------------------------------------------------------- reliability
@pytest.mark.parametrize('name, cls, kwargs, _', BLOCKS, ids=IDS)
def test_every_parameter_gets_a_gradient(name, cls, kwargs, _):
    block = randomize(build(cls, kwargs))
    with torch.no_grad():  # no ReLU of a bottleneck may be dead for the whole batch:
        # its conv's bias and, where a norm follows the conv (GC: LayerNorm), the norm's
        for pname, p in block.named_parameters():
            if pname.endswith(('.0.bias', '.1.bias')):
                p.abs_().add_(1.)
    block(torch.randn(2, C, 5, 7)).pow(2).sum().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None, pname
        if pname.endswith('conv_mask.bias'):
            # a constant added to softmax logits changes nothing: its gradient is zero in
            # exact arithmetic (rounding may leave a trace of either sign, or none, that
            # grows with the gradient reaching the logits: measured against the weight's)
            weight = dict(block.named_parameters())[pname[:-len('bias')] + 'weight']
            assert p.grad.abs().max() < 1e-3 * weight.grad.abs().max(), pname
            continue
        assert p.grad.abs().sum() > 0, f'{pname} got an all-zero gradient'


@pytest.mark.parametrize('name, cls, kwargs, _', BLOCKS, ids=IDS)
def test_gradcheck_double(name, cls, kwargs, _):
    block = randomize(build(cls, kwargs)).double().eval()
    x = torch.randn(1, C, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x, ), eps=1e-6, atol=1e-5)
    if hasattr(block, 'forward_with_attention'):
        assert torch.autograd.gradcheck(lambda t: block.forward_with_attention(t)[0],
                                        (x, ), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('name, cls, kwargs, _', BLOCKS, ids=IDS)
def test_bf16_autocast_with_sharp_temperature_is_finite(name, cls, kwargs, _):
    if cls in (DisentangledNonLocalBlock, PairwiseNonLocalBlock, UnaryNonLocalBlock) \
            and kwargs.get('mode', 'embedded_gaussian') == 'embedded_gaussian':
        kwargs = dict(kwargs, temperature=0.05)
    block = randomize(build(cls, kwargs), std=1.)
    x = torch.randn(2, C, 16, 16) * 100
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
        out2, maps = block.forward_with_attention(x)
    assert torch.isfinite(out).all() and torch.isfinite(out2).all()
    for m in maps.values():
        assert m.dtype == torch.float32 and torch.isfinite(m).all()


@pytest.mark.parametrize('dim', [1, 2, 3])
def test_pointwise_logits_is_the_convolution_with_a_matmul_backward(dim):
    """The attention-pooling mask (GC, DNL's unary term): the convolution's own forward
    (bit-identical to upstream's blocks, which converted checkpoints rely on) and an
    exact backward by matrix products in eager CPU training."""
    from mmctx.models.blocks._base import _PointwiseLogits, pointwise_logits
    conv = getattr(torch.nn, f'Conv{dim}d')(6, 1, 1).double()
    x = torch.randn((2, 6) + (4, ) * dim, dtype=torch.float64, requires_grad=True)
    out = pointwise_logits(conv, x)
    assert out.grad_fn.next_functions[0][0].name() == '_PointwiseLogitsBackward'
    assert torch.equal(out, conv(x).reshape(2, 1, -1))
    torch.autograd.gradcheck(lambda x, w, b: _PointwiseLogits.apply(conv, x, w, b),
                             (x, conv.weight, conv.bias))
    with torch.no_grad():  # inference: the convolution, nothing else
        assert torch.equal(pointwise_logits(conv, x), conv(x).reshape(2, 1, -1))
    # the weight alone needs a gradient (a frozen input)
    out = pointwise_logits(conv, x.detach())
    out.pow(2).sum().backward()
    ref = conv.weight.grad.clone()
    conv.zero_grad()
    conv(x.detach()).pow(2).sum().backward()
    torch.testing.assert_close(ref, conv.weight.grad)


def test_pointwise_logits_under_bf16_autocast_gives_fp32_gradients():
    from mmctx.models.blocks._base import pointwise_logits
    conv = torch.nn.Conv2d(8, 1, 1)
    x = torch.randn(2, 8, 4, 5, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = pointwise_logits(conv, x)
        ref_out = conv(x).reshape(2, 1, -1)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref_out)
    out.float().square().sum().backward()
    grads = [t.grad.clone() for t in (x, conv.weight, conv.bias)]
    for t in (x, conv.weight, conv.bias):
        t.grad = None
    ref_out.float().square().sum().backward()
    for g, t in zip(grads, (x, conv.weight, conv.bias)):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, t.grad, rtol=2e-2, atol=2e-2)


def _cat_conv_modules():
    from mmcv.cnn import ConvModule
    yield ConvModule(7, 5, 3, padding=1, norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
    yield ConvModule(7, 5, 1, norm_cfg=dict(type='BN'), act_cfg=None)  # ANN's AFNB
    yield ConvModule(7, 5, 3, padding=2, dilation=2, stride=2, bias=True, norm_cfg=None)
    yield torch.nn.Conv2d(7, 5, 3, padding=1)
    yield torch.nn.Conv1d(7, 5, 3, padding=1, bias=False)
    yield torch.nn.Conv3d(7, 5, 1)


@pytest.mark.parametrize('module', list(_cat_conv_modules()), ids=lambda m: repr(m)[:40])
@pytest.mark.parametrize('train', [False, True])
def test_concat_conv_is_the_conv_of_the_concatenation(module, train, monkeypatch):
    """The sum of per-part convolutions equals the convolution of the concatenation,
    forward and backward (inputs, weights, bias, norm), and forms no concatenation."""
    from mmctx.models.blocks._base import concat_conv
    torch.manual_seed(0)
    randomize(module)
    module.train(train)
    dim = next(p for p in module.parameters() if p.dim() > 1).dim() - 2
    spatial = (6, 5, 4)[:dim]
    parts = [torch.randn(2, c, *spatial, dtype=torch.float64, requires_grad=True)
             for c in (4, 1, 2)]
    module = module.double()
    ref_module = __import__('copy').deepcopy(module)
    ref = ref_module(torch.cat(parts, dim=1))
    gref = torch.autograd.grad(ref.pow(2).sum(), parts + list(ref_module.parameters()))
    real_cat = torch.cat

    def no_cat(tensors, dim=0):
        if dim == 1:
            raise AssertionError('concat_conv concatenated its parts')
        return real_cat(tensors, dim)

    monkeypatch.setattr(torch, 'cat', no_cat)
    out = concat_conv(module, (p for p in parts))  # a generator: parts in turn
    monkeypatch.setattr(torch, 'cat', real_cat)
    torch.testing.assert_close(out, ref)
    got = torch.autograd.grad(out.pow(2).sum(), parts + list(module.parameters()))
    for a, b in zip(got, gref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('module', [
    torch.nn.Conv2d(6, 4, 1, groups=2),
    torch.nn.Conv2d(6, 4, 3, padding=1, padding_mode='reflect'),
], ids=['grouped', 'reflect'])
def test_concat_conv_falls_back_to_the_concatenation(module):
    from mmctx.models.blocks._base import concat_conv
    parts = [torch.randn(1, 2, 5, 5), torch.randn(1, 4, 5, 5)]
    assert torch.equal(concat_conv(module, iter(parts)), module(torch.cat(parts, dim=1)))


@pytest.mark.parametrize('widths, match', [((4, 4), 'more than the 7'), ((3, 2), '5 channels')])
def test_concat_conv_refuses_wrong_widths(widths, match):
    from mmctx.models.blocks._base import concat_conv
    conv = torch.nn.Conv2d(7, 3, 1)
    with pytest.raises(ValueError, match=match):
        concat_conv(conv, [torch.randn(1, c, 3, 3) for c in widths])


def test_concat_conv_under_autocast():
    """bf16 autocast (CPU): the same dtype and values as the concatenation's conv."""
    from mmcv.cnn import ConvModule

    from mmctx.models.blocks._base import concat_conv
    torch.manual_seed(0)
    for module in (ConvModule(6, 4, 1, norm_cfg=None), ConvModule(6, 4, 3, padding=1)):
        parts = [torch.randn(2, 2, 5, 5), torch.randn(2, 4, 5, 5)]
        with torch.autocast('cpu', dtype=torch.bfloat16):
            ref = module(torch.cat(parts, dim=1))
            out = concat_conv(module, iter(parts))
        assert out.dtype == ref.dtype
        torch.testing.assert_close(out.float(), ref.float(), atol=0.05, rtol=0.02)


def test_concat_conv_traced_keeps_the_concatenation():
    """A jit trace (the FLOP counters', like export and compile) sees the one conv of
    the concatenation, so counted FLOPs and exported graphs are upstream's."""
    from mmctx.models.blocks._base import concat_conv
    class Fuse(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(6, 4, 1)

        def forward(self, a, b):
            return concat_conv(self.conv, (a, b))

    parts = (torch.randn(1, 2, 5, 5), torch.randn(1, 4, 5, 5))
    graph = torch.jit.trace(Fuse(), parts).inlined_graph
    kinds = [n.kind() for n in graph.nodes()]
    assert 'aten::cat' in kinds and kinds.count('aten::_convolution') == 1, kinds
    assert 'aten::baddbmm_' not in kinds
