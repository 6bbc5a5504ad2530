"""Test (evaluate) a checkpoint with mmengine's Runner.

The same flags as mmseg's tools/test.py (``--out`` dumps the raw predictions with
mmengine's ``DumpResults``). Works for mmseg, mmdet and mmaction2 configs, on GPUs
and on CPU (see tools/train.py).
"""
import os.path as _osp
import sys as _sys

_sys.path.insert(0, _osp.dirname(_osp.abspath(__file__)))
import _quiet  # noqa: E402  first: hides the known upstream deprecation warnings

import argparse
import os.path as osp

from mmengine.config import Config
from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmctx  # noqa: F401  (safe checkpoint loading, registries)
from mmctx.utils import (add_launch_args, init_cpu_distributed, parse_launch_args,
                         prepare_cfg, shutdown_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    _quiet.add_flag(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file')
    parser.add_argument('--show-dir', help='save drawn predictions in this directory')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (the config\'s tta_model/tta_pipeline)')
    add_launch_args(parser)
    return parse_launch_args(parser)


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    prepare_cfg(cfg, config_path=args.config, launcher=args.launcher,
                work_dir=args.work_dir, cfg_options=args.cfg_options)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        hook = cfg.get('default_hooks', {}).get('visualization', None)
        if hook is None:
            raise ValueError('--show-dir needs default_hooks.visualization in the config')
        hook['draw'] = True
        cfg.visualizer['save_dir'] = args.show_dir
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    init_cpu_distributed(args.launcher)
    try:
        runner = (Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg))
        _quiet.filter_logger(runner.logger)
        if args.out:
            out = osp.abspath(args.out)
            if not out.endswith(('.pkl', '.pickle')):
                raise ValueError(f'--out must end with .pkl or .pickle, got {args.out!r}')
            runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))
        runner.test()
    finally:
        shutdown_distributed()


if __name__ == '__main__':
    main()
