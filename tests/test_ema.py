"""EMABlock (EMANet's EM attention unit) against a re-statement of the official
equations, mmseg's EMAHead with copied weights, and under 2-process DDP."""
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from mmctx.models.blocks.ema import EMABlock
from mmctx.registry import MODELS

from .conftest import bn, conv1x1

PRESETS = ('official', 'mmseg')
SHAPES = {1: (2, 16, 7), 2: (2, 16, 5, 6), 3: (2, 16, 3, 4, 5)}


def randomized(block, seed=0):
    """Non-trivial biases, norm affine parameters and running statistics (the convs
    keep their Kaiming weights, which give well-spread responsibilities)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3
                        + (1. if name.endswith('bn.weight') else 0.))
        for name, b in block.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.2)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)
    return block


# --- the re-statement of the equations (REFERENCE-2 §A.5) ---------------------------

def restated_em(mid, bases, num_stages, preset):
    """Per sample: T times z = softmax_K(Xᵀμ); z̄ = z / Σ_L z; μ = ℓ2_C(X z̄).

    official: z / (1e-6 + Σ_L z), μ / (1e-6 + ‖μ‖); mmseg: the same with F.normalize's
    max(·, 1e-12) in place of 1e-6 + ·. Returns μ (N, C, K), z and z̄ (N, L, K).
    """
    mus, zs, zbars = [], [], []
    for s in range(mid.shape[0]):
        X = mid[s].reshape(mid.shape[1], -1)  # (C, L)
        mu = bases[0].to(X.dtype)  # (C, K)
        for _ in range(num_stages):
            logits = X.T @ mu  # (L, K)
            e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            z = e / e.sum(dim=1, keepdim=True)  # over the K bases
            mass = z.sum(dim=0)  # (K, ): over the positions
            zbar = z / (1e-6 + mass) if preset == 'official' else z / mass.clamp(min=1e-12)
            mu = X @ zbar  # (C, K)
            length = torch.sqrt((mu ** 2).sum(dim=0))  # (K, )
            mu = mu / (1e-6 + length) if preset == 'official' else \
                mu / length.clamp(min=1e-12)
        mus.append(mu)
        zs.append(z)
        zbars.append(zbar)
    return torch.stack(mus), torch.stack(zs), torch.stack(zbars)


def restated_unit(block, x, bases=None):
    """EMAU: ReLU(x + BN(conv2(ReLU(μ zᵀ)))), the EM on conv1(x). Returns (out, μ)."""
    n, c = x.shape[:2]
    mid = conv1x1(x, block.ema_mid_conv.conv)
    bases = block.bases if bases is None else bases
    mu, z, _ = restated_em(mid, bases, block.num_stages, block.preset)
    recon = torch.einsum('nck,nlk->ncl', mu, z).reshape(x.shape)
    out = conv1x1(torch.relu(recon), block.ema_out_conv.conv)
    if block.ema_out_conv.with_norm:
        out = bn(out, block.ema_out_conv.norm)
    return torch.relu(x + out), mu


def restated_update(bases, mu_all, preset, momentum=0.1):
    """official ``train.py``: mu ← EM_MOM·mu + (1 − EM_MOM)·mean, EM_MOM = 0.9, no
    re-normalisation; mmseg: (1 − m)·bases + m·ℓ2(mean), m = 0.1. ``mu_all`` holds the
    final μ of every sample of every rank."""
    mean = mu_all.mean(dim=0, keepdim=True)
    if preset == 'official':
        em_mom = 1 - momentum
        return bases * em_mom + mean * (1 - em_mom)
    mean = mean / torch.sqrt((mean ** 2).sum(dim=1, keepdim=True)).clamp(min=1e-12)
    return (1 - momentum) * bases + momentum * mean


# --- 1. parity with the re-statement ------------------------------------------------

@pytest.mark.parametrize('preset', PRESETS)
@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('train', [False, True])
def test_matches_the_restated_equations(preset, dim, train):
    torch.manual_seed(0)
    block = randomized(EMABlock(16, num_bases=5, num_stages=3, preset=preset,
                                dim=dim)).double().train(train)
    x = torch.randn(*SHAPES[dim], dtype=torch.double)
    before = block.bases.clone()
    expected, mu = restated_unit(block, x, before)
    torch.testing.assert_close(block(x), expected)
    if train:  # one step of the moving average from the batch's final bases
        torch.testing.assert_close(block.bases, restated_update(before, mu, preset))
        assert not torch.allclose(block.bases, before)
    else:
        assert torch.equal(block.bases, before)


def test_presets_differ_in_the_update_normalisation():
    """official keeps the mean of unit bases as it is (norm < 1), mmseg re-normalises."""
    torch.manual_seed(1)
    blocks = {p: EMABlock(16, num_bases=4, preset=p) for p in PRESETS}
    blocks['mmseg'].load_state_dict(blocks['official'].state_dict())
    x = torch.randn(4, 16, 5, 5) * torch.rand(4, 1, 1, 1) * 3
    for block in blocks.values():
        block(x)
    norms = {p: b.bases.norm(dim=1) for p, b in blocks.items()}
    assert (norms['official'] < 1 - 1e-4).all()
    # mmseg: the mix of two unit vectors, norm in (0.8, 1] whatever their angle
    assert (norms['mmseg'] > norms['official']).all()


# --- 2. parity with mmseg's EMAHead / EMAModule --------------------------------------

def to_block_state(head_state):
    """mmseg EMAHead keys → EMABlock keys (the mapping of the module docstring)."""
    out = {}
    for key, value in head_state.items():
        if key == 'ema_module.bases':
            out['bases'] = value
        elif key.startswith(('ema_mid_conv.', 'ema_out_conv.')):
            out[key] = value
    return out


@pytest.mark.parametrize('train', [False, True])
def test_mmseg_ema_head_with_the_block_in_its_middle(train):
    """EMAHead = ema_in_conv → [EMABlock] → bottleneck → conv_cat → cls_seg."""
    from mmseg.models.decode_heads.ema_head import EMAHead
    torch.manual_seed(2)
    head = EMAHead(ema_channels=16, num_bases=6, num_stages=3, momentum=0.1,
                   in_channels=8, channels=12, num_classes=3, dropout_ratio=0.,
                   norm_cfg=dict(type='BN'))
    randomized(head, seed=3)
    block = EMABlock(16, num_bases=6, num_stages=3, momentum=0.1, preset='mmseg')
    block.load_state_dict(to_block_state(head.state_dict()), strict=True)
    head.train(train)
    block.train(train)
    assert not block.ema_mid_conv.conv.weight.requires_grad  # frozen as mmseg's
    x = torch.randn(2, 8, 9, 7)
    before = block.bases.clone()
    mid = block(head.ema_in_conv(x))
    ours = head.cls_seg(head.conv_cat(torch.cat([x, head.bottleneck(mid)], dim=1)))
    theirs = head([x])
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(block.bases, head.ema_module.bases)
    assert torch.allclose(block.bases, before) is not train  # updated in training only


def to_context_head_state(head_state):
    """mmseg EMAHead keys → ContextHead(block=EMABlock, block_channels=ema_channels)."""
    rename = {'ema_in_conv.': 'convs.0.', 'bottleneck.': 'convs.1.'}
    out = {f'ema_block.{k}': v for k, v in to_block_state(head_state).items()}
    for key, value in head_state.items():
        prefix = next((p for p in rename if key.startswith(p)), None)
        if prefix is not None:
            out[rename[prefix] + key[len(prefix):]] = value
        elif key.startswith(('conv_cat.', 'conv_seg.')):
            out[key] = value
    return out


@pytest.mark.parametrize('train', [False, True])
def test_context_head_reproduces_mmseg_ema_head(train):
    from mmseg.models.decode_heads.ema_head import EMAHead
    torch.manual_seed(13)
    common = dict(in_channels=8, channels=12, num_classes=3, dropout_ratio=0.,
                  norm_cfg=dict(type='BN'), concat_input=True)
    head = randomized(EMAHead(ema_channels=16, num_bases=6, num_stages=3, momentum=0.1,
                              **common), seed=14)
    ours = MODELS.build(dict(
        type='mmctx.ContextHead', block_channels=16, **common,
        block=dict(type='mmctx.EMABlock', num_bases=6, num_stages=3, momentum=0.1,
                   preset='mmseg', norm_cfg=dict(type='BN'))))
    ours.load_state_dict(to_context_head_state(head.state_dict()), strict=True)
    head.train(train)
    ours.train(train)
    x = torch.randn(2, 8, 7, 9)
    torch.testing.assert_close(ours([x]), head([x]))
    torch.testing.assert_close(ours.ema_block.bases, head.ema_module.bases)


@pytest.mark.parametrize('train', [False, True])
def test_mmseg_ema_module_alone(train):
    """The EM part alone: mmseg's reconstruction is the block's pre-fusion ``y``."""
    from mmseg.models.decode_heads.ema_head import EMAModule
    torch.manual_seed(4)
    module = EMAModule(16, 5, 2, 0.1).train(train)
    block = EMABlock(16, num_bases=5, num_stages=2, preset='mmseg').train(train)
    with torch.no_grad():
        block.bases.copy_(module.bases)
    feats = torch.randn(3, 16, 4, 6)
    mid = block.ema_mid_conv(feats).reshape(3, 16, -1)
    recon = module(mid.reshape(3, 16, 4, 6))
    f = {'value': mid}
    gather = block.project(f)
    y = torch.bmm(block.reproject(f, gather), block.describe(f, gather))  # (N, L, C)
    torch.testing.assert_close(y.transpose(1, 2).reshape(3, 16, 4, 6), recon)
    torch.testing.assert_close(block.bases, module.bases)


# --- 3. ranks, registry, arguments ----------------------------------------------------

@pytest.mark.parametrize('dim', [1, 2, 3])
def test_registry_builds_a_working_block_from_in_channels(dim):
    torch.manual_seed(5)
    block = MODELS.build(dict(type='mmctx.EMABlock', in_channels=32, dim=dim))
    assert type(block) is EMABlock
    assert (block.num_bases, block.num_stages, block.momentum, block.preset) == \
        (64, 3, 0.1, 'official')
    assert block.bases.shape == (1, 32, 64)
    block.double()
    x = torch.randn(2, 32, *SHAPES[dim][2:], dtype=torch.double).abs()  # ReLU'd, as EMANet's
    expected, _ = restated_unit(block, x)
    torch.testing.assert_close(block(x), expected)
    assert not torch.allclose(block(x), x)  # not an identity at init (no zero-init)


def test_init_as_the_references():
    torch.manual_seed(6)
    c, k = 256, 64
    official, mmseg = EMABlock(c, num_bases=k), EMABlock(c, num_bases=k, preset='mmseg')
    for block in (official, mmseg):
        torch.testing.assert_close(block.bases.norm(dim=1), torch.ones(1, k), atol=1e-5,
                                   rtol=0)
        for conv in (block.ema_mid_conv.conv, block.ema_out_conv.conv):  # N(0, √(2/C))
            assert abs(conv.weight.std().item() / math.sqrt(2 / c) - 1) < 0.03
        assert block.ema_out_conv.conv.bias is None
        norm = block.ema_out_conv.norm
        assert torch.equal(norm.weight, torch.ones(c)) and torch.equal(norm.bias,
                                                                      torch.zeros(c))
    bias = official.ema_mid_conv.conv.bias  # PyTorch's default: U(±1/√C)
    assert bias.abs().max() <= 1 / math.sqrt(c) and bias.abs().min() > 0
    assert torch.equal(mmseg.ema_mid_conv.conv.bias, torch.zeros(c))  # mmcv kaiming_init
    # init_weights re-draws the bases and keeps ema_mid_conv frozen
    before = official.bases.clone()
    official.init_weights()
    assert not torch.allclose(official.bases, before)
    assert not any(p.requires_grad for p in official.ema_mid_conv.parameters())


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(num_bases=0), ValueError, 'num_bases must be an int >= 1, got 0'),
    (dict(num_bases=4.0), TypeError, 'num_bases must be an int >= 1, got float'),
    (dict(num_stages=0), ValueError, 'num_stages must be an int >= 1'),
    (dict(momentum=1.5), ValueError, r'momentum must be in \[0, 1\].*got 1.5'),
    (dict(momentum='0.1'), TypeError, r'momentum must be a number in \[0, 1\].*str'),
    (dict(momentum=True), TypeError, 'momentum must be a number'),
    (dict(preset='paper'), ValueError, r"preset must be one of \['official', 'mmseg'\], "
                                       r"got 'paper'"),
    (dict(norm_cfg='BN'), TypeError, 'norm_cfg must be None or a dict'),
    (dict(dim=4), ValueError, r'dim must be one of \[1, 2, 3\], got 4'),
])
def test_bad_arguments(kwargs, error, match):
    kwargs = dict(dict(in_channels=16), **kwargs)
    with pytest.raises(error, match=match):
        EMABlock(**kwargs)


def test_wrong_input_is_refused():
    block = EMABlock(16)
    with pytest.raises(ValueError, match='in_channels=16, got an input with 8'):
        block(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r'dim=2 and expects a 4D input'):
        block(torch.randn(1, 16, 4))
    with pytest.raises(TypeError, match='expects a torch.Tensor'):
        block([1.])


def test_eval_is_deterministic_and_only_training_updates():
    torch.manual_seed(7)
    block = EMABlock(16, num_bases=4).eval()
    x = torch.randn(2, 16, 5, 5)
    b0 = block.bases.clone()
    assert torch.equal(block(x), block(x)) and torch.equal(block.bases, b0)
    block.train()
    block.assignments(x)  # analysis: never updates
    with block.frozen_bases():
        block(x)
    assert torch.equal(block.bases, b0)
    block(x)
    b1 = block.bases.clone()
    assert not torch.allclose(b1, b0)
    fixed = EMABlock(16, num_bases=4, momentum=0.).train()
    f0 = fixed.bases.clone()
    fixed(x)
    assert torch.equal(fixed.bases, f0)


# --- effective map ------------------------------------------------------------------

@pytest.mark.parametrize('preset', PRESETS)
def test_effective_map_is_z_zbar_t_and_its_rows_sum_to_one(preset):
    torch.manual_seed(8)
    k = 6
    block = randomized(EMABlock(16, num_bases=k, preset=preset)).double().eval()
    x = torch.randn(2, 16, 4, 5, dtype=torch.double)
    out, maps = block.forward_with_attention(x)
    mid = conv1x1(x, block.ema_mid_conv.conv)
    _, z, zbar = restated_em(mid, block.bases, block.num_stages, preset)
    torch.testing.assert_close(maps['pairwise'], z @ zbar.transpose(1, 2))
    rows = maps['pairwise'].sum(-1)
    assert (rows <= 1 + 1e-12).all() and (rows >= 1 - k * 1e-6).all()
    torch.testing.assert_close(out, block(x))
    # the output from the assignments: μ = ℓ2_C(x̃ z̄), recon = μ zᵀ
    a = block.assignments(x)
    mu = F.normalize(mid.reshape(2, 16, -1) @ a['gather'].transpose(1, 2), dim=1)
    recon = (mu @ a['distribute'].transpose(1, 2)).reshape(x.shape)
    torch.testing.assert_close(block.fuse(x, recon), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('preset', PRESETS)
def test_row_sums_with_a_basis_that_gets_no_mass(preset):
    """A basis opposite to every position: Σ_L z ~ 1e-7. official's 1e-6 eps leaves
    the rows short of 1 (by at most K·1e-6), mmseg's normalisation does not."""
    k = 2
    block = EMABlock(4, num_bases=k, num_stages=1, preset=preset).double().eval()
    v = torch.tensor([8., 0., 0., 0.], dtype=torch.double)
    with torch.no_grad():
        block.ema_mid_conv.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        block.ema_mid_conv.conv.bias.zero_()
        block.bases.copy_(torch.stack([v, -v], dim=1)[None] / 8)
    x = v.view(1, 4, 1, 1).expand(1, 4, 2, 2).clone()
    rows = block.forward_with_attention(x)[1]['pairwise'].sum(-1)
    if preset == 'official':
        assert (rows < 1 - 1e-8).all() and (rows >= 1 - k * 1e-6).all()
    else:
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-12, rtol=0)


# --- 4. gradients, precision ----------------------------------------------------------

def test_gradcheck_through_the_output_conv_and_norm():
    """fp64 gradcheck w.r.t. ema_out_conv's weight and the BN affine (batch statistics);
    the EM is under no_grad, so the input is not a gradcheck input (its numerical
    derivative includes the EM's, which autograd deliberately drops)."""
    torch.manual_seed(9)
    block = randomized(EMABlock(4, num_bases=3, num_stages=2, momentum=0.)).double()
    block.train()  # momentum 0: the bases do not move between gradcheck's evaluations
    x = torch.randn(2, 4, 3, 3, dtype=torch.double)
    names = ['ema_out_conv.conv.weight', 'ema_out_conv.bn.weight', 'ema_out_conv.bn.bias']
    params = dict(block.named_parameters())
    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)

    def fn(*tensors):
        return torch.func.functional_call(block, dict(zip(names, tensors)), (x, ))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_gradients_stop_at_the_em():
    torch.manual_seed(10)
    block = randomized(EMABlock(8, num_bases=3)).train()
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = block(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    # the input's gradient is the identity path's: ∂ReLU(x + const)/∂x
    torch.testing.assert_close(x.grad, grad_out * (out > 0))
    for name, p in block.named_parameters():
        if name.startswith('ema_mid_conv.'):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('preset', PRESETS)
def test_bf16_autocast_runs_the_em_in_fp32(preset):
    torch.manual_seed(11)
    block = randomized(EMABlock(32, num_bases=8, preset=preset))
    x = torch.randn(2, 32, 6, 6).abs()
    before = block.bases.clone()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        block.eval()
        mid = block.ema_mid_conv(x)
        assert mid.dtype == torch.bfloat16  # autocast is on for the convs
        a = block.assignments(x)
        out = block(x)
        block.train()
        block(x)
    assert torch.isfinite(out).all() and out.dtype == torch.float32
    assert block.bases.dtype == torch.float32
    assert a['gather'].dtype == a['distribute'].dtype == torch.float32
    mu, z, zbar = restated_em(mid.double(), before.double(), block.num_stages, preset)
    # an EM in bf16 would be off by ~1e-2
    torch.testing.assert_close(a['distribute'].double(), z, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a['gather'].double(), zbar.transpose(1, 2), atol=1e-6,
                               rtol=1e-4)
    torch.testing.assert_close(block.bases.double(), restated_update(before.double(), mu,
                                                                     preset),
                               atol=1e-6, rtol=1e-5)
    block.eval()
    with torch.no_grad():
        block.bases.copy_(before)
    ref = block(x)  # fp32 throughout: only the convs' bf16 rounding differs
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


# --- 5. DDP: the bases stay identical on every rank -----------------------------------

DDP_STEPS, DDP_SHAPE = 2, (2, 8, 3, 4)


def ddp_block(preset):
    torch.manual_seed(12)  # the same init on every rank (mmengine syncs the seed)
    return EMABlock(8, num_bases=4, num_stages=2, preset=preset)


def ddp_data(rank, step):
    gen = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(*DDP_SHAPE, generator=gen) + rank  # different data per rank


def _ddp_worker(rank, world_size, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world_size)
    try:
        results = {}
        for preset in PRESETS:
            block = ddp_block(preset).train()
            # as mmengine wraps: no buffer broadcast, no unused-parameter search
            model = DistributedDataParallel(block, broadcast_buffers=False)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            history = [block.bases.clone()]
            for step in range(DDP_STEPS):
                opt.zero_grad()
                model(ddp_data(rank, step)).square().mean().backward()
                opt.step()
                history.append(block.bases.clone())
            results[preset] = history
        torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_keep_identical_bases(tmp_path):
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    for preset in PRESETS:
        h0, h1 = ranks[0][preset], ranks[1][preset]
        for step in range(DDP_STEPS + 1):
            assert torch.equal(h0[step], h1[step]), (preset, step)
        # the expected: the global batch mean (both ranks' samples), step after step;
        # ema_mid_conv is frozen, so the EM's input does not change between steps
        block = ddp_block(preset)
        torch.testing.assert_close(h0[0], block.bases)
        block.double()
        bases = block.bases.clone()
        for step in range(DDP_STEPS):
            x = torch.cat([ddp_data(r, step) for r in range(2)])
            _, mu = restated_unit(block, x.double(), bases)
            bases = restated_update(bases, mu, preset)
            torch.testing.assert_close(h0[step + 1].double(), bases, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(h0[1], h0[0])
