"""Train a segmentor / detector / recognizer with mmengine's Runner.

The same flags as mmseg's tools/train.py. Works for mmseg, mmdet and mmaction2
configs (the config's ``default_scope`` picks the registries), on GPUs and on CPU
(``--launcher pytorch`` without CUDA uses gloo; SyncBN becomes BN unless the config
sets ``syncbn_to_bn=False``).
"""
import argparse
import os

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmctx  # noqa: F401  (safe checkpoint loading, registries)
from mmctx.utils import init_cpu_distributed, prepare_cfg


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model (seg / det / video)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', action='store_true', default=False,
        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training (GPU only)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value pairs, e.g. '
        'train_cfg.max_iters=100 syncbn_to_bn=True')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    prepare_cfg(cfg, config_path=args.config, launcher=args.launcher,
                work_dir=args.work_dir, cfg_options=args.cfg_options, amp=args.amp)
    cfg.resume = args.resume
    init_cpu_distributed(args.launcher)
    runner = (Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg))
    runner.train()


if __name__ == '__main__':
    main()
