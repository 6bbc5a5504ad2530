"""Attention analysis tools: maps, query independence, term shares (issue 5 §3).

Unit tests on random blocks, then the three CLIs on tiny ContextShapes checkpoints
(DNL and unary-only, a few iterations of tools/train.py).
"""
import glob
import importlib.util
import math
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmctx.analysis import (collect_attention, context_blocks, effective_map,
                            mean_cosine_distance, mean_js_divergence, query_independence,
                            register_term_contributions, term_contributions, term_shares)
from mmctx.analysis.terms import TERM_CONTRIBUTIONS
from mmctx.models.blocks import (DisentangledNonLocalBlock, GlobalContextBlock,
                                 NonLocalBlock, PairwiseNonLocalBlock,
                                 SimplifiedNonLocalBlock, SqueezeExcitationBlock,
                                 UnaryNonLocalBlock)

from .conftest import ROOT, data_root_options, python


def randomized(block: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and BN statistics (a new block is the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for name, b in block.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return block.eval()


BN = dict(type='BN')
BLOCKS = {
    'dnl': lambda: DisentangledNonLocalBlock(8, norm_cfg=BN),
    'dnl_official_det': lambda: DisentangledNonLocalBlock(8, preset='official_det'),
    'pairwise': lambda: PairwiseNonLocalBlock(8, norm_cfg=BN),
    'unary': lambda: UnaryNonLocalBlock(8, norm_cfg=BN),
    'nl_subsample': lambda: NonLocalBlock(8, sub_sample=True),
    'nl_dot': lambda: NonLocalBlock(8, mode='dot_product'),
    'gc': lambda: GlobalContextBlock(8, ratio=0.5),
    'snl': lambda: SimplifiedNonLocalBlock(8),
    'se': lambda: SqueezeExcitationBlock(8, ratio=0.5),
}


# ------------------------------------------------------------------------ metrics
def test_distances_match_a_hand_computation_and_are_exactly_zero_for_equal_rows():
    rows = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) + 0.01
    pairs = [(i, j) for i in range(5) for j in range(5)]  # GCNet: 1/K² Σ_i Σ_j
    cos = np.mean([1 - float(F.cosine_similarity(rows[i], rows[j], 0)) for i, j in pairs])
    p = rows / rows.sum(1, keepdim=True)

    def kl(a, b):
        return float((a * torch.log2(a / b)).sum())

    js = np.mean([0.5 * kl(p[i], (p[i] + p[j]) / 2) + 0.5 * kl(p[j], (p[i] + p[j]) / 2)
                  for i, j in pairs])
    assert mean_cosine_distance(rows) == pytest.approx(cos, rel=1e-5)
    assert mean_js_divergence(rows) == pytest.approx(js, rel=1e-5)
    same = torch.rand(1, 999).expand(40, -1) / 3  # cos of equal rows rounds below 1
    assert mean_cosine_distance(same) == 0.0 and mean_js_divergence(same) == 0.0
    assert math.isnan(mean_js_divergence(rows - 0.5))  # not distributions
    with pytest.raises(ValueError, match='at least 2 rows'):
        mean_cosine_distance(rows[:1])


# ------------------------------------------------------------ hooks on random blocks
@pytest.mark.parametrize('name', list(BLOCKS))
def test_collect_attention_records_the_explicit_path(name):
    block = randomized(BLOCKS[name]())
    model = nn.Sequential(nn.Conv2d(8, 8, 1), block)
    x = torch.randn(2, 8, 6, 5)
    rec = collect_attention(model, x, with_features=True)['1']
    assert rec['shape'] == (6, 5)
    _, maps = block.forward_with_attention(model[0](x))
    assert set(maps) == {k for k in rec if k in ('pairwise', 'unary')}
    for term, m in maps.items():
        torch.testing.assert_close(rec[term], m)
    if 'pairwise' in rec:
        assert rec['pairwise'].shape == (2, 30, 30 if name != 'nl_subsample' else 6)
        if name != 'nl_dot':  # softmax modes: rows are distributions
            torch.testing.assert_close(rec['pairwise'].sum(-1), torch.ones(2, 30))
    if name == 'nl_subsample':
        assert rec['key_shape'] == (3, 2)
    if 'unary' in rec:
        assert rec['unary'].shape == (2, 1, 30)
    if name == 'se':  # average pooling: uniform, not learned
        torch.testing.assert_close(rec['unary'], torch.full((2, 1, 30), 1 / 30))


@pytest.mark.parametrize('name', [n for n in BLOCKS if n != 'se'])
def test_term_contributions_add_up_to_the_block_output(name):
    """out = x + Σ_t c_t + b with b the same at every position (bias of conv_out+BN)."""
    block = randomized(BLOCKS[name]())
    x = torch.randn(2, 8, 6, 5)
    terms = term_contributions(block, x)
    rest = block(x) - x - sum(terms.values())
    torch.testing.assert_close(rest, rest[..., :1, :1].expand_as(rest), atol=1e-5, rtol=0)
    if getattr(block, 'value', 'reduced') == 'full' or isinstance(block, GlobalContextBlock):
        torch.testing.assert_close(rest, torch.zeros_like(rest), atol=1e-5, rtol=0)


def test_dnl_term_contributions_by_hand():
    block = randomized(BLOCKS['dnl']())
    x = torch.randn(1, 8, 4, 5)
    c = term_contributions(block, x)
    xf = x.flatten(2)  # (1, C, L)

    def conv(layer, t):  # 1×1 conv on (1, C, L)
        return torch.einsum('oc,ncl->nol', layer.weight[:, :, 0, 0], t) + layer.bias[:, None]

    q, k, v = conv(block.theta, xf), conv(block.phi, xf), conv(block.g, xf)
    q, k = q - q.mean(-1, keepdim=True), k - k.mean(-1, keepdim=True)
    attn = torch.softmax(torch.einsum('ndi,ndj->nij', q, k) / 2 / 0.05, dim=-1)  # √4 = 2
    unary = torch.softmax(conv(block.conv_mask, xf), dim=-1)  # (1, 1, L)
    y_pair = torch.einsum('nij,ndj->ndi', attn, v)
    y_unary = torch.einsum('nj,ndj->nd', unary[:, 0], v)[..., None].expand_as(y_pair)
    bn = block.conv_out.norm
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None]
    w = block.conv_out.conv.weight[:, :, 0, 0]
    for term, y in (('pairwise', y_pair), ('unary', y_unary)):
        hand = scale * torch.einsum('oc,ncl->nol', w, y)  # the linear part of conv+BN
        torch.testing.assert_close(c[term].flatten(2), hand, atol=1e-5, rtol=1e-4)


def test_query_independence_is_exactly_zero_for_query_independent_blocks():
    x = [torch.randn(1, 8, 7, 6) for _ in range(2)]
    for name in ('unary', 'gc', 'snl', 'se', 'dnl', 'pairwise'):
        model = nn.Sequential(randomized(BLOCKS[name]()))
        (row, ) = query_independence(model, x, num_queries=12)
        assert row['num_images'] == 2 and row['num_queries'] == 12
        assert row['input_cosine_distance'] > 0.1
        if name in ('dnl', 'pairwise'):
            assert row['cosine_distance'] > 0 and row['pairwise_cosine_distance'] > 0
            assert 0 < row['js_divergence'] <= 1
        else:
            assert row['cosine_distance'] == 0.0 and row['js_divergence'] == 0.0
            assert row['pairwise_cosine_distance'] is None
            if name != 'se':  # SE's "output" is a gate
                assert row['feature_cosine_distance'] == 0.0


def test_query_independence_flags_blocks_still_at_their_identity_init(tmp_path):
    """A new DNL block is the identity (zero-init conv_out): its maps are those of
    random projections, and the report says so instead of presenting a finding."""
    from mmctx.analysis import write_query_independence
    x = [torch.randn(1, 8, 7, 6) for _ in range(2)]
    fresh = nn.Sequential(DisentangledNonLocalBlock(8, norm_cfg=BN).eval())
    trained = nn.Sequential(randomized(DisentangledNonLocalBlock(8, norm_cfg=BN)))
    (new, ) = query_independence(fresh, x, num_queries=12)
    (old, ) = query_independence(trained, x, num_queries=12)
    assert new['residual'] == 0.0 and new['near_identity'] and new['cosine_distance'] > 0
    assert old['residual'] > 0.01 and not old['near_identity']
    md, _ = write_query_independence([dict(new, block='fresh'), dict(old, block='old')],
                                     str(tmp_path))
    text = open(md).read()
    assert '⚠ **Still ≈ identity** (fresh)' in text and 'old, ' not in text


def test_effective_map_of_a_gated_dnl_block():
    block = randomized(BLOCKS['dnl_official_det']())
    rec = {'pairwise': torch.rand(1, 3, 3), 'unary': torch.rand(1, 1, 3)}
    torch.testing.assert_close(effective_map(block, rec),
                               block.gamma.detach() * rec['pairwise'] + rec['unary'])


def test_term_shares_registry_takes_new_block_types():
    class TwoTerms(GlobalContextBlock):  # stand-in for e.g. LESA: unary + binary terms
        pass

    @register_term_contributions(TwoTerms)
    def _terms(block, x):
        return {'unary': x * 1., 'binary': x * 3.}

    try:
        model = nn.Sequential(TwoTerms(8, ratio=0.5).eval())
        (row, ) = term_shares(model, [torch.randn(1, 8, 5, 5)])
        assert row['shares'] == pytest.approx({'unary': 0.25, 'binary': 0.75})
    finally:
        del TERM_CONTRIBUTIONS[TwoTerms]
    assert term_shares(nn.Sequential(GlobalContextBlock(8, ratio=0.5)),
                       [torch.randn(1, 8, 5, 5)]) == []  # one term: nothing to share


def test_a_model_without_mmctx_blocks_is_refused():
    with pytest.raises(ValueError, match='has no mmctx context block'):
        context_blocks(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(TypeError, match='no term-contribution function'):
        term_contributions(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 2, 2))


# ------------------------------------------------------- CLIs on trained checkpoints
def contextshapes_config(prefix: str) -> str:
    (path, ) = glob.glob(osp.join(ROOT, 'configs', 'contextshapes',
                                  f'{prefix}_*contextshapes-global.py'))
    return path


ITERS = 3


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Tiny ContextShapes data and DNL / unary-only checkpoints (trained concurrently)."""
    from mmctx.datasets import generate_context_shapes
    tmp = tmp_path_factory.mktemp('analysis')
    root = generate_context_shapes(str(tmp / 'data'), 'global', num_train=4, num_val=2)
    procs, out = {}, {}
    for name in ('dnl', 'dnl-unary'):
        work_dir = str(tmp / name)
        cmd = [sys.executable, 'tools/train.py', contextshapes_config(name), '--work-dir',
               work_dir, '--cfg-options', *data_root_options(root),
               f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS}',
               f'default_hooks.checkpoint.interval={ITERS}', 'train_dataloader.batch_size=2',
               f'param_scheduler.0.end={ITERS}']
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True,
                                       env=dict(__import__('os').environ, PYTHONPATH=ROOT))
        out[name] = (contextshapes_config(name), osp.join(work_dir, f'iter_{ITERS}.pth'))
    for name, proc in procs.items():
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f'training {name} failed:\n{log[-4000:]}'
    out['root'] = root
    out['image'] = osp.join(root, 'img_dir', 'val', '00000.png')
    return out


def cli(name: str):
    """The CLI module tools/analysis/{name}.py, to call its main() in-process."""
    spec = importlib.util.spec_from_file_location(
        f'analysis_{name}', osp.join(ROOT, 'tools', 'analysis', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(md: str) -> list:
    """Data rows of the markdown table(s): lines starting with '|', minus header/rule."""
    lines = [line for line in md.splitlines() if line.startswith('|')]
    return [line for line in lines[2:]]


def block_input(model, image):
    """The input of the model's only mmctx block for one image (a forward hook)."""
    from mmctx.analysis import prepare_inputs
    (block, ) = context_blocks(model).values()
    seen = []
    handle = block.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    inputs, samples = prepare_inputs(model, image)
    with torch.no_grad():
        model(inputs, samples, mode='tensor')
    handle.remove()
    return block, seen[0], (inputs, samples)


def test_attention_maps_cli_and_hand_computed_maps(trained, tmp_path):
    from PIL import Image

    from mmctx.analysis import load_segmentor
    config, ckpt = trained['dnl']
    out = python('tools/analysis/attention_maps.py', config, ckpt, trained['image'],
                 '--query', '10', '12', '--query', '40', '30', '--out-dir',
                 str(tmp_path)).stdout
    assert 'decode_head.dnl_block (DisentangledNonLocalBlock)' in out
    md = open(tmp_path / 'attention_maps.md').read()
    rows = table_rows(md)
    assert len(rows) == 3  # pairwise @ 2 queries + the unary map
    # 48×48 image, stride-2 features: (10, 12) → cell (5, 6)
    assert '| pairwise | (10, 12) | (5, 6) |' in rows[0] and '| unary |' in rows[2]
    width, height = Image.open(tmp_path / 'attention_maps.png').size
    assert width >= 600 and height >= 150

    # the recorded maps are the block's softmax maps, computed here from its weights
    model = load_segmentor(config, ckpt)
    block, x, prepared = block_input(model, trained['image'])
    rec = collect_attention(model, *prepared)['decode_head.dnl_block']
    xf = x.flatten(2)

    def conv(layer):
        return torch.einsum('oc,ncl->nol', layer.weight[:, :, 0, 0], xf) + layer.bias[:, None]

    q, k = conv(block.theta), conv(block.phi)
    q, k = q - q.mean(-1, keepdim=True), k - k.mean(-1, keepdim=True)
    scale = 1 / math.sqrt(q.shape[1]) / 0.05
    pairwise = torch.softmax(torch.einsum('ndi,ndj->nij', q, k) * scale, dim=-1)
    torch.testing.assert_close(rec['pairwise'], pairwise, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(rec['pairwise'].sum(-1), torch.ones(1, 24 * 24))
    torch.testing.assert_close(rec['unary'], torch.softmax(conv(block.conv_mask), -1))
    assert rec['shape'] == (24, 24)


def test_bad_input(trained, tmp_path, capsys):
    config, ckpt = trained['dnl']
    main = cli('attention_maps').main
    assert main([config, ckpt, trained['image'], '--query', '48', '3', '--out-dir',
                 str(tmp_path)]) == 2
    assert 'query (y=48, x=3) is outside the 48×48 image' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([config, ckpt, 'missing.png', '--query', '1', '1', '--out-dir', str(tmp_path)])
    assert 'no such image file: missing.png' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([config, 'missing.pth', trained['image'], '--query', '1', '1', '--out-dir',
              str(tmp_path)])
    assert 'no such checkpoint file: missing.pth' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a checkpoint of a config without blocks
        cli('query_independence').main([contextshapes_config('baseline'), ckpt, '--images',
                                        trained['image'], '--out-dir', str(tmp_path)])
    assert e.value.code == 2 and 'has no mmctx context block' in capsys.readouterr().err


def test_query_independence_cli(trained, tmp_path, capsys):
    main = cli('query_independence').main
    for name in ('dnl-unary', 'dnl'):
        config, ckpt = trained[name]
        out_dir = tmp_path / name
        assert main([config, ckpt, '--split', 'val', '--cfg-options',
                     f'val_dataloader.dataset.data_root={trained["root"]}',
                     '--num-queries', '16', '--out-dir', str(out_dir)]) == 0
        md = open(out_dir / 'query_independence.md').read()
        (row, ) = table_rows(md)
        cells = [c.strip() for c in row.strip('|').split('|')]
        (att_cos, att_js, pair_cos, _, input_cos, output_cos, residual, queries,
         images) = cells[3:]
        # a tiny run leaves the block ≈ identity: the report must say so
        assert ('Still ≈ identity' in md) == (float(residual.rstrip(' ⚠')) < 0.01)
        assert images == '2' and queries == '16' and float(input_cos) > 0
        if name == 'dnl-unary':  # query-independent: exactly 0
            assert cells[1] == 'UnaryNonLocalBlock'
            assert att_cos == att_js == output_cos == '0' and pair_cos == '–'
        else:
            assert float(pair_cos) > 0 and float(att_cos) > 0
        assert osp.getsize(out_dir / 'query_independence.png') > 1000
    assert '[query independence] image 2/2' in capsys.readouterr().out


def test_term_shares_cli_matches_a_hand_computation(trained, tmp_path):
    from mmctx.analysis import load_segmentor
    config, ckpt = trained['dnl']
    main = cli('term_shares').main
    pattern = osp.join(trained['root'], 'img_dir', 'val', '*.png')
    assert main([config, ckpt, '--images', pattern, '--out-dir', str(tmp_path)]) == 0
    (row, ) = table_rows(open(tmp_path / 'term_shares.md').read())
    pair, unary = (float(c) for c in row.strip('|').split('|')[2:4])
    assert pair + unary == pytest.approx(1, abs=2e-4)

    # by hand: ‖linear part of conv_out+BN applied to each term‖, mean over positions
    model = load_segmentor(config, ckpt)
    norms = {'pairwise': [], 'unary': []}
    for image in sorted(glob.glob(pattern)):
        block, x, _ = block_input(model, image)
        xf = x.flatten(2)

        def conv(layer):
            return (torch.einsum('oc,ncl->nol', layer.weight[:, :, 0, 0], xf)
                    + layer.bias[:, None])

        q, k, v = conv(block.theta), conv(block.phi), conv(block.g)
        q, k = q - q.mean(-1, keepdim=True), k - k.mean(-1, keepdim=True)
        attn = torch.softmax(torch.einsum('ndi,ndj->nij', q, k) / math.sqrt(q.shape[1])
                             / 0.05, -1)
        ys = {'pairwise': torch.einsum('nij,ndj->ndi', attn, v),
              'unary': torch.einsum('nj,ndj->nd', torch.softmax(conv(block.conv_mask), -1)[:, 0],
                                    v)[..., None]}
        bn = block.conv_out.norm
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None]
        w = block.conv_out.conv.weight[:, :, 0, 0]
        for term, y in ys.items():
            c = (scale * torch.einsum('oc,ncl->nol', w, y)).expand(-1, -1, xf.shape[-1])
            norms[term].append(float(c[0].detach().norm(dim=0).mean()))
    means = {t: np.mean(v) for t, v in norms.items()}
    expected = means['pairwise'] / (means['pairwise'] + means['unary'])
    assert pair == pytest.approx(expected, abs=1e-4)
    (api_row, ) = term_shares(model, sorted(glob.glob(pattern)))
    assert api_row['shares']['pairwise'] == pytest.approx(expected, rel=1e-4)
    assert sum(api_row['shares'].values()) == pytest.approx(1)
    # unary-only: one term, so no row, and the report says so
    config, ckpt = trained['dnl-unary']
    assert main([config, ckpt, '--images', pattern, '--out-dir', str(tmp_path / 'u')]) == 0
    assert 'No block of this model has several context terms' in open(
        tmp_path / 'u' / 'term_shares.md').read()


def test_help():
    for name in ('attention_maps', 'query_independence', 'term_shares', 'consistency'):
        with pytest.raises(SystemExit) as e:
            cli(name).main(['--help'])
        assert e.value.code == 0


def test_backbone_plugins_on_the_cityscapes_pipeline(tmp_path):
    """GC blocks as backbone plugins (every bottleneck of c3-c5), an image resized by
    the Cityscapes test pipeline: every block is found, query-independent, and drawn."""
    from PIL import Image

    from mmctx.analysis import attention_maps, load_segmentor
    model = load_segmentor(osp.join(
        ROOT, 'configs', 'smoke', 'gcb-r4-plugin_r50w16-d8_1xb2-20iter_cityscapes-64x128.py'),
        None)
    for block in context_blocks(model).values():
        randomized(block)
    image = (np.random.RandomState(0).rand(48, 96, 3) * 255).astype(np.uint8)  # → 128×256
    rows = query_independence(model, [image], num_queries=8)
    assert len(rows) == 13 and rows[0]['block'] == 'backbone.layer2.0.gc_block'
    assert rows[0]['shape'] == (16, 32) and rows[-1]['shape'] == (16, 32)  # OS 8
    assert all(r['cosine_distance'] == 0 == r['feature_cosine_distance'] for r in rows)
    md, png = attention_maps(model, image, [(47, 95)], str(tmp_path))
    assert len(table_rows(open(md).read())) == 13
    assert Image.open(png).size[1] > 13 * 100


def test_collect_attention_two_input_blocks_and_block_sized_guard():
    """AFNB's forward takes a second input (passed on to its explicit path), and blocks
    whose maps are not one L×L map (ISA's groups, ANN's pooled keys) are guarded by the
    elements they form, not by L²."""
    from mmctx.analysis.attention import collect_attention
    from mmctx.models.blocks import AsymmetricNonLocalBlock, InterlacedSparseBlock

    class TwoLevels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.afnb = AsymmetricNonLocalBlock(8, 4, key_in_channels=6)
            self.isa = InterlacedSparseBlock(8, 4, down_factor=4)

        def forward(self, x):
            return self.isa(self.afnb(x[:, :8], key_feats=x[:, 8:]))

    model = TwoLevels()
    x = torch.randn(1, 14, 16, 16)
    records = collect_attention(model, x, max_map_elements=16 * 16 * 16 * 16 - 1)
    assert records['afnb']['pooled'].shape == (1, 256, 110)
    torch.testing.assert_close(records['afnb']['pooled'].sum(-1), torch.ones(1, 256))
    assert records['isa']['global'].shape == (16, 16, 16)
    assert records['isa']['local'].shape == (16, 16, 16)
    assert model.isa.map_elements(x[:, :8]) == 2 * 16 ** 3
    assert model.afnb.map_elements(x[:, :8], x[:, 8:]) == 256 * 110
    with pytest.raises(ValueError, match=r'block afnb: the explicit attention map would have '
                       r'28,160 elements'):
        collect_attention(model, x, max_map_elements=20000)


def test_consistency_cli(trained, tmp_path, capsys):
    """DNL's pairwise/unary rows from the config's split, the --images/--labels form
    gives the same numbers, bad input is a parser error."""
    from mmctx.analysis import load_segmentor
    from mmctx.analysis.consistency import consistency, labelled_split
    main = cli('consistency').main
    config, ckpt = trained['dnl']
    root = trained['root']
    opts = ['--cfg-options', f'val_dataloader.dataset.data_root={root}']
    out = tmp_path / 'split'
    assert main([config, ckpt, '--split', 'val', *opts, '--num-queries', '64',
                 '--out-dir', str(out)]) == 0
    rows = [[c.strip() for c in r.strip('|').split('|')]
            for r in table_rows(open(out / 'consistency.md').read())]
    assert [r[3] for r in rows] == ['pairwise', 'unary']
    assert rows[0][1] == 'DisentangledNonLocalBlock' and rows[0][-1] == '2'
    for r in rows:  # "mass (chance)" cells: fractions
        mass, chance = r[4].replace('(', '').replace(')', '').split()
        assert 0 <= float(mass) <= 1 and 0 < float(chance) < 1
    assert osp.getsize(out / 'consistency.png') > 1000
    assert '[consistency] image 2/2' in capsys.readouterr().out
    # the same numbers from the function, on the same files given by glob
    model = load_segmentor(config, ckpt, cfg_options={
        'val_dataloader.dataset.data_root': root})
    images, labels = labelled_split(model, 'val')
    (row, ) = consistency(model, images, labels, num_queries=64)
    assert rows[0][4].startswith(f"{row['pairwise_within_mass']:.3f}")
    out2 = tmp_path / 'globs'
    assert main([config, ckpt, '--images', osp.join(root, 'img_dir', 'val', '*.png'),
                 '--labels', osp.join(root, 'ann_dir', 'val', '*.png'), '--num-queries',
                 '64', '--out-dir', str(out2)]) == 0
    assert open(out2 / 'consistency.md').read().split('\n')[6:] == \
        open(out / 'consistency.md').read().split('\n')[6:]
    with pytest.raises(SystemExit):
        main([config, ckpt, '--images', osp.join(root, 'img_dir', 'val', '*.png'),
              '--out-dir', str(out2)])
    assert '--images and --labels go together' in capsys.readouterr().err


@pytest.mark.parametrize('kind, upstream_cfg', [
    ('NLHead', 'mmseg::nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    ('DNLHead', 'mmseg::dnlnet/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    ('GCHead', 'mmseg::gcnet/gcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
])
def test_upstream_config_and_checkpoint_analysed_directly(kind, upstream_cfg, tmp_path):
    """An mmseg config + checkpoint goes straight into the analysis: the head becomes
    its mmctx equivalent, the checkpoint is converted in memory, the logits are the
    upstream model's, and the CLI runs."""
    from mmengine.config import Config

    from mmctx.analysis import load_segmentor

    from .test_seg import build_segmentor, randomize_segmentor
    cfg_path = tmp_path / 'upstream_cfg.py'
    cfg_path.write_text(f'_base_ = [{upstream_cfg!r}]\n')
    upstream = build_segmentor(Config.fromfile(str(cfg_path)))
    assert type(upstream.decode_head).__name__ == kind
    randomize_segmentor(upstream)
    ckpt = str(tmp_path / 'upstream.pth')
    torch.save(dict(state_dict=upstream.state_dict()), ckpt)
    model = load_segmentor(str(cfg_path), ckpt,
                           cfg_options={'test_pipeline.1.scale': (96, 64)})  # no resize
    assert model.converted_from == kind and type(model.decode_head).__name__ == 'ContextHead'
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = upstream.eval()(x, mode='tensor'), model(x, mode='tensor')
    assert a.abs().max() > 0.1
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    image = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    (row, ) = query_independence(model, [image], num_queries=8)
    assert row['block'].startswith('decode_head.') and row['shape'] == (8, 12)
    if kind == 'NLHead':  # the CLI, on the upstream files as they are
        out = tmp_path / 'qi'
        cfg_opts = ['--cfg-options', 'test_pipeline.1.scale=(96,64)']
        img = tmp_path / 'img.png'
        from PIL import Image
        Image.fromarray(image).save(img)
        assert cli('query_independence').main([str(cfg_path), ckpt, '--images', str(img),
                                               '--num-queries', '8', *cfg_opts,
                                               '--out-dir', str(out)]) == 0
        assert 'NonLocalBlock' in open(out / 'query_independence.md').read()


def test_query_independence_figure_keeps_many_labels_apart(tmp_path):
    """Horizontal bars, one row per block: the figure grows with the blocks, so the
    labels of a whole demo's blocks (15+) never overlap."""
    from PIL import Image

    from mmctx.analysis import write_query_independence
    rows = [dict(block=f'model{i}: decode_head.pairwise_nl_block', type='PairwiseNonLocalBlock',
                 terms=['pairwise'], shape=(24, 24), num_queries=8, num_images=1,
                 cosine_distance=0.05 * i, js_divergence=0.02 * i, pairwise_cosine_distance=0.1,
                 pairwise_js_divergence=0.1, input_cosine_distance=0.4,
                 feature_cosine_distance=0.2, residual=0.5) for i in range(16)]
    _, png = write_query_independence(rows, str(tmp_path))
    w, h = Image.open(png).size
    assert h >= 16 * 85 and w >= 1000  # ≥ 0.85 inch (85 px) per label row
