"""ContextShapes: determinism, the real mmseg pipeline, and the label logic."""
import filecmp
import os
import os.path as osp
from collections import Counter

import numpy as np
import pytest
import torch

from mmctx.datasets import context_shapes as cs
from mmctx.datasets import generate_context_shapes, make_sample
from mmctx.models.backbones import TinyConvNet

from .conftest import ROOT


def chebyshev(a, b):
    return cs._gap(tuple(a), tuple(b))


def test_bad_arguments():
    rng = np.random.RandomState(0)
    with pytest.raises(ValueError, match=r"variant must be one of \['global', 'paired'\]"):
        make_sample('local', rng)
    with pytest.raises(ValueError, match="size must be an int >= 48 for 'global'"):
        make_sample('global', rng, size=32)
    with pytest.raises(ValueError, match="size must be an int >= 64 for 'paired'"):
        make_sample('paired', rng, size=48)
    with pytest.raises(ValueError, match="variant must be one of"):
        generate_context_shapes('/tmp/unused', 'local')
    with pytest.raises(ValueError, match='num_train must be an int >= 1, got 0'):
        generate_context_shapes('/tmp/unused', 'global', num_train=0)


@pytest.mark.parametrize('variant', cs.VARIANTS)
def test_generator_is_deterministic(variant, tmp_path):
    a = generate_context_shapes(str(tmp_path / 'a'), variant, 6, 3, seed=1)
    b = generate_context_shapes(str(tmp_path / 'b'), variant, 6, 3, seed=1)
    c = generate_context_shapes(str(tmp_path / 'c'), variant, 6, 3, seed=2)
    for sub in ('img_dir/train', 'ann_dir/train', 'img_dir/val', 'ann_dir/val'):
        names = sorted(os.listdir(osp.join(a, sub)))
        assert len(names) == (6 if 'train' in sub else 3)
        match, mismatch, errors = filecmp.cmpfiles(osp.join(a, sub), osp.join(b, sub), names,
                                                   shallow=False)
        assert match == names and not mismatch and not errors
        assert filecmp.cmpfiles(osp.join(a, sub), osp.join(c, sub), names,
                                shallow=False)[1]  # another seed, other images
    # a complete copy with the same parameters is left untouched
    stamp = os.stat(osp.join(a, 'img_dir', 'train', '00000.png')).st_mtime_ns
    generate_context_shapes(str(tmp_path / 'a'), variant, 6, 3, seed=1)
    assert os.stat(osp.join(a, 'img_dir', 'train', '00000.png')).st_mtime_ns == stamp
    # fewer images: the shared ones are the same, the extra ones are gone
    generate_context_shapes(str(tmp_path / 'a'), variant, 4, 2, seed=1)
    for sub, n in (('img_dir/train', 4), ('ann_dir/train', 4), ('img_dir/val', 2)):
        assert sorted(os.listdir(osp.join(a, sub))) == [f'{i:05d}.png' for i in range(n)]
    assert filecmp.cmp(osp.join(a, 'img_dir/train/00003.png'),
                       osp.join(b, 'img_dir/train/00003.png'), shallow=False)


def test_dataset_loads_through_the_mmseg_pipeline(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    root = generate_context_shapes(str(tmp_path), 'paired', 4, 2)
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs', 'contextshapes', 'baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'))
    init_default_scope('mmseg')
    ds_cfg = cfg.val_dataloader.dataset
    ds_cfg.data_root = root
    dataset = DATASETS.build(ds_cfg)
    assert len(dataset) == 2
    assert dataset.metainfo['classes'] == cs.CLASSES
    sample = dataset[0]
    # the paired configs' preprocessor size is the generator's paired image size
    assert tuple(sample['inputs'].shape) == (3, 64, 64)
    assert cfg.model.data_preprocessor.size == (48, 48) == (cs.SIZES['global'], ) * 2
    paired = Config.fromfile(osp.join(ROOT, 'configs', 'contextshapes',
                                      'nonlocal_tinyconv_1xb12-1000iter_contextshapes-paired.py'))
    assert paired.model.data_preprocessor.size == (64, 64) == (cs.SIZES['paired'], ) * 2
    seg = sample['data_samples'].gt_sem_seg.data
    assert set(seg.unique().tolist()) <= {0, 1, 2, 3} and (seg > 0).any()


def test_receptive_field_of_the_baseline_backbone():
    """The gradient of one output position reaches exactly 15×15 input pixels."""
    net = TinyConvNet(channels=4, num_convs=3).eval()
    assert net.receptive_field == 15
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    net(x)[0][0, :, 16, 16].sum().backward()
    rows, cols = torch.nonzero(x.grad[0].abs().sum(0)).unbind(1)
    assert rows.max() - rows.min() + 1 == 15 and cols.max() - cols.min() + 1 == 15
    # + 2 px from bilinear upsampling of stride-2 logits
    assert cs.BASELINE_REACH == net.receptive_field // 2 + 2 < cs.GAP


@pytest.mark.parametrize('variant', cs.VARIANTS)
def test_label_logic_leaves_a_context_free_model_at_chance(variant):
    rng = np.random.RandomState(123)
    appearance_by_class = {c: Counter() for c in (1, 2, 3)}
    classes = Counter()
    for _ in range(400):
        img, label, info = make_sample(variant, rng)
        objects, cues = info['objects'], info['cues']
        for obj in objects:
            y0, x0, y1, x1 = obj['box']
            # the label is the object's class on the object, background elsewhere
            assert (label[y0:y1, x0:x1] == obj['cls']).all()
            # no cue within the reach of a context-free prediction at any object pixel
            assert all(chebyshev(obj['box'], cue['box']) >= cs.GAP for cue in cues)
            # the class is written in the cue the object is paired with
            partner = cues[0] if variant == 'global' else next(
                c for c in cues if c['key'] == obj['key'])
            assert partner['cls'] == obj['cls']
            # what the object looks like locally: white, or its key hue (in 6 bins)
            local = None if obj['key'] is None else int(obj['key'] * 6)
            appearance_by_class[obj['cls']][local] += 1
            if obj['key'] is not None:  # painted in its key hue, as its cue's border
                assert np.allclose(img[y0:y1, x0:x1].reshape(-1, 3).mean(0),
                                   cs.hue_to_rgb(obj["key"]), atol=10)
                cy0, cx0 = partner['box'][:2]
                assert np.allclose(img[cy0:cy0 + 2, cx0:cx0 + cs.CUE_PAIRED].reshape(-1, 3).mean(0),
                                   cs.hue_to_rgb(obj["key"]), atol=15)
                centre = img[cy0 + 2:cy0 + 6, cx0 + 2:cx0 + 6].reshape(-1, 3).mean(0)
                assert np.allclose(centre, cs.CLASS_GREYS[obj["cls"]], atol=15)
            classes[obj['cls']] += 1
        assert (label > 0).sum() == sum((o['box'][2] - o['box'][0]) * (o['box'][3] - o['box'][1])
                                        for o in objects)
        if variant == 'paired':  # keys identify partners uniquely within an image
            assert len({o['key'] for o in objects}) == len(objects) == len(cues) >= 3
            assert all(cs.hue_distance(a['key'], b['key']) >= cs.MIN_HUE_GAP
                       for i, a in enumerate(objects) for b in objects[i + 1:])
            assert img.shape == (64, 64, 3)
    # classes are uniform, and the local appearance says nothing about the class
    total = sum(classes.values())
    assert all(abs(n / total - 1 / 3) < 0.06 for n in classes.values())
    overall = Counter()
    for counts in appearance_by_class.values():
        overall.update(counts)
    for cls, counts in appearance_by_class.items():
        for key, n in overall.items():
            share = counts[key] / sum(counts.values())
            assert abs(share - n / sum(overall.values())) < 0.08, (cls, key)
    if variant == 'global':
        assert set(overall) == {None}  # every object is white


def test_paired_images_mix_classes():
    """Global pooling cannot read one answer for all objects: classes differ within
    most paired images."""
    rng = np.random.RandomState(7)
    mixed = sum(len({o['cls'] for o in make_sample('paired', rng)[2]['objects']}) > 1
                for _ in range(200))
    assert mixed > 120
