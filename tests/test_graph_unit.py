"""GraphUnitBlock (GCU): invalid arguments, an element-wise restatement of the
equations (1-D/2-D/3-D, one and several units, both adjacencies), identity at init,
registry / hosts, gradients, fp32 assignments under autocast, the analysis tools."""
import pytest
import torch

from mmctx.models.blocks.graph_unit import GraphUnitBlock
from mmctx.registry import MODELS

from .conftest import bn, conv1x1


def randomize(block, seed=0, gamma=0.7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        block.log_sigma.mul_(0.4)  # σ in about [0.5, 2]
        block.gamma.fill_(gamma)
        if block.norm is not None:
            block.norm.running_mean.copy_(torch.randn(block.in_channels, generator=g) * 0.1)
            block.norm.running_var.copy_(torch.rand(block.in_channels, generator=g) + 0.5)
    return block


# ----------------------------------------------------------------- invalid arguments
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(in_channels=16, dim=4), ValueError, r'dim must be one of \[1, 2, 3\], got 4'),
    (dict(in_channels=16, num_nodes=0), ValueError, r'num_nodes\[0\] must be an int >= 1'),
    (dict(in_channels=16, num_nodes=(4, 2.)), TypeError, r'num_nodes\[1\] must be an int'),
    (dict(in_channels=16, num_nodes=()), TypeError, 'num_nodes must be an int or a list'),
    (dict(in_channels=16, num_nodes='8'), TypeError, 'num_nodes must be an int or a list'),
    (dict(in_channels=3), ValueError, r'unit_channels defaults to in_channels // 4 units, '
     r'0 for in_channels=3: set unit_channels'),
    (dict(in_channels=16, unit_channels=0), ValueError, 'unit_channels must be an int >= 1'),
    (dict(in_channels=16, adjacency='cosine'), ValueError,
     r"adjacency must be one of \['softmax', 'dot'\], got 'cosine'"),
    (dict(in_channels=16, norm_cfg='BN'), TypeError, 'norm_cfg must be None or a dict'),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GraphUnitBlock(**kwargs)


def test_invalid_inputs():
    block = GraphUnitBlock(16)
    with pytest.raises(TypeError, match='expects a torch.Tensor, got list'):
        block([1, 2])
    with pytest.raises(ValueError, match=r'dim=2 and expects a 4D input .*'
                       r'got shape \(1, 16, 2, 3, 3\)'):
        block(torch.zeros(1, 16, 2, 3, 3))
    with pytest.raises(ValueError, match='in_channels=16, got an input with 8 channels'):
        block.forward_with_attention(torch.zeros(1, 8, 3, 3))


# ------------------------------------------------------------------ restatement
def reference(block, x):
    """The equations with the ``(N, L, K, C)`` differences written out (eval mode):
    output, the mean over units of ``Q_u G_u`` and the stacked ``Q`` ``(N, L, K)``."""
    n, c = x.shape[:2]
    feats = x.reshape(n, c, -1).transpose(1, 2)  # (N, L, C)
    sigma = torch.exp(block.log_sigma)
    outs, maps, qs = [], [], []
    start = 0
    for k, conv in zip(block.num_nodes, block.graph_convs):
        w, s = block.centres[start:start + k], sigma[start:start + k]
        start += k
        diff = (feats[:, :, None, :] - w) / s  # (N, L, K, C)
        logits = -0.5 * (diff ** 2).sum(-1)
        q = torch.exp(logits - logits.max(-1, keepdim=True).values)
        q = q / q.sum(-1, keepdim=True)  # softmax over the unit's K vertices
        z = (q[..., None] * diff).sum(1) / q.sum(1)[..., None]  # (N, K, C)
        z = z / z.norm(dim=-1, keepdim=True)
        adj = z @ z.transpose(1, 2)
        if block.adjacency == 'softmax':
            adj = torch.exp(adj) / torch.exp(adj).sum(-1, keepdim=True)
        z_out = torch.relu(adj @ z @ conv.weight.t())  # (N, K, d)
        outs.append(q @ z_out)  # (N, L, d)
        maps.append(q @ (q / q.sum(1, keepdim=True)).transpose(1, 2))  # (N, L, L)
        qs.append(q)
    y = torch.cat(outs, -1).transpose(1, 2).reshape(n, -1, *x.shape[2:])
    y = conv1x1(y, block.conv_out)
    if block.norm is not None:
        y = bn(y, block.norm)
    return x + block.gamma * y, sum(maps) / len(maps), torch.cat(qs, -1)


@pytest.mark.parametrize('dim, size, kwargs', [
    (2, (5, 4), dict()),
    (2, (3, 7), dict(num_nodes=6, adjacency='dot')),
    (1, (9, ), dict(num_nodes=(3, 5), unit_channels=3)),
    (3, (2, 3, 4), dict(num_nodes=(2, 4), norm_cfg=None)),
])
def test_matches_restatement(dim, size, kwargs):
    torch.manual_seed(dim)
    block = randomize(GraphUnitBlock(8, dim=dim, **kwargs)).double().eval()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    out, maps = block.forward_with_attention(x)
    with torch.no_grad():
        exp_out, exp_map, exp_q = reference(block, x)
    assert not torch.allclose(exp_out, x, atol=1e-2)
    assert ((exp_q > 0.01) & (exp_q < 0.99)).double().mean() > 0.3  # soft, not one-hot
    torch.testing.assert_close(out, exp_out)
    torch.testing.assert_close(block(x), exp_out)
    torch.testing.assert_close(maps['pairwise'], exp_map)
    torch.testing.assert_close(maps['pairwise'].sum(-1), torch.ones(2, exp_map.shape[1],
                                                                    dtype=torch.float64))
    a = block.assignments(x)
    torch.testing.assert_close(a['distribute'], exp_q)
    torch.testing.assert_close(a['gather'], (exp_q / exp_q.sum(1, keepdim=True)).transpose(1, 2))


def test_identity_at_init_and_after_reset():
    block = GraphUnitBlock(16).train()
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(block(x), x)
    randomize(block)
    assert not torch.allclose(block(x), x)
    block.reset_parameters()
    assert block.gamma.item() == 0 and torch.equal(block(x), x)
    assert (block.log_sigma == 0).all()


# ---------------------------------------------------------- registry, hosts, gradients
def test_registry_build_with_only_in_channels_and_hosts():
    from mmctx.models.heads import ContextHead
    block = MODELS.build(dict(type='mmctx.GraphUnitBlock', in_channels=16))
    assert isinstance(block, GraphUnitBlock) and block._abbr_ == 'gcu_block'
    assert block.num_nodes == (2, 4, 8, 32) and block.unit_channels == 4
    head = ContextHead(block=dict(type='mmctx.GraphUnitBlock'), in_channels=8, channels=16,
                       num_classes=3)
    assert head.block_name == 'gcu_block' and head.block.in_channels == 16
    assert head([torch.randn(2, 8, 6, 7)]).shape == (2, 3, 6, 7)
    from mmdet.registry import MODELS as DET
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        net = DET.build(dict(type='ResNet', depth=50, base_channels=16, plugins=[dict(
            cfg=dict(type='mmctx.GraphUnitBlock'), stages=(False, False, True, False),
            position='after_conv3')]))
    assert sum(isinstance(m, GraphUnitBlock) for m in net.modules()) == 6
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(torch.randn(1, 3, 64, 64))[-1]).all()


def test_every_parameter_gets_a_finite_gradient():
    block = GraphUnitBlock(16, num_nodes=(2, 5)).train()
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    block(x).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradcheck():
    block = randomize(GraphUnitBlock(4, num_nodes=(2, 3), unit_channels=2)).double().eval()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x, ), eps=1e-6, atol=1e-5, fast_mode=True)


def test_half_precision_autocast_keeps_assignments_in_fp32():
    """Large inputs: ‖x − w‖² over C channels is far beyond fp16 (65504); the
    assignments run in fp32 and the output stays finite and close to fp32's."""
    torch.manual_seed(3)
    block = randomize(GraphUnitBlock(64, num_nodes=(4, 8))).eval()
    x = torch.randn(2, 64, 6, 6) * 60
    ref = block(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
        a = block.assignments(x)
    assert a['distribute'].dtype == torch.float32 and a['gather'].dtype == torch.float32
    torch.testing.assert_close(a['distribute'], block.assignments(x)['distribute'])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_analysis_tools_read_the_effective_map():
    from mmctx.analysis import collect_attention, query_independence
    torch.manual_seed(8)
    block = randomize(GraphUnitBlock(16, num_nodes=(3, 6)), seed=8)
    model = torch.nn.Sequential(block).eval()
    x = [torch.randn(1, 16, 6, 5) for _ in range(2)]
    (rec, ) = collect_attention(model, x[0]).values()
    _, maps = block.forward_with_attention(x[0])
    torch.testing.assert_close(rec['pairwise'], maps['pairwise'].float())
    (row, ) = query_independence(model, x, num_queries=8)
    assert row['type'].startswith('GraphUnitBlock') and row['cosine_distance'] > 1e-4
