import glob
import json
import os
import os.path as osp
import random
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmctx.deploy.onnx import random_weights


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """Each test starts from, and leaves, the default registry scope it found: tools run
    in-process (``main([...])``) call ``init_default_scope`` as the scripts do, and a
    scope left behind would change how later tests resolve registry names."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict = saved


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from the same random state, whatever ran before it, so a draw
    that a test depends on is the same in every order and every subset of the suite
    (``MMCTX_TEST_SEED=N`` runs the suite on other draws)."""
    seed = int(os.environ.get('MMCTX_TEST_SEED', 0))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SMOKE_CONFIG = osp.join(
    ROOT, 'configs', 'smoke', 'gcb-r4-plugin_r50w16-d8_1xb2-20iter_cityscapes-64x128.py')
RECORD_CONFIG = osp.join(ROOT, 'tests', 'configs', 'smoke_record.py')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(cmd, cwd=ROOT, env=None, timeout=600):
    """Run a command; on failure, fail the test with its output."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f'{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}'
                    f'\n--- stderr\n{proc.stderr[-6000:]}')
    return proc


def python(*args, **kwargs):
    return run([sys.executable, *args], **kwargs)


@pytest.fixture(scope='session')
def tiny_cityscapes(tmp_path_factory):
    from mmctx.testing import make_cityscapes
    return make_cityscapes(str(tmp_path_factory.mktemp('cityscapes')),
                           splits=dict(train=4, val=2), size=(96, 192))


def conv1x1(x, conv):
    """A 1×1 conv of any rank written as a matmul over channels (the test
    re-statements' own, independent of the blocks' code)."""
    w = conv.weight.reshape(conv.weight.shape[0], -1)
    out = torch.einsum('oc,nc...->no...', w, x)
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, *([1] * (x.dim() - 2)))
    return out


def bn(x, m):
    """A BN of any rank written out: train mode (batch statistics, biased variance) or
    eval (running statistics)."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    if m.training:
        mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    else:
        mean, var = m.running_mean.view(shape), m.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + m.eps) * m.weight.view(shape) + m.bias.view(shape)


@pytest.fixture
def masked_keys(monkeypatch):
    """The ``(keys in the buffer, real keys)`` of every call that masks padded keys in
    mmctx's attention buffers (``attention._mask_padding``), in a list."""
    from mmctx.models.blocks import attention
    calls = []
    mask = attention._mask_padding
    monkeypatch.setattr(attention, '_mask_padding',
                        lambda t, n: calls.append((t.shape[-1], n)) or mask(t, n))
    return calls


def largest_saved_for_backward(fn, x, map_budget_mb: float = 0) -> int:
    """The largest tensor (elements) autograd saves for backward while ``fn(x)`` runs;
    ``fn(x).sum()`` is then backpropagated (so recomputation paths run too).

    Softmax attention runs with ``map_budget_mb`` (default 0: the fused kernel, which
    keeps no map — what training runs beyond the budget; within it the map is kept)."""
    from torch.autograd.graph import saved_tensors_hooks

    from mmctx.models.blocks.attention import map_budget
    sizes = [0]
    with saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t), \
            map_budget(map_budget_mb):
        out = fn(x)
    out.sum().backward()
    return max(sizes)


def scalars(work_dir: str) -> list:
    """The records of the newest run's ``vis_data/scalars.json`` under ``work_dir``."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    assert files, f'no scalars.json under {work_dir}'
    with open(files[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def data_root_options(root: str) -> list:
    return [f'{split}_dataloader.dataset.data_root={root}'
            for split in ('train', 'val', 'test')]


def _cache_mmengine_metafile_reads():
    """Test-suite speed-up only: mmengine re-reads every metafile of a package for
    each ``mmseg::`` base of each config (~0.4 s each); the answer does not change
    within a run, so memoise it."""
    import functools

    import mmengine.config.utils as cfg_utils
    if not hasattr(cfg_utils._get_cfg_metainfo, 'cache_info'):
        cfg_utils._get_cfg_metainfo = functools.lru_cache(maxsize=None)(
            cfg_utils._get_cfg_metainfo)


_cache_mmengine_metafile_reads()


# random weights (N(0, std²), zero-initialised layers included) and BN statistics away
# from (0, 1), so that no term of a block is trivially zero: the export tool's function
randomize = random_weights
