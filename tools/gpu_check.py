"""The GPU check in one command (issue #15 §5): blocks against upstream, and one SyncBN step.

On a CUDA machine, in a few minutes::

    bash tools/gpu_check.sh                     # = python tools/gpu_check.py

1. the blocks against their upstream implementations with the same weights (mmctx
   ``NonLocalBlock`` vs mmcv ``NonLocal2d``, ``DisentangledNonLocalBlock`` vs mmseg's
   ``DisentangledNonLocal2d``, ``GlobalContextBlock`` vs mmcv ``ContextBlock``; built by
   ``tools/benchmark_blocks.py``) at 128×256, C=512, batch 1, in fp32 and under bf16
   autocast, inference and forward+backward: median time over CUDA-synchronised calls
   and peak allocated memory above the inputs (``torch.cuda.max_memory_allocated``), with
   the ratios mmctx / upstream and the max abs difference of the outputs;
2. one training iteration of ``configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py``
   with its SyncBN on one GPU, through ``tools/dist_train.sh CONFIG 1`` (nccl) on a tiny
   generated Cityscapes at full resolution (``tiny_run=dict(factor=1, iters=1)``: no
   pretrained weights, 1 iteration + validation);

and prints one Markdown table (also written to ``--out``). Without CUDA it stops at once
with exit code 2, unless ``--device cpu`` is given (the same code on the CPU at the sizes
you pass: how the test suite checks this script; step 2 is then skipped). Nothing in CI
needs a GPU.
"""
import os.path as _osp
import sys as _sys

_sys.path.insert(0, _osp.dirname(_osp.abspath(__file__)))
import _quiet  # noqa: E402  first: hides the known upstream deprecation warnings

import argparse
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PAIRS = {'nl': 'NonLocalBlock vs mmcv NonLocal2d',
         'dnl': 'DisentangledNonLocalBlock vs mmseg DisentangledNonLocal2d',
         'gc': 'GlobalContextBlock vs mmcv ContextBlock'}
DTYPES = ('fp32', 'bf16')
MODES = ('infer', 'train')
TRAIN_CONFIG = 'configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py'


def _sync(device: str) -> None:
    import torch
    if device == 'cuda':
        torch.cuda.synchronize()


def measure(pair: str, impl: str, dtype: str, mode: str, size, channels: int,
            device: str, repeats: int) -> dict:
    """Median time (s), peak memory above the input (MiB) and the output of one setting."""
    import torch
    from benchmark_blocks import _build
    model = _build(pair, impl, channels).to(device)
    model.train(mode == 'train')
    torch.manual_seed(1)
    x = torch.randn(1, channels, *size, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=dtype == 'bf16')

    def step():
        if mode == 'train':
            xi = x.detach().requires_grad_()
            with autocast:
                out = model(xi)
            out.float().sum().backward()
        else:
            with torch.inference_mode(), autocast:
                out = model(x)
        return out.detach().float()

    step()  # warm-up (kernel selection, allocator)
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    out = step()
    _sync(device)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == 'cuda' else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return dict(time_s=statistics.median(times), peak_mib=peak, out=out.cpu())


def block_table(args) -> list:
    lines = [f'| block (mmctx vs upstream) | dtype | mode | mmctx ms | upstream ms | '
             f'time ratio | mmctx MiB | upstream MiB | memory ratio | max abs diff |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for pair in args.pairs:
        for dtype in args.dtypes:
            for mode in MODES:
                got = {impl: measure(pair, impl, dtype, mode, args.size, args.channels,
                                     args.device, args.repeats)
                       for impl in ('mmctx', 'upstream')}
                ours, up = got['mmctx'], got['upstream']
                diff = (ours['out'] - up['out']).abs().max().item()
                mem = (f"{ours['peak_mib']:.0f} | {up['peak_mib']:.0f} | "
                       f"{ours['peak_mib'] / max(up['peak_mib'], 1e-9):.2f}"
                       if ours['peak_mib'] is not None else '— | — | —')
                lines.append(
                    f"| {PAIRS[pair]} | {dtype} | {mode} | {ours['time_s'] * 1e3:.2f} | "
                    f"{up['time_s'] * 1e3:.2f} | {ours['time_s'] / up['time_s']:.2f} | "
                    f'{mem} | {diff:.2e} |')
                print(lines[-1], flush=True)
    return lines


def train_step(args) -> list:
    """One SyncBN training iteration of the DNL Cityscapes config on one GPU (nccl)."""
    from mmctx.testing.tiny_data import make_cityscapes
    work = tempfile.mkdtemp(prefix='mmctx-gpu-check-')
    data_root = make_cityscapes(osp.join(work, 'cityscapes'), size=(1024, 2048))
    tiny = f"dict(factor=1,iters=1,batch_size=2,data_root='{data_root}')"
    cmd = ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), osp.join(ROOT, TRAIN_CONFIG),
           '1', '--work-dir', osp.join(work, 'run'), '--cfg-options', f'tiny_run={tiny}']
    print('$ ' + ' '.join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    status = 'ok' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'
    if proc.returncode != 0:
        print('\n'.join(log.strip().splitlines()[-30:]), file=sys.stderr)
    return [f'SyncBN training iteration ({TRAIN_CONFIG}, 1 GPU, nccl, tiny Cityscapes '
            f'1024×2048, batch 2, crop 512×1024): {status} in {seconds:.0f} s '
            f'(process start, data, 1 iteration, validation); '
            f'log: {osp.join(work, "run")}']


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda',
                        help='cpu: the same block code on the CPU (tests; no step 2)')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 256), metavar=('H', 'W'))
    parser.add_argument('--channels', type=int, default=512)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--pairs', nargs='+', choices=tuple(PAIRS), default=list(PAIRS))
    parser.add_argument('--dtypes', nargs='+', choices=DTYPES, default=list(DTYPES))
    parser.add_argument('--skip-train', action='store_true', help='skip step 2')
    parser.add_argument('--out', default=osp.join(ROOT, 'work_dirs', 'gpu_check.md'))
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.channels < 2 or min(args.size) < 1:
        parser.error(f'--repeats >= 1, --channels >= 2 and --size >= 1 expected, got '
                     f'{args.repeats}, {args.channels}, {args.size}')

    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('gpu_check: no CUDA device visible to torch '
              f'{torch.__version__} (torch.cuda.is_available() is False); this check '
              'needs a GPU (use --device cpu to try the block part on the CPU)',
              file=sys.stderr)
        return 2
    name = (torch.cuda.get_device_name() if args.device == 'cuda'
            else f'CPU ({os.cpu_count()} logical cores)')
    start = time.time()
    head = [f'# mmctx GPU check — {name}, torch {torch.__version__}',
            '', f'Blocks at {args.size[0]}×{args.size[1]}, C={args.channels}, batch 1, '
            f'median of {args.repeats} calls; bf16 = torch.autocast(bfloat16).', '']
    print('\n'.join(head), flush=True)
    lines = head + block_table(args)
    if args.device == 'cuda' and not args.skip_train:
        lines += [''] + train_step(args)
    lines += ['', f'total {time.time() - start:.0f} s']
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines[-3:]))
    print(f'table: {args.out}')
    return 0 if all('FAILED' not in line for line in lines) else 1


if __name__ == '__main__':
    sys.exit(main())
