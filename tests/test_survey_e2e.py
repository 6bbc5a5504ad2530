"""The rest of the survey end to end: where new task code was needed (a head variant),
its config trains 2 iterations on tiny data in the real layout (tools/train.py with
tiny_run), then tools/test.py on the checkpoint."""
import math
import os.path as osp

import torch

from .conftest import ROOT, python, scalars


def test_danet_cityscapes_trains_and_tests(tmp_path, tiny_cityscapes):
    """mmctx.DualAttentionHead: a loss on each of DAHead's three outputs, and both γ of
    the DualAttentionBlock leave 0 (both branches are in the trained graph)."""
    config = osp.join(ROOT, 'configs', 'danet', 'danet_r50-d8_4xb2-80k_cityscapes-512x1024.py')
    work_dir = str(tmp_path / 'wd')
    opts = ['--cfg-options', f'tiny_run.data_root={tiny_cityscapes}']
    python('tools/train.py', config, '--work-dir', work_dir, *opts)
    records = [r for r in scalars(work_dir) if 'loss' in r]
    assert len(records) == 2
    for r in records:
        parts = [r[f'decode.{b}.loss_ce'] for b in ('pam_cam', 'pam', 'cam')]
        assert all(math.isfinite(v) and v > 0 for v in parts)
    ckpt = osp.join(work_dir, 'iter_2.pth')
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    for module in ('pam', 'cam'):
        gamma = state[f'decode_head.da_block.{module}.gamma']
        assert gamma.shape == (1, ) and gamma.abs().item() > 0
    assert not any(k.startswith(('decode_head.pam.', 'decode_head.cam.')) for k in state)
    out = python('tools/test.py', config, ckpt, '--work-dir', str(tmp_path / 'test'), *opts)
    assert 'mIoU' in out.stdout + out.stderr
