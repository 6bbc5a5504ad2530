"""Train a segmentor / detector / recognizer with mmengine's Runner.

The same flags as mmseg's tools/train.py. Works for mmseg, mmdet and mmaction2
configs (the config's ``default_scope`` picks the registries), on GPUs and on CPU
(``--launcher pytorch`` without CUDA uses gloo; SyncBN becomes BN unless the config
sets ``syncbn_to_bn=False``).
"""
import os.path as _osp
import sys as _sys

_sys.path.insert(0, _osp.dirname(_osp.abspath(__file__)))
import _quiet  # noqa: E402  first: hides the known upstream deprecation warnings

import argparse

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmctx  # noqa: F401  (safe checkpoint loading, registries)
from mmctx.utils import (add_launch_args, init_cpu_distributed, parse_launch_args,
                         prepare_cfg, shutdown_distributed)
from mmctx.utils.pretrained import is_download_error, offline_message


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model (seg / det / video)')
    parser.add_argument('config', help='train config file path')
    _quiet.add_flag(parser)
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', action='store_true', default=False,
        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training (GPU only)')
    add_launch_args(parser)
    return parse_launch_args(parser)


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    prepare_cfg(cfg, config_path=args.config, launcher=args.launcher,
                work_dir=args.work_dir, cfg_options=args.cfg_options, amp=args.amp)
    cfg.resume = args.resume
    init_cpu_distributed(args.launcher)
    try:
        runner = (Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg))
        _quiet.filter_logger(runner.logger)
        runner.train()
    except Exception as e:  # noqa: B902  only a failed download is turned into a line
        if not is_download_error(e):
            raise
        print(offline_message(cfg, e), file=_sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    return 0


if __name__ == '__main__':
    _sys.exit(main())
