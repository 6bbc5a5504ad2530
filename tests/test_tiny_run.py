"""tiny_run (any config in seconds on tiny data), offline pretrained weights, and the
quiet console of mmctx's tools."""
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config

import mmctx  # noqa: F401
from mmctx.utils import tiny_run
from mmctx.utils.tiny_run import check_tiny_run

from .conftest import ROOT, SMOKE_CONFIG, data_root_options, scalars


def cfg(path):
    return Config.fromfile(osp.join(ROOT, path))


def steps(pipeline, kind):
    return [s for s in pipeline if s['type'] == kind]


def test_cityscapes_sizes_schedule_and_weights():
    c = cfg('configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py')
    assert c.model.pretrained == 'open-mmlab://resnet50_v1c'
    notes = tiny_run(c, data_root='/tmp/tiny')
    train = c.train_dataloader.dataset.pipeline
    (resize, ) = steps(train, 'RandomResize')
    assert tuple(resize.scale) == (256, 128) and tuple(resize.ratio_range) == (0.5, 2.0)
    assert tuple(steps(train, 'RandomCrop')[0].crop_size) == (64, 128)
    assert tuple(steps(c.val_dataloader.dataset.pipeline, 'Resize')[0].scale) == (256, 128)
    assert tuple(c.model.data_preprocessor.size) == (64, 128)
    assert c.train_cfg.max_iters == 2 and c.train_cfg.val_interval == 2
    assert c.default_hooks.checkpoint.interval == 2 and c.default_hooks.logger.interval == 1
    assert c.model.pretrained is None
    assert c.train_dataloader.batch_size == 2 and c.val_dataloader.batch_size == 1
    assert c.train_dataloader.num_workers == 0
    assert c.val_dataloader.dataset.data_root == '/tmp/tiny'
    assert any('no pretrained weights (model.pretrained = None)' in n for n in notes)
    # TTA scales are ratios: kept
    assert c.tta_pipeline[1].transforms[0][0].scale_factor == 0.5


def test_slide_inference_ade20k_coco_and_kinetics():
    c = cfg('configs/dnl/dnl-official_r50-d8_4xb2-60k_cityscapes-769x769.py')
    tiny_run(c)
    assert tuple(c.model.test_cfg.crop_size) == (96, 96)
    assert tuple(c.model.test_cfg.stride) == (64, 64)

    c = cfg('configs/dnl/dnl-official_r101-d8_8xb2-150k_ade20k-520x520.py')
    tiny_run(c, factor=4)
    assert tuple(steps(c.train_dataloader.dataset.pipeline, 'RandomCrop')[0].crop_size) \
        == (130, 130)

    c = cfg('configs/gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py')
    assert c.model.backbone.init_cfg.type == 'Pretrained'
    tiny_run(c, data_root='/tmp/coco/')
    assert tuple(steps(c.train_dataloader.dataset.pipeline, 'Resize')[0].scale) == (167, 100)
    assert c.train_cfg.max_epochs == 1 and c.model.backbone.init_cfg is None
    assert c.default_hooks.checkpoint.by_epoch and c.default_hooks.checkpoint.interval == 1
    assert c.val_evaluator.ann_file == '/tmp/coco/annotations/instances_val2017.json'

    c = cfg('configs/nonlocal/'
            'i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_'
            'kinetics400-rgb.py')
    tiny_run(c)
    train = c.train_dataloader.dataset.pipeline
    assert steps(train, 'SampleFrames')[0].clip_len == 32  # frames are not pixels
    assert tuple(steps(train, 'Resize')[0].scale) == (-1, 32)
    assert tuple(steps(train, 'MultiScaleCrop')[0].scales) == (1, 0.8)  # ratios stay
    assert steps(c.test_dataloader.dataset.pipeline, 'ThreeCrop')[0].crop_size == 32
    assert c.model.backbone.pretrained is None


@pytest.mark.parametrize('value, error', [
    ('yes', TypeError), (dict(factor=0), ValueError), (dict(iter=2), ValueError),
    (dict(batch_size=True), ValueError)])
def test_bad_tiny_run_values(value, error):
    with pytest.raises(error, match='tiny_run'):
        check_tiny_run(value)


def _train(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(__import__('os').environ, PYTHONPATH=ROOT))
    return proc.returncode, proc.stdout, proc.stderr


def test_readme_recipe_full_config_on_tiny_cityscapes_quietly(tmp_path):
    """README: make_cityscapes at the config's data_root + tiny_run=True trains a
    released-size config (R-50-D8 DNL) for 2 iterations and validates; the known
    upstream deprecation warnings are hidden, mmctx's own lines stay."""
    from mmctx.testing import make_cityscapes
    make_cityscapes(str(tmp_path / 'data' / 'cityscapes'))
    rc, out, err = _train(osp.join(ROOT, 'configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-'
                                         '512x1024.py'), '--cfg-options', 'tiny_run=True',
                          cwd=str(tmp_path))
    assert rc == 0, err[-3000:]
    log = out + err
    assert 'tiny_run: ' in log and 'syncbn_to_bn: replaced' in log
    assert 'mIoU' in log
    for hidden in ('pkg_resources is deprecated', '``build_loss`` would be deprecated',
                   'avg_non_ignore', 'The draw is False', '"FileClient" will be deprecated',
                   'HardDiskBackend'):
        assert hidden not in log, hidden
    losses = [r['loss'] for r in scalars(str(tmp_path / 'work_dirs' / 'dnl_r50-d8_4xb2-40k_cityscapes-512x1024'))
              if 'loss' in r]
    assert len(losses) == 2


def test_offline_pretrained_download_is_one_line_and_flag_shows_warnings(
        tmp_path, tiny_cityscapes):
    rc, out, err = _train(SMOKE_CONFIG, '--work-dir', str(tmp_path), '--show-upstream-warnings',
                          '--cfg-options', 'model.pretrained=open-mmlab://resnet50_v1c',
                          *data_root_options(tiny_cityscapes))
    assert rc == 1
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in err
    assert "model.pretrained='open-mmlab://resnet50_v1c'" in errors[0]
    assert '--cfg-options model.pretrained=None' in errors[0]
    assert 'pkg_resources is deprecated' in err  # --show-upstream-warnings
