"""DNL's consistency statistics (mmctx/analysis/consistency.py): masks, hand-computed
statistics on tiny maps, a loop restatement, the NL split identity."""
import math

import numpy as np
import pytest
import torch

from mmctx.analysis.consistency import (boundary_mask, consistency_statistics,
                                        labels_to_grid, nl_split)

from .conftest import randomize


def test_boundary_mask_and_grid_by_hand():
    labels = torch.tensor([[0, 0, 0, 1, 1, 255]])
    assert boundary_mask(labels, 1).tolist() == [[False, False, True, True, False, False]]
    assert boundary_mask(labels, 2).tolist() == [[False, True, True, True, True, False]]
    square = torch.zeros(5, 5, dtype=torch.long)
    square[2, 2] = 3
    b = boundary_mask(square, 1)  # the centre and its 8 neighbours
    assert b.sum() == 9 and b[1:4, 1:4].all()
    big = torch.arange(4).repeat_interleave(2).reshape(1, 8).expand(2, 8)
    assert labels_to_grid(big, (1, 4)).tolist() == [[0, 1, 2, 3]]  # nearest: every 2nd
    with pytest.raises(ValueError, match='radius must be an int >= 1, got 0'):
        boundary_mask(labels, 0)


def test_statistics_by_hand():
    labels = torch.tensor([[0, 0, 1, 255]])
    pairwise = torch.tensor([[.5, .2, .2, .1], [.1, .6, .1, .2], [.3, .3, .3, .1],
                             [.25, .25, .25, .25]])
    unary = torch.tensor([.1, .1, .7, .1])
    s = consistency_statistics(labels, pairwise, unary, radii=(1, ))
    assert s['num_queries'] == 3 and s['num_keys'] == 3  # the ignored cell is dropped
    # query 0: (.5 + .2) / .9, query 1: .7 / .8, query 2: .3 / .9 of the valid-key mass
    assert s['pairwise_within_mass'] == pytest.approx((.7 / .9 + .7 / .8 + 1 / 3) / 3)
    assert s['pairwise_within_chance'] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    # query 2's row is constant (no correlation defined): r over queries 0 and 1
    r0 = np.corrcoef([.5, .2, .2], [1, 1, 0])[0, 1]
    r1 = np.corrcoef([.1, .6, .1], [1, 1, 0])[0, 1]
    assert s['pairwise_within_r'] == pytest.approx((r0 + r1) / 2)
    # boundaries at radius 1: cells 1 and 2
    assert s['unary_boundary_r1_mass'] == pytest.approx(.8 / .9)
    assert s['unary_boundary_r1_chance'] == pytest.approx(2 / 3)
    assert s['unary_boundary_r1_r'] == pytest.approx(np.corrcoef([.1, .1, .7],
                                                                 [0, 1, 1])[0, 1])
    # cross terms: the unary map against each query's own category
    assert s['unary_within_mass'] == pytest.approx((.2 / .9 * 2 + .7 / .9) / 3)
    assert s['pairwise_boundary_r1_mass'] == pytest.approx((.4 / .9 + .7 / .8 + .6 / .9) / 3)
    with pytest.raises(ValueError, match=r'pairwise map must be \(4, 4\)'):
        consistency_statistics(labels, pairwise[:3])
    with pytest.raises(ValueError, match='fewer than 2 labelled positions'):
        consistency_statistics(torch.full((2, 2), 255), pairwise)


def test_statistics_match_a_loop_restatement():
    gen = torch.Generator().manual_seed(0)
    labels = torch.zeros(5, 6, dtype=torch.long)  # regions: boundaries are a part
    labels[:, 4:] = 1
    labels[3:, :2] = 2
    labels[0, :2] = 255
    L = 30
    pairwise = torch.rand(L, L, generator=gen).softmax(-1)
    unary = torch.rand(L, generator=gen).softmax(-1)
    s = consistency_statistics(labels, pairwise, unary, radii=(1, ), num_queries=L)
    flat = labels.flatten().tolist()
    valid = [j for j in range(L) if flat[j] != 255]
    b = boundary_mask(labels, 1).flatten().tolist()

    def stats(row, mask):
        p = [row[j] for j in valid]
        total = sum(p)
        p = [v / total for v in p]
        m = [1. if mask[j] else 0. for j in valid]
        r = np.corrcoef(p, m)[0, 1] if 0 < sum(m) < len(m) else math.nan
        return sum(a * c for a, c in zip(p, m)), sum(m) / len(m), r

    rows = [stats(pairwise[i].tolist(), [flat[j] == flat[i] for j in range(L)])
            for i in valid]
    assert s['pairwise_within_mass'] == pytest.approx(np.mean([r[0] for r in rows]))
    assert s['pairwise_within_chance'] == pytest.approx(np.mean([r[1] for r in rows]))
    assert s['pairwise_within_r'] == pytest.approx(np.nanmean([r[2] for r in rows]))
    mass, chance, r = stats(unary.tolist(), b)
    assert 0 < chance < 1
    assert (s['unary_boundary_r1_mass'], s['unary_boundary_r1_chance'],
            s['unary_boundary_r1_r']) == pytest.approx((mass, chance, r))
    # sampling: a seeded subset of the valid queries
    few = consistency_statistics(labels, pairwise, None, radii=(1, ), num_queries=5)
    assert few['num_queries'] == 5 and 'unary_within_mass' not in few


@pytest.mark.parametrize('mode', ['embedded_gaussian', 'gaussian'])
def test_nl_split_is_the_identity_of_the_paper(mode):
    """softmax_j(a_ij + b_j) ∝ softmax_j(a_ij)·softmax_j(b_j): the two parts multiply
    back to NL's own map (the terms constant in j cancel)."""
    from mmctx.models.blocks import DisentangledNonLocalBlock, NonLocalBlock
    block = randomize(NonLocalBlock(8, mode=mode), std=0.4).eval()
    x = torch.randn(2, 8, 4, 5)
    _, maps = block.forward_with_attention(x)
    parts = nl_split(block, x)
    product = parts['pairwise'] * parts['unary']
    torch.testing.assert_close(product / product.sum(-1, keepdim=True), maps['pairwise'],
                               rtol=1e-4, atol=1e-6)
    assert parts['unary'].shape == (2, 1, 20)
    assert not torch.allclose(parts['pairwise'], maps['pairwise'], atol=1e-3)
    with pytest.raises(ValueError, match='applies to a plain NL block'):
        nl_split(DisentangledNonLocalBlock(8), x)


@pytest.mark.parametrize('dataset', ['cityscapes', 'ade20k'])
def test_consistency_on_tiny_cityscapes_and_ade20k(dataset, tmp_path, tiny_cityscapes):
    """The real layouts through the configs' own splits: Cityscapes' labelTrainIds (255
    ignored) and ADE20K's reduce_zero_label (0 → ignored); the label map the statistics
    read is the one mmseg's LoadAnnotations gives, downsampled to the block's grid."""
    import os.path as osp

    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets.transforms import LoadAnnotations

    from mmctx.analysis import consistency, labelled_split, load_segmentor
    from mmctx.analysis.consistency import _label_on_input, _reduce_zero_label
    from mmctx.testing import make_ade20k

    from .conftest import ROOT
    if dataset == 'cityscapes':
        root = tiny_cityscapes
        config = 'configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py'
        scale = (192, 96)
    else:
        root = make_ade20k(str(tmp_path / 'ade'), splits=dict(training=1, validation=2),
                           size=(64, 96))
        config = 'configs/dnl/dnl_r50-d8_4xb4-80k_ade20k-512x512.py'
        scale = (96, 64)
    opts = {'val_dataloader.dataset.data_root': root, 'test_pipeline.1.scale': scale,
            'model.backbone.base_channels': 16, 'model.backbone.stem_channels': 16,
            'model.decode_head.in_channels': 512, 'model.decode_head.channels': 16,
            'model.auxiliary_head.in_channels': 256}
    model = load_segmentor(osp.join(ROOT, config), None, cfg_options=opts)
    for block in context_blocks(model).values():
        randomize(block, std=0.3)
    assert _reduce_zero_label(model) == (dataset == 'ade20k')
    images, labels = labelled_split(model, 'val')
    assert len(images) == 2 and all(osp.isfile(p) for p in labels)
    # the label map at the input: what mmseg's own LoadAnnotations reads
    packed = LoadAnnotations(reduce_zero_label=dataset == 'ade20k')(
        LoadImageFromFile()(dict(img_path=images[0], seg_map_path=labels[0],
                                 reduce_zero_label=dataset == 'ade20k', seg_fields=[])))
    ref = torch.from_numpy(packed['gt_seg_map'].astype(np.int64))
    h, w = ref.shape
    gt = _label_on_input(labels[0], dict(img_shape=(h, w)), (h, w), dataset == 'ade20k', 255)
    assert torch.equal(gt, ref) and (gt == 255).any() and (gt != 255).any()
    rows = consistency(model, images, labels, num_queries=64)
    (row, ) = rows
    assert row['type'] == 'DisentangledNonLocalBlock' and row['num_images'] == 2
    for term in ('pairwise', 'unary'):
        for mask in ('within', 'boundary_r1', 'boundary_r3'):
            assert 0 <= row[f'{term}_{mask}_mass'] <= 1
            assert 0 < row[f'{term}_{mask}_chance'] < 1
    # a wider radius marks more cells as boundary
    assert row['unary_boundary_r3_chance'] > row['unary_boundary_r1_chance']


def context_blocks(model):
    from mmctx.analysis import context_blocks as blocks
    return blocks(model)
