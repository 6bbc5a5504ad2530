"""README command 1: a short smoke run of a context model on CPU.

Generates a tiny Cityscapes (real on-disk layout) if missing, trains mmseg's FCN
with mmctx Global Context blocks in the backbone through mmengine's Runner
(tools/train.py), validates with mmseg's IoUMetric and prints where everything went.
The ContextShapes demo of a later issue will replace this smoke run.
"""
import argparse
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'smoke',
                  'gcb-r4-plugin_r50w16-d8_1xb2-20iter_cityscapes-64x128.py')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'tiny_cityscapes'))
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    parser.add_argument('--iters', type=int, default=20, help='training iterations')
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error(f'--iters must be >= 1, got {args.iters}')

    from mmctx.testing import make_cityscapes
    if not osp.isdir(osp.join(args.data_root, 'leftImg8bit')):
        print(f'[demo] writing a tiny Cityscapes to {args.data_root}', flush=True)
        make_cityscapes(args.data_root, splits=dict(train=8, val=4), size=(128, 256))
    start = time.time()
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), CONFIG,
           '--work-dir', args.work_dir, '--cfg-options',
           f'train_cfg.max_iters={args.iters}', f'train_cfg.val_interval={args.iters}',
           f'param_scheduler.0.end={args.iters}'] + [
               f'{s}_dataloader.dataset.data_root={args.data_root}'
               for s in ('train', 'val', 'test')]
    print('[demo] training:', ' '.join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        print(f'[demo] training failed (exit {rc}); the log is under {args.work_dir}')
        return rc
    print(f'[demo] done in {time.time() - start:.0f} s: log, checkpoint and metrics '
          f'in {args.work_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
