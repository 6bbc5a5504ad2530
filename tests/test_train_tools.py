"""tools/train.py, test.py, dist_train.sh, dist_test.sh on CPU, and safe resume."""
import math
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import CheckpointLoader

import mmctx  # noqa: F401
from mmctx.utils import prepare_cfg, syncbn_to_bn
from mmctx.utils.config import resolve_syncbn_switch

from .conftest import (RECORD_CONFIG, ROOT, SMOKE_CONFIG, data_root_options, free_port,
                       python, run, scalars)


def train(work_dir, data_root, iters, *extra, config=RECORD_CONFIG):
    return python('tools/train.py', config, '--work-dir', work_dir, *extra,
                  '--cfg-options', f'train_cfg.max_iters={iters}',
                  f'train_cfg.val_interval={iters}', *data_root_options(data_root))


def test_train_e2e_cityscapes(tmp_path, tiny_cityscapes):
    """mmseg:: config + tiny Cityscapes layout, 2 iterations + validation."""
    work_dir = str(tmp_path / 'wd')
    proc = train(work_dir, tiny_cityscapes, 2, config=SMOKE_CONFIG)
    records = scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert [r['iter'] for r in records if 'loss' in r] == [1, 2]
    assert all(math.isfinite(v) for v in losses)
    miou = [r['mIoU'] for r in records if 'mIoU' in r]
    assert len(miou) == 1 and 0 <= miou[0] <= 100
    out = proc.stdout + proc.stderr
    assert 'mIoU' in out and 'syncbn_to_bn: replaced' in out
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))


def test_resume_continues_with_same_optimizer_state(tmp_path, tiny_cityscapes):
    work_dir = str(tmp_path / 'wd')
    train(work_dir, tiny_cityscapes, 2)
    saved = torch.load(osp.join(work_dir, 'iter_2.pth'), weights_only=True)
    assert saved['meta']['iter'] == 2
    proc = train(work_dir, tiny_cityscapes, 4, '--resume')
    assert 'resumed epoch: 0, iter: 2' in proc.stdout + proc.stderr
    before = torch.load(osp.join(work_dir, 'before_train_rank0.pth'), weights_only=True)
    assert before['iter'] == 2
    # the optimizer state the resumed run starts from is the saved one
    want, got = saved['optimizer'], before['optimizer']
    assert want['param_groups'] == got['param_groups']
    assert want['state'].keys() == got['state'].keys() and len(want['state']) > 0
    for k in want['state']:
        assert torch.equal(want['state'][k]['momentum_buffer'],
                           got['state'][k]['momentum_buffer'])
    after = torch.load(osp.join(work_dir, 'after_train_rank0.pth'), weights_only=True)
    assert after['iter'] == 4
    assert [r['iter'] for r in scalars(work_dir) if 'loss' in r] == [3, 4]


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


class _EvilGetattr:
    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.mark.parametrize('payload', [_Evil(), _EvilGetattr()], ids=['callable', 'getattr'])
def test_unsafe_checkpoint_still_refused(tmp_path, payload):
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    path = str(tmp_path / 'evil.pth')
    torch.save(dict(state_dict={}, meta=dict(x=payload)), path)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(path, map_location='cpu')


def test_dist_train_and_test_two_cpu_processes(tmp_path, tiny_cityscapes):
    if torch.cuda.is_available():
        pytest.skip('checks the CPU (gloo) path')
    work_dir = str(tmp_path / 'wd')
    proc = run(['bash', 'tools/dist_train.sh', RECORD_CONFIG, '2', '--work-dir', work_dir,
                '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                *data_root_options(tiny_cityscapes)],
               env=dict(PORT=str(free_port()), PYTHON=sys.executable))
    assert 'Distributed training: True' in proc.stdout + proc.stderr
    ranks = [torch.load(osp.join(work_dir, f'after_train_rank{r}.pth'), weights_only=True)
             for r in (0, 1)]
    assert ranks[0]['iter'] == ranks[1]['iter'] == 2
    assert ranks[0]['params'].keys() == ranks[1]['params'].keys()
    for name, value in ranks[0]['params'].items():
        assert torch.equal(value, ranks[1]['params'][name]), name
    ckpt = osp.join(work_dir, 'iter_2.pth')
    trained = torch.load(ckpt, weights_only=True)['state_dict']
    for name, value in ranks[0]['params'].items():
        assert torch.equal(trained[name], value), name

    test_dir = str(tmp_path / 'test')
    out = str(tmp_path / 'preds.pkl')
    proc = run(['bash', 'tools/dist_test.sh', SMOKE_CONFIG, ckpt, '2', '--work-dir',
                test_dir, '--out', out, '--cfg-options', *data_root_options(tiny_cityscapes)],
               env=dict(PORT=str(free_port()), PYTHON=sys.executable))
    assert 'mIoU' in proc.stdout + proc.stderr
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 2  # both val images, gathered from the two ranks


def test_dist_scripts_print_usage():
    for script, nargs in (('tools/dist_train.sh', 1), ('tools/dist_test.sh', 2)):
        proc = subprocess.run(['bash', script] + ['x'] * nargs, cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and 'usage:' in proc.stderr


def test_syncbn_to_bn_reaches_nested_entries():
    cfg = Config.fromfile(SMOKE_CONFIG)
    text = cfg.pretty_text
    assert text.count("'SyncBN'") >= 3  # backbone, decode_head, auxiliary_head, norm_cfg
    n = syncbn_to_bn(cfg._cfg_dict)
    assert n == text.count("'SyncBN'")
    assert "SyncBN" not in cfg.pretty_text
    assert cfg.model.backbone.norm_cfg == dict(type='BN', requires_grad=True)
    nested = dict(a=[dict(type='mmcv.SyncBN'), (dict(norm=dict(type='MMSyncBN')), )])
    assert syncbn_to_bn(nested, 'BN3d') == 2
    assert nested['a'][0]['type'] == 'BN3d' and nested['a'][1][0]['norm']['type'] == 'BN3d'
    with pytest.raises(TypeError, match='norm type'):
        syncbn_to_bn({}, target=None)


def test_syncbn_switch():
    assert resolve_syncbn_switch(None, cuda=False) == 'BN'
    assert resolve_syncbn_switch(None, cuda=True) is None
    assert resolve_syncbn_switch(True, cuda=True) == 'BN'
    assert resolve_syncbn_switch(False, cuda=False) is None
    assert resolve_syncbn_switch('BN3d', cuda=True) == 'BN3d'
    with pytest.raises(TypeError, match='syncbn_to_bn'):
        resolve_syncbn_switch(3, cuda=False)
    # reachable from --cfg-options
    cfg = Config.fromfile(SMOKE_CONFIG)
    prepare_cfg(cfg, config_path=SMOKE_CONFIG, cfg_options=dict(syncbn_to_bn=False))
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    cfg = Config.fromfile(SMOKE_CONFIG)
    prepare_cfg(cfg, config_path=SMOKE_CONFIG, cfg_options=dict(syncbn_to_bn='GN'))
    assert cfg.model.decode_head.norm_cfg.type == 'GN'


def test_cpu_launcher_wraps_cpu_model_and_amp_needs_gpu():
    if torch.cuda.is_available():
        pytest.skip('CPU behaviour')
    cfg = Config.fromfile(SMOKE_CONFIG)
    prepare_cfg(cfg, config_path=SMOKE_CONFIG, launcher='pytorch', work_dir='x')
    assert cfg.model_wrapper_cfg.device_ids is None and cfg.work_dir == 'x'
    with pytest.raises(RuntimeError, match='--amp needs a GPU'):
        prepare_cfg(Config.fromfile(SMOKE_CONFIG), config_path=SMOKE_CONFIG, amp=True)
