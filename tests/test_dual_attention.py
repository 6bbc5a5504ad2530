"""DualAttentionBlock (DANet PAM + CAM): arguments, parity with mmseg, equations,
memory-efficient vs explicit path, registry, identity at init, training, precision."""
import pytest
import torch
from mmseg.models.decode_heads.da_head import CAM, PAM, DAHead
from torch.autograd.graph import saved_tensors_hooks

from mmctx.models.blocks.dual_attention import (DualAttentionBlock,
                                                convert_mmseg_da_state_dict,
                                                split_mmseg_da_head)

SIZES = {1: [(7, ), (12, )], 2: [(5, 7), (3, 11)], 3: [(2, 3, 5), (3, 2, 4)]}


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random, γ included (a zero γ would hide the attention)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(pam=False, cam=False), ValueError, 'pam=False and cam=False'),
    (dict(pam='yes'), TypeError, 'pam must be a bool'),
    (dict(cam=1), TypeError, 'cam must be a bool'),
    (dict(fusion='concat'), ValueError, 'fusion must be one of'),
    (dict(fusion='sequential', cam=False), ValueError, 'combines two modules'),
    (dict(pam=False, pam_channels=4), ValueError, 'remove pam_channels'),
    (dict(pam_channels=0), ValueError, 'pam_channels must be an int >= 1'),
    (dict(pam_channels=2.), TypeError, 'pam_channels must be an int'),
    (dict(dim=4), ValueError, 'dim must be one of'),
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1'),
])
def test_invalid_arguments(kwargs, error, match):
    kwargs = dict(dict(in_channels=8), **kwargs)
    with pytest.raises(error, match=match):
        DualAttentionBlock(**kwargs)


def test_invalid_inputs():
    block = DualAttentionBlock(8, dim=2)
    with pytest.raises(TypeError, match='expects a torch.Tensor'):
        block([1, 2])
    with pytest.raises(ValueError, match='dim=2 and expects a 4D input'):
        block(torch.randn(1, 8, 5))
    with pytest.raises(ValueError, match='in_channels=8, got an input with 6'):
        block(torch.randn(1, 6, 3, 3))
    with pytest.raises(RuntimeError, match='pam=False'):
        DualAttentionBlock(8, pam=False).position_attention(torch.randn(1, 8, 3, 3))
    with pytest.raises(RuntimeError, match='cam=False'):
        DualAttentionBlock(8, cam=False).channel_attention(torch.randn(1, 8, 3, 3))
    with pytest.raises(ValueError, match='PAM'):
        convert_mmseg_da_state_dict()
    with pytest.raises(KeyError, match='out_project'):
        convert_mmseg_da_state_dict(pam={'out_project.weight': torch.zeros(1)})
    with pytest.raises(KeyError, match='no DAHead'):
        split_mmseg_da_head({'backbone.x': torch.zeros(1)})


# ------------------------------------------------------------ parity with mmseg
@pytest.mark.parametrize('size', [(5, 7), (3, 11), (9, 4)])
@pytest.mark.parametrize('train', [False, True])
def test_parity_with_mmseg(size, train):
    c, d = 16, 4
    pam, cam = randomise(PAM(c, d), 1), randomise(CAM(), 2)
    assert float(pam.gamma.scale.detach()) != 0 and float(cam.gamma.scale.detach()) != 0
    x = torch.randn(2, c, *size)
    sd_pam = convert_mmseg_da_state_dict(pam=pam.state_dict())
    sd_cam = convert_mmseg_da_state_dict(cam=cam.state_dict())
    sd_both = convert_mmseg_da_state_dict(pam.state_dict(), cam.state_dict())
    blocks = dict(pam=DualAttentionBlock(c, d, cam=False),
                  cam=DualAttentionBlock(c, pam=False),
                  sum=DualAttentionBlock(c, d),
                  sequential=DualAttentionBlock(c, d, fusion='sequential'))
    blocks['pam'].load_state_dict(sd_pam)
    blocks['cam'].load_state_dict(sd_cam)
    blocks['sum'].load_state_dict(sd_both)
    blocks['sequential'].load_state_dict(sd_both)
    for m in (pam, cam, *blocks.values()):
        m.train(train)
    ref_pam, ref_cam = pam(x), cam(x)
    assert (ref_pam - x).abs().max() > 1e-2 and (ref_cam - x).abs().max() > 1e-2
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocks['pam'](x), ref_pam, **tol)
    torch.testing.assert_close(blocks['cam'](x), ref_cam, **tol)
    torch.testing.assert_close(blocks['sum'](x), ref_pam + ref_cam - x, **tol)
    torch.testing.assert_close(blocks['sequential'](x), cam(pam(x)), **tol)
    torch.testing.assert_close(blocks['sum'].position_attention(x), ref_pam, **tol)
    torch.testing.assert_close(blocks['sum'].channel_attention(x), ref_cam, **tol)
    # the explicit path too
    torch.testing.assert_close(blocks['pam'].forward_with_attention(x)[0], ref_pam, **tol)
    torch.testing.assert_close(blocks['cam'].forward_with_attention(x)[0], ref_cam, **tol)


def test_parity_with_mmseg_da_head_checkpoint():
    head = DAHead(pam_channels=4, in_channels=8, channels=16, num_classes=3)
    randomise(head.pam, 3), randomise(head.cam, 4)
    sd = {f'decode_head.{k}': v for k, v in head.state_dict().items()}
    pam_sd, cam_sd = split_mmseg_da_head(sd)
    block = DualAttentionBlock(16, 4)
    block.load_state_dict(convert_mmseg_da_state_dict(pam_sd, cam_sd))
    feats = torch.randn(2, 16, 6, 5)  # what pam_in_conv / cam_in_conv hand the modules
    torch.testing.assert_close(block.position_attention(feats), head.pam(feats))
    torch.testing.assert_close(block.channel_attention(feats), head.cam(feats))


# ---------------------------------------------------------------- the equations
def reference(block: DualAttentionBlock, x: torch.Tensor):
    """PAM / CAM written from DANet's equations (einsum on flattened positions)."""
    n, c = x.shape[:2]
    X = x.reshape(n, c, -1)  # (N, C, L)
    P = A = None
    out = X
    if block.pam is not None:
        m = block.pam

        def proj(conv):
            return (torch.einsum('dc,ncl->ndl', conv.weight.reshape(conv.weight.shape[:2]), X)
                    + conv.bias[None, :, None])
        q, k, v = proj(m.query_project), proj(m.key_project), proj(m.value_project)
        P = torch.softmax(torch.einsum('ndi,ndj->nij', q, k), dim=-1)  # no 1/sqrt(d)
        pam_ctx = m.gamma * torch.einsum('nij,ncj->nci', P, v)
    if block.cam is not None:
        def cam(feat):
            E = torch.einsum('ncl,ndl->ncd', feat, feat)
            att = torch.softmax(E.max(dim=-1, keepdim=True).values - E, dim=-1)
            return att, block.cam.gamma * torch.einsum('ncd,ndl->ncl', att, feat)
    if block.pam is not None and block.cam is not None and block.fusion == 'sequential':
        mid = X + pam_ctx
        A, cam_ctx = cam(mid)
        out = mid + cam_ctx
    else:
        if block.pam is not None:
            out = out + pam_ctx
        if block.cam is not None:
            A, cam_ctx = cam(X)
            out = out + cam_ctx
    return out.reshape(x.shape), P, A


@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('variant', ['pam', 'cam', 'sum', 'sequential'])
def test_equations(dim, variant):
    c = 6
    kwargs = dict(pam=dict(cam=False), cam=dict(pam=False), sum={},
                  sequential=dict(fusion='sequential'))[variant]
    block = randomise(DualAttentionBlock(c, dim=dim, **kwargs).double(), 5)
    for size in SIZES[dim]:
        x = torch.randn(2, c, *size, dtype=torch.float64)
        out_ref, P, A = reference(block, x)
        assert (out_ref - x).abs().max() > 1e-3
        torch.testing.assert_close(block(x), out_ref)
        out, maps = block.forward_with_attention(x)
        torch.testing.assert_close(out, out_ref)
        assert set(maps) == {k for k, m in (('pairwise', P), ('channel', A)) if m is not None}
        if P is not None:
            torch.testing.assert_close(maps['pairwise'], P)
        if A is not None:
            torch.testing.assert_close(maps['channel'], A)


def test_default_pam_channels():
    assert DualAttentionBlock(512).pam_channels == 64  # = mmseg's DAHead config
    assert DualAttentionBlock(4).pam_channels == 1
    assert DualAttentionBlock(4, pam=False).pam_channels is None


# ------------------------------------------------ memory-efficient vs explicit
def saved_sizes(fn):
    """Sizes of what autograd saves while ``fn()`` runs, with the map budget at 0 (the
    fused kernel; within the default budget training keeps one map, tests/test_blocks)."""
    from mmctx.models.blocks.attention import map_budget
    sizes = []
    with saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t), \
            map_budget(0):
        out = fn()
    return out, sizes


@pytest.mark.parametrize('kwargs', [dict(cam=False), dict(fusion='sum'),
                                    dict(fusion='sequential')])
def test_memory_efficient_path(kwargs):
    torch.manual_seed(6)  # inputs independent of the tests that ran before
    c, size = 4, (16, 18)
    length = size[0] * size[1]
    block = randomise(DualAttentionBlock(c, 2, **kwargs), 6)
    x = torch.randn(2, c, *size, requires_grad=True)
    target = torch.randn(2, c, *size)

    def run(explicit):
        x.grad = None
        block.zero_grad()
        out, sizes = saved_sizes(
            lambda: block.forward_with_attention(x)[0] if explicit else block(x))
        (out * target).sum().backward()
        grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
        return out.detach(), grads, max(sizes)

    out_eff, grads_eff, biggest_eff = run(False)
    out_exp, grads_exp, biggest_exp = run(True)
    assert biggest_exp >= length * length  # the explicit path keeps the (N, L, L) map
    assert biggest_eff < length * length // 8  # the memory-efficient one keeps none
    torch.testing.assert_close(out_eff, out_exp, rtol=1e-5, atol=1e-5)
    for g_eff, g_exp in zip(grads_eff, grads_exp):
        assert g_exp.abs().max() > 0
        torch.testing.assert_close(g_eff, g_exp, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------- registry, init, training
def test_registry_identity_and_training():
    from mmctx.registry import MODELS
    c = 8
    block = MODELS.build(dict(type='mmctx.DualAttentionBlock', in_channels=c))
    assert isinstance(block, DualAttentionBlock) and block._abbr_ == 'da_block'
    assert block.pam is not None and block.cam is not None and block.pam_channels == 1
    x = torch.randn(2, c, 5, 6)
    assert torch.equal(block(x), x)  # γ = 0: the identity
    assert torch.equal(block.forward_with_attention(x)[0], x)
    block.init_weights()
    assert float(block.pam.gamma.detach()) == 0 and float(block.cam.gamma.detach()) == 0

    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    target = torch.randn_like(x)
    for step in range(2):
        opt.zero_grad()
        ((block(x) - target)**2).mean().backward()
        if step == 1:  # with γ ≠ 0 every parameter receives a gradient ...
            grads = dict(block.named_parameters())
            # ... but the key projection's bias: it adds q_i·b to every logit of query i,
            # which the softmax removes, so its gradient is 0 up to rounding (as in mmseg)
            key_bias = grads.pop('pam.key_project.bias').grad
            key_weight = grads['pam.key_project.weight'].grad
            assert key_bias.abs().max() < 1e-4 * key_weight.abs().max()
            for name, p in grads.items():
                assert p.grad is not None and p.grad.abs().max() > 0, name
        opt.step()
        if step == 0:
            assert float(block.pam.gamma.detach()) != 0 and float(block.cam.gamma.detach()) != 0
            assert not torch.allclose(block(x), x)


def test_gradcheck():
    for dim, size in ((1, (4, )), (2, (2, 3))):
        block = randomise(DualAttentionBlock(3, dim=dim).double(), 7)
        x = torch.randn(1, 3, *size, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(block, (x, ))
        assert torch.autograd.gradcheck(lambda t: block.forward_with_attention(t)[0], (x, ))


def test_bf16_autocast():
    block = randomise(DualAttentionBlock(8, 2), 8)
    with torch.no_grad():  # keep the logits in a range bf16 convs resolve
        for m in (block.pam.query_project, block.pam.key_project):
            m.weight.mul_(0.3)
    x = torch.randn(2, 8, 6, 5)
    ref, ref_maps = block.forward_with_attention(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
        out_exp, maps = block.forward_with_attention(x)
    for o in (out, out_exp):
        assert torch.isfinite(o).all()
        assert (o.float() - ref).norm() / ref.norm() < 3e-2
    assert maps['pairwise'].dtype == maps['channel'].dtype == torch.float32
    torch.testing.assert_close(maps['channel'], ref_maps['channel'])  # fp32 throughout
    assert (maps['pairwise'] - ref_maps['pairwise']).abs().max() < 5e-2


def test_analysis_tools_skip_a_block_without_a_position_map():
    """CAM alone has only a channel map: query_independence leaves it out instead of
    failing; with PAM the position map is read."""
    from mmctx.analysis import query_independence
    torch.manual_seed(0)
    x = [torch.randn(1, 16, 4, 5) for _ in range(2)]
    cam_only = torch.nn.Sequential(DualAttentionBlock(16, pam=False)).eval()
    assert query_independence(cam_only, x, num_queries=4) == []
    both = DualAttentionBlock(16)
    torch.nn.init.constant_(both.pam.gamma, 0.5)
    (row, ) = query_independence(torch.nn.Sequential(both).eval(), x, num_queries=4)
    assert row['terms'] == ['pairwise'] and row['cosine_distance'] > 0


# ------------------------------------------------------------ DualAttentionHead
def test_head_refuses_what_its_branches_cannot_run():
    from mmctx.models.heads import DualAttentionHead
    kwargs = dict(in_channels=16, channels=16, num_classes=3, pam_channels=4)
    with pytest.raises(ValueError, match='its block must have both modules'):
        DualAttentionHead(block=dict(type='mmctx.DualAttentionBlock', pam=True, cam=False),
                          **kwargs)
    with pytest.raises(ValueError, match=r'sets pam_channels=8.*pam_channels=4 is expected'):
        DualAttentionHead(block=dict(type='mmctx.DualAttentionBlock', pam_channels=8), **kwargs)
    head = DualAttentionHead(**kwargs)
    assert not hasattr(head, 'pam') and head.block is head.da_block
    assert head.block.pam_channels == 4
