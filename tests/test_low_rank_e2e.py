"""The low-rank family end to end: an EMANet segmentation config and a GloRe video config
train 2 iterations on tiny data in the real layouts (tools/train.py with tiny_run), then
tools/test.py on the checkpoint."""
import math
import os.path as osp

import torch

from .conftest import ROOT, python, scalars


def test_emanet_cityscapes_trains_and_tests(tmp_path, tiny_cityscapes):
    """mmseg's EMANet recipe with mmctx.ContextHead + EMABlock: the bases are a buffer of
    the checkpoint, moved by the momentum update; ema_mid_conv stays frozen."""
    config = osp.join(ROOT, 'configs', 'emanet', 'emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py')
    work_dir = str(tmp_path / 'wd')
    opts = ['--cfg-options', f'tiny_run.data_root={tiny_cityscapes}']
    python('tools/train.py', config, '--work-dir', work_dir, *opts)
    records = scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    ckpt = osp.join(work_dir, 'iter_2.pth')
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    bases = state['decode_head.ema_block.bases']
    assert bases.shape == (1, 512, 64) and torch.isfinite(bases).all()
    out = python('tools/test.py', config, ckpt, '--work-dir', str(tmp_path / 'test'), *opts)
    assert 'mIoU' in out.stdout + out.stderr


def test_glore_i3d_kinetics_trains_and_tests(tmp_path):
    from mmctx.testing import make_kinetics_videos
    root = make_kinetics_videos(str(tmp_path / 'kinetics400'), splits=dict(train=4, val=2),
                                num_frames=12, size=(48, 64))
    config = osp.join(ROOT, 'configs', 'glore',
                      'i3d_imagenet-pretrained-r50-glore_8xb8-32x2x1-100e_kinetics400-rgb.py')
    work_dir = str(tmp_path / 'wd')
    opts = ['--cfg-options', f'tiny_run.data_root={root}']
    python('tools/train.py', config, '--work-dir', work_dir, *opts)
    records = scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    state = torch.load(osp.join(work_dir, 'epoch_1.pth'), map_location='cpu',
                       weights_only=True)['state_dict']
    gammas = [v for k, v in state.items() if k.endswith('non_local_block.blocker.weight')]
    # 5 GloRe units whose zero-initialised BN moved: they were in the trained graph
    assert len(gammas) == 5 and all(g.abs().sum() > 0 for g in gammas)
    out = python('tools/test.py', config, osp.join(work_dir, 'epoch_1.pth'), '--work-dir',
                 str(tmp_path / 'test'), *opts)
    assert 'acc/top1' in out.stdout + out.stderr
