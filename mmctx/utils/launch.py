"""What tools/train.py and tools/test.py share: config overrides and CPU DDP."""
import logging
import os
import os.path as osp
from typing import Any, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

from .config import resolve_syncbn_switch, syncbn_to_bn
from .tiny_run import check_tiny_run, tiny_run


def add_launch_args(parser) -> None:
    """The arguments train.py and test.py share: --cfg-options, --launcher, --local-rank."""
    from mmengine.config import DictAction
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value pairs, e.g. '
        'train_cfg.max_iters=100 syncbn_to_bn=True')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_launch_args(parser):
    """Parse, and export ``LOCAL_RANK`` for launchers that pass it as an argument."""
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def init_cpu_distributed(launcher: str) -> bool:
    """Start a gloo process group for ``launcher='pytorch'`` on a machine without CUDA.

    mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device``
    unconditionally (STACK.md §4); once a group exists, the Runner skips its own
    ``init_dist``. Reads ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT``
    as set by ``torchrun``. Returns whether it started (or found) a gloo group.
    """
    if launcher != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
                   if k not in os.environ]
        if missing:
            raise RuntimeError(
                f'--launcher pytorch needs {missing} in the environment; start the '
                'script with tools/dist_train.sh / dist_test.sh (torchrun)')
        dist.init_process_group(
            backend='gloo', rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']))
    return True


def shutdown_distributed() -> None:
    """Destroy the default process group, if any, before the process exits.

    torch >= 2.14 aborts a gloo process (``terminate called without an active
    exception``, SIGABRT) whose process group is still alive at interpreter exit;
    mmengine 0.10.7 never destroys it.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def prepare_cfg(cfg: Config, *, config_path: str, launcher: str = 'none',
                work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                amp: bool = False) -> Config:
    """Apply the command-line overrides shared by train.py and test.py.

    Besides mmseg's ``--work-dir`` / ``--cfg-options`` / ``--amp`` handling it
    applies the ``tiny_run`` key (:func:`~mmctx.utils.tiny_run.tiny_run`), rewrites
    SyncBN according to the ``syncbn_to_bn`` key (see
    :func:`~mmctx.utils.config.resolve_syncbn_switch`; default: only without CUDA)
    and, for CPU distributed runs, makes DDP wrap a CPU model (``device_ids=None``).
    """
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])

    tiny = check_tiny_run(cfg.get('tiny_run', None))
    if tiny is not None:
        notes = tiny_run(cfg, **tiny)
        print_log('tiny_run: ' + '; '.join(notes), logger='current')

    cuda = torch.cuda.is_available()
    target = resolve_syncbn_switch(cfg.get('syncbn_to_bn', None), cuda)
    if target is not None:
        n = syncbn_to_bn(cfg._cfg_dict, target)
        if n:
            print_log(f'syncbn_to_bn: replaced {n} SyncBN config(s) by {target}'
                      + ('' if cuda else ' (no CUDA available)'), logger='current')

    if amp:
        _enable_amp(cfg, cuda)

    if launcher != 'none' and not cuda:
        wrapper: Any = cfg.get('model_wrapper_cfg', None)
        if wrapper is None:
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None,
                broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
        else:
            wrapper['device_ids'] = None
    return cfg


def _enable_amp(cfg: Config, cuda: bool) -> None:
    if not cuda:
        raise RuntimeError(
            '--amp needs a GPU: mmengine 0.10.7\'s AmpOptimWrapper only runs on '
            'gpu/npu/mlu/musa. On CPU, train in fp32 (drop --amp).')
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in your config.',
                  logger='current', level=logging.WARNING)
    elif optim_wrapper == 'OptimWrapper':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        raise ValueError('--amp works when optim_wrapper.type is OptimWrapper or '
                         f'AmpOptimWrapper, got {optim_wrapper!r}')
