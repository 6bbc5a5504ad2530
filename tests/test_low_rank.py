"""The low-rank blocks (A², GloRe, LatentGNN, CGNL) against re-statements of their
equations."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmctx.models.blocks import CGNLBlock, DoubleAttentionBlock, GloReBlock, LatentGNNBlock
from mmctx.registry import MODELS

from .conftest import bn, conv1x1

BLOCKS = [DoubleAttentionBlock, GloReBlock, LatentGNNBlock, CGNLBlock]
SHAPES = {1: (2, 16, 7), 2: (2, 16, 5, 6), 3: (2, 16, 3, 4, 5)}


def randomized(block, seed=0, scale=0.3):
    """Non-trivial weights and BN statistics everywhere (zero-inits undone)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale
                    + (0.5 if p.dim() == 1 and p.numel() > 1 else 0.))
        for name, b in block.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.2)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)
    return block


# --- A² --------------------------------------------------------------------------------

def a2_reference(block, x):
    """The paper: G = A softmax_L(B)ᵀ; z_i = Σ_k softmax_n(V)_{k,i} g_k; x + conv_out(z)."""
    n = x.shape[0]
    a = conv1x1(x, block.conv_a).reshape(n, block.feature_channels, -1)
    b = conv1x1(x, block.conv_b).reshape(n, block.num_descriptors, -1)
    v = conv1x1(x, block.conv_v).reshape(n, block.num_descriptors, -1)
    L = a.shape[-1]
    z = torch.zeros_like(a)
    for s in range(n):
        for k in range(block.num_descriptors):  # descriptor k: positions weighted by softmax_L
            g_k = (a[s] * torch.exp(b[s, k]) / torch.exp(b[s, k]).sum()).sum(-1)  # (m, )
            for i in range(L):  # distribution weight of k at i: softmax over descriptors
                z[s, :, i] += torch.exp(v[s, k, i]) / torch.exp(v[s, :, i]).sum() * g_k
    z = z.reshape(n, -1, *x.shape[2:])
    out = conv1x1(z, block.conv_out.conv)
    if block.conv_out.with_norm:
        out = bn(out, block.conv_out.norm)
    return x + out


@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('train', [False, True])
def test_a2_matches_the_papers_equations(dim, train):
    torch.manual_seed(0)
    block = randomized(DoubleAttentionBlock(16, num_descriptors=3, feature_channels=5,
                                            norm_cfg=dict(type='BN'), dim=dim)).double()
    block.train(train)
    x = torch.randn(*SHAPES[dim], dtype=torch.double)
    expected = a2_reference(block, x)
    torch.testing.assert_close(block(x), expected)


def test_a2_softmax_axes():
    """Gather weights sum to 1 over positions; distribution weights over descriptors."""
    block = randomized(DoubleAttentionBlock(16))
    x = torch.randn(2, 16, 4, 5)
    a = block.assignments(x)
    torch.testing.assert_close(a['gather'].sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(a['distribute'].sum(-1), torch.ones(2, 20))
    assert not torch.allclose(a['distribute'].sum(1), torch.ones(2, 4))


# --- GloRe -----------------------------------------------------------------------------

def glore_reference(block, x):
    """The official unit, restated: V = X_s Bᵀ (×1/L), GCN (I + A_g) then ReLU then W_g,
    Y = V' B, x + BN(conv_extend(Y))."""
    n = x.shape[0]
    xs = conv1x1(x, block.conv_state).reshape(n, block.num_s, -1)
    b = conv1x1(x, block.conv_proj).reshape(n, block.num_n, -1)
    v = torch.einsum('ncl,nkl->nck', xs, b)  # (N, state, node)
    if block.normalize:
        v = v / xs.shape[-1]
    a_g = block.gcn.conv1.weight[..., 0]  # (node, node)
    h = torch.einsum('kj,ncj->nck', a_g, v) + block.gcn.conv1.bias.view(1, 1, -1) + v
    h = torch.einsum('sc,nck->nsk', block.gcn.conv2.weight[..., 0], torch.relu(h))
    y = torch.einsum('nsk,nkl->nsl', h, b).reshape(n, block.num_s, *x.shape[2:])
    return x + bn(conv1x1(y, block.conv_extend), block.blocker)


@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('normalize', [False, True])
def test_glore_matches_the_official_unit(dim, train, normalize):
    torch.manual_seed(1)
    block = randomized(GloReBlock(16, num_mid=3, normalize=normalize, dim=dim)).double()
    block.train(train)
    x = torch.randn(*SHAPES[dim], dtype=torch.double)
    torch.testing.assert_close(block(x), glore_reference(block, x))


def test_glore_init_is_the_identity_and_normalize_removes_size_dependence():
    block = GloReBlock(16)
    assert torch.equal(block.blocker.weight, torch.zeros(16)) and block.blocker.eps == 1e-4
    x = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(block(x), x)
    # with 1/L, the descriptors of a tiled input equal the untiled input's
    norm = randomized(GloReBlock(16, num_mid=4, normalize=True)).eval()
    raw = randomized(GloReBlock(16, num_mid=4, normalize=False)).eval()
    tiled = x.repeat(1, 1, 2, 2)
    for blk, same in ((norm, True), (raw, False)):
        f1, f2 = blk.features(x), blk.features(tiled)
        d1, d2 = (blk.describe(f, blk.project(f)) for f in (f1, f2))
        assert torch.allclose(d1, d2, rtol=1e-4, atol=1e-5) == same


# --- LatentGNN -------------------------------------------------------------------------

def latentgnn_reference(block, x):
    """LatentGNN V1, restated from the equations (one or more kernels)."""
    n, L = x.shape[0], x[0, 0].numel()

    def conv_bn(seq, t, relu=False):
        out = bn(conv1x1(t, seq[0]), seq[1])
        return torch.relu(out) if relu else out

    def l2(t, d):
        return t / t.norm(dim=d, keepdim=True).clamp_min(1e-12)

    if block.mode == 'asymmetric':
        xv = l2(conv_bn(block.down_channel_v2l, x), 1)
        xl = l2(conv_bn(block.down_channel_l2v, x), 1)
    else:
        xv = xl = l2(conv_bn(block.down_channel, x), 1)
    outs = []
    for k in block.kernels:
        if block.mode == 'asymmetric':
            pv = l2(conv_bn(k.psi_v2l, xv, True).reshape(n, -1, L), 2)  # over positions
            pl = l2(conv_bn(k.psi_l2v, xl, True).reshape(n, -1, L), 1)  # over nodes
        else:
            pv = pl = l2(conv_bn(k.psi, xv, True).reshape(n, -1, L), 1)
        z = torch.einsum('ndl,ncl->ndc', pv, xv.reshape(n, -1, L))
        zn = l2(z, 2)
        a = torch.softmax(torch.einsum('ndc,nec->nde', zn, zn), dim=-1)
        z = torch.einsum('nde,nec->ndc', a, z)
        y = torch.einsum('ndc,ndl->ncl', z, pl).reshape(n, -1, *x.shape[2:])
        if k.graph_conv is not None:
            y = conv_bn(k.graph_conv, y, True)
        outs.append(y)
    return x + block.gamma * conv_bn(block.up_channel, torch.cat(outs, 1))


@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('kwargs', [dict(), dict(mode='symmetric', graph_conv=True),
                                    dict(latent_dims=[3, 5], graph_conv=True)])
def test_latentgnn_matches_the_equations(dim, train, kwargs):
    torch.manual_seed(2)
    block = randomized(LatentGNNBlock(16, **dict(dict(latent_dims=4), **kwargs),
                                      dim=dim)).double()
    block.train(train)
    x = torch.randn(*SHAPES[dim], dtype=torch.double)
    torch.testing.assert_close(block(x), latentgnn_reference(block, x))


# --- shared: effective maps, registry, init, precision, errors --------------------------

def pre_fusion(block, x):
    """What the context modeling aggregates at each position, ``(N, L, C')``."""
    if isinstance(block, LatentGNNBlock):
        f = block.features(x)
        return block._kernel_steps(block.kernels[0], f)[3].transpose(1, 2), f['value']
    f = block.features(x)
    gather = block.project(f)
    desc = block.describe(f, gather)
    return torch.bmm(block.reproject(f, gather), desc), f['value']


@pytest.mark.parametrize('cls', [DoubleAttentionBlock, LatentGNNBlock])
def test_effective_map_reproduces_the_aggregation(cls):
    """A² (no interaction) and LatentGNN (linear K×K mixing): y_i = Σ_j M_ij value_j."""
    torch.manual_seed(3)
    block = randomized(cls(16)).double().eval()
    x = torch.randn(2, 16, 4, 5, dtype=torch.double)
    _, maps = block.forward_with_attention(x)
    y, value = pre_fusion(block, x)
    torch.testing.assert_close(torch.bmm(maps['pairwise'], value.transpose(1, 2)), y)
    if cls is DoubleAttentionBlock:  # rows of a product of two stochastic maps sum to 1
        torch.testing.assert_close(maps['pairwise'].sum(-1), torch.ones(2, 20,
                                                                        dtype=torch.double))


def test_glore_effective_map_is_the_projection_product():
    block = randomized(GloReBlock(16, num_mid=4, normalize=True)).eval()
    x = torch.randn(1, 16, 3, 4)
    _, maps = block.forward_with_attention(x)
    b = block.features(x)['proj']
    torch.testing.assert_close(maps['pairwise'], b.transpose(1, 2) @ b / 12)


@pytest.mark.parametrize('cls', BLOCKS)
@pytest.mark.parametrize('dim', [1, 2, 3])
def test_registry_builds_an_identity_block_from_in_channels(cls, dim):
    block = MODELS.build(dict(type=f'mmctx.{cls.__name__}', in_channels=32, dim=dim))
    assert type(block) is cls
    x = torch.randn(2, 32, *SHAPES[dim][2:])
    torch.testing.assert_close(block(x), x)  # zero-initialised residual branch
    # and it learns: one SGD step moves it off the identity
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    (block(x) * torch.randn_like(x)).sum().backward()
    opt.step()
    assert not torch.allclose(block(x), x)


@pytest.mark.parametrize('cls', BLOCKS)
def test_gradcheck_double_precision(cls):
    torch.manual_seed(4)
    kwargs = {LatentGNNBlock: {'latent_dims': 3}, GloReBlock: {'num_mid': 2},
              CGNLBlock: {'groups': 2, 'kernel': 'gaussian'}}.get(cls, {})
    block = randomized(cls(8, **kwargs)).double()
    block.eval()
    x = torch.randn(1, 8, 3, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x, ), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('cls', BLOCKS)
def test_bf16_autocast_is_finite_and_close(cls):
    torch.manual_seed(5)
    block = randomized(cls(32)).eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
    assert torch.isfinite(out).all()
    ref = block(x)
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize('cls, kwargs, error, match', [
    (DoubleAttentionBlock, dict(reduction=64), ValueError, 'reduction=64 leaves 0 channels'),
    (DoubleAttentionBlock, dict(num_descriptors=0), ValueError, 'num_descriptors must be'),
    (DoubleAttentionBlock, dict(norm_cfg='BN'), TypeError, 'norm_cfg must be None or a dict'),
    (GloReBlock, dict(num_mid=1.5), TypeError, 'num_mid must be an int'),
    (GloReBlock, dict(normalize=1), TypeError, 'normalize must be a bool'),
    (GloReBlock, dict(norm_cfg=None), ValueError, 'GloReBlock needs norm_cfg'),
    (LatentGNNBlock, dict(mode='both'), ValueError, "mode must be one of \\['asymmetric'"),
    (LatentGNNBlock, dict(latent_dims=[]), TypeError, 'latent_dims must be an int or a list'),
    (LatentGNNBlock, dict(channel_stride=64), ValueError, 'channel_stride=64 leaves 0'),
    (LatentGNNBlock, dict(dim=4), ValueError, 'dim must be one of'),
    (CGNLBlock, dict(groups=3), ValueError, 'divisible by groups'),
    (CGNLBlock, dict(kernel='rbf'), ValueError, "kernel must be one of \\['dot', 'gaussian'\\]"),
    (CGNLBlock, dict(kernel='gaussian', order=-1), ValueError, 'order must be an int >= 0'),
    (CGNLBlock, dict(gamma=0), ValueError, 'gamma must be a number > 0'),
])
def test_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(16, **kwargs)


@pytest.mark.parametrize('cls', BLOCKS)
def test_wrong_input_is_refused(cls):
    block = cls(16)
    with pytest.raises(ValueError, match='in_channels=16, got an input with 8'):
        block(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match='expects a 4D input'):
        block(torch.randn(1, 16, 4))


# --- CGNL ------------------------------------------------------------------------------

def cgnl_reference(block, x):
    """The official SpatialCGNL(x), restated per group: y = Σ_p α_p² (Σ φ^p g) θ^p."""
    n, g = x.shape[0], block.groups
    t, p, v = (conv1x1(x, c) for c in (block.t, block.p, block.g))
    cg = block.planes // g
    ys = []
    for k in range(g):
        tk, pk, vk = (a[:, k * cg:(k + 1) * cg] for a in (t, p, v))
        if block.kernel == 'dot':
            s = (pk * vk).flatten(1).sum(1)  # one scalar per sample
            y = s.view(n, *[1] * (x.dim() - 1)) * tk
        else:
            beta = torch.exp(torch.tensor(-2 * block.gamma, dtype=x.dtype))
            y = 0
            for order in range(block.order + 1):
                a2 = (2 * block.gamma) ** order / math.factorial(order) * beta
                s = (pk.pow(order) * vk).flatten(1).sum(1)
                y = y + a2 * s.view(n, *[1] * (x.dim() - 1)) * tk.pow(order)
        if block.use_scale:
            y = y / math.sqrt(tk[0].numel())
        ys.append(y)
    y = torch.cat(ys, 1)
    z = torch.nn.functional.conv1d(y.flatten(2), block.z.weight.flatten(2),
                                   groups=g).view(n, -1, *x.shape[2:])
    return x + torch.nn.functional.group_norm(z, g, block.gn.weight, block.gn.bias)


@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('kwargs', [dict(), dict(kernel='gaussian'),
                                    dict(kernel='gaussian', order=2, use_scale=True)])
def test_cgnl_matches_the_official_kernels(dim, kwargs):
    torch.manual_seed(6)
    block = randomized(CGNLBlock(16, groups=4, **kwargs, dim=dim)).double()
    x = torch.randn(*SHAPES[dim], dtype=torch.double)
    torch.testing.assert_close(block(x), cgnl_reference(block, x))


def test_cgnl_map_is_the_kernel_averaged_over_channel_pairs():
    torch.manual_seed(7)
    block = randomized(CGNLBlock(16, groups=2, kernel='gaussian', order=2)).double()
    x = torch.randn(1, 16, 3, 2, dtype=torch.double)
    _, maps = block.forward_with_attention(x)
    t, p = conv1x1(x, block.t).flatten(2)[0], conv1x1(x, block.p).flatten(2)[0]  # (8, L)
    alphas = block.alphas()
    expected = torch.zeros(6, 6, dtype=torch.double)
    for k in range(2):
        for c in range(4 * k, 4 * k + 4):
            for c2 in range(4 * k, 4 * k + 4):
                for o, a in enumerate(alphas):
                    expected += a * a * torch.outer(t[c] ** o, p[c2] ** o) / (2 * 16)
    torch.testing.assert_close(maps['pairwise'][0], expected)


# --- every low-rank block in every host: plugin, ContextHead, ContextNeck, 3-D backbone ---

from mmctx.models.blocks import EMABlock, HamburgerBlock  # noqa: E402

ALL = {'DoubleAttentionBlock': 'a2_block', 'GloReBlock': 'glore_block',
       'LatentGNNBlock': 'latentgnn_block', 'CGNLBlock': 'cgnl_block',
       'EMABlock': 'ema_block', 'HamburgerBlock': 'ham_block'}


@pytest.mark.parametrize('name', list(ALL))
def test_every_host_builds_and_runs_the_block(name):
    from mmdet.registry import MODELS as DET
    from mmengine.registry import DefaultScope

    from mmctx.models.backbones import resnet3d
    from mmctx.models.heads import ContextHead
    from mmctx.models.necks import ContextNeck
    cfg = dict(type=f'mmctx.{name}')
    # an mmdet ResNet plugin (mmcv's build_plugin_layer: the block's _abbr_ as its name)
    with DefaultScope.overwrite_default_scope('mmdet'):
        net = DET.build(dict(type='ResNet', depth=50, base_channels=16,
                             norm_cfg=dict(type='BN'), plugins=[dict(
                                 cfg=cfg, stages=(False, False, True, False),
                                 position='after_conv3')]))
    blocks = [n for n, m in net.named_modules() if type(m).__name__ == name]
    assert blocks and all(n.endswith(ALL[name]) for n in blocks)
    net.eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(outs[-1]).all()
    # mmctx.ContextHead and ContextNeck
    head = ContextHead(block=cfg, in_channels=16, channels=32, num_classes=3)
    assert type(head.block).__name__ == name and head.block_name == ALL[name]
    assert head([torch.randn(2, 16, 6, 7)]).shape == (2, 3, 6, 7)
    neck = ContextNeck([8, 32], cfg, levels=(-1, ))
    assert neck([torch.randn(1, 8, 6, 6), torch.randn(1, 32, 3, 3)])[1].shape == (1, 32, 3, 3)
    # a 3-D video backbone (dim=3 filled in)
    bb = resnet3d.ContextResNet3d(depth=50, pretrained=None, base_channels=8,
                                  non_local=((0, 0, 0), (1, 0, 1, 0), (0, ) * 6, (0, 0, 0)),
                                  context_cfg=cfg)
    bb.eval()  # mmaction's train() returns None: no chaining
    blocks3d = [m for m in bb.modules() if type(m).__name__ == name]
    assert len(blocks3d) == 2 and all(b.dim == 3 for b in blocks3d)
    with torch.no_grad():
        assert torch.isfinite(bb(torch.randn(1, 3, 4, 32, 32))).all()


@pytest.mark.parametrize('name', list(ALL))
def test_analysis_tools_read_the_effective_map(name):
    """query_independence / collect_attention run on every low-rank block: the map they
    read is the block's effective pairwise map, and its rows differ between queries."""
    from mmctx.analysis import collect_attention, query_independence
    torch.manual_seed(8)
    block = MODELS.build(dict(type=f'mmctx.{name}', in_channels=16,
                              **({'rand_init': False} if name == 'HamburgerBlock' else {})))
    randomized(block, seed=8, scale=1.)
    with torch.no_grad():  # BN shifts of 0: LatentGNN's ReLU'd Ψ stay position-specific
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.zero_()
    model = torch.nn.Sequential(block).eval()
    x = [torch.randn(1, 16, 6, 5) for _ in range(2)]
    (rec, ) = collect_attention(model, x[0]).values()
    _, maps = block.forward_with_attention(x[0])
    torch.testing.assert_close(rec['pairwise'], maps['pairwise'].float())
    (row, ) = query_independence(model, x, num_queries=8)
    assert row['type'].startswith(name) and row['cosine_distance'] > 1e-4
