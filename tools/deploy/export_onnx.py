"""Export an mmseg segmentor or a single mmctx block to ONNX, then check it against PyTorch.

    # a segmentor: its tensor path (decode-head logits), weights from CKPT
    python tools/deploy/export_onnx.py CONFIG [CKPT] --shape H W --out FILE [--dynamic]
    # one block, built with its defaults (--block-args for others), random weights
    python tools/deploy/export_onnx.py --block mmctx.NonLocalBlock --in-channels 16 \\
        --shape 32 32 --out nl.onnx [--block-args mode=concatenation] [--dim 2] [--dynamic]

The check runs the ONNX file with onnxruntime and the model with PyTorch on random
inputs of --batch x C x --shape (and, with --dynamic, on a second batch and size inside
the exported bounds) and prints the max absolute and relative difference (max|onnx -
torch| / max|torch|) of each; a relative difference above --rtol (default 1e-4) fails.

Segmentor mode: the input is what the data preprocessor outputs (normalised images, N x
3 x H x W), the output the decode head's logits at its own resolution; without CKPT the
initial weights are exported (--random-weights draws them all, so that the blocks' zero-
initialised layers do not hide their context path from the check). Block mode: the
weights are always random (--seed).

Exit status: 0 exported and checked; 1 the check failed (the file is kept); 2 the model
cannot be exported as asked (the message names the module and why) or bad arguments.
Needs the deploy extra: pip install -e ".[deploy]" (onnx, onnxruntime, onnxscript).
"""
import os.path as _osp
import sys as _sys

_sys.path.insert(0, _osp.join(_osp.dirname(_osp.dirname(_osp.abspath(__file__))), 'analysis'))
from _common import fail, tool_parser, written  # noqa: E402  (imports tools/_quiet first)

import os.path as osp  # noqa: E402
import sys  # noqa: E402
from typing import List, Optional  # noqa: E402


def parse_args(argv: Optional[List[str]] = None):
    from mmengine.config import DictAction
    parser = tool_parser(__doc__)
    parser.add_argument('config', nargs='?', help='mmseg config of a segmentor (not with --block)')
    parser.add_argument('checkpoint', nargs='?', help='its checkpoint (.pth); optional')
    parser.add_argument('--block', metavar='TYPE',
                        help='export one registered block instead, e.g. mmctx.NonLocalBlock')
    parser.add_argument('--in-channels', type=int, default=16,
                        help='block mode: in_channels (default: %(default)s)')
    parser.add_argument('--dim', type=int, choices=(1, 2, 3), default=2,
                        help='block mode: spatial rank (default: %(default)s)')
    parser.add_argument('--block-args', nargs='+', action=DictAction, default={},
                        metavar='KEY=VALUE', help='block mode: other block arguments, '
                        'e.g. mode=concatenation reduction=4')
    parser.add_argument('--shape', type=int, nargs='+', required=True, metavar='S',
                        help='spatial size of the example input: H W (block mode: one '
                        'size per --dim axis, e.g. T H W for --dim 3)')
    parser.add_argument('--batch', type=int, default=1, help='batch of the example input')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch and spatial size (bounds are printed)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--rtol', type=float, default=1e-4,
                        help='largest accepted relative difference (default: %(default)g)')
    parser.add_argument('--random-weights', action='store_true',
                        help='segmentor mode: draw every weight at random (not with CKPT)')
    parser.add_argument('--seed', type=int, default=0, help='of the weights and inputs')
    parser.add_argument('--opset', type=int, default=None, help="ONNX opset (default: "
                        "the exporter's)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='segmentor mode: override config entries, e.g. '
                        'model.decode_head.block.rand_init=False')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.block is None):
        parser.error('give either CONFIG (a segmentor) or --block TYPE (one block)')
    if args.block is not None:
        rank = args.dim
        for name in ('checkpoint', 'cfg_options'):
            if getattr(args, name):
                parser.error(f'--{name.replace("_", "-")} is for segmentor mode, not --block')
        if args.random_weights:
            parser.error('--random-weights is for segmentor mode (block weights are '
                         'always random)')
    else:
        rank = 2
        if not osp.isfile(args.config):
            parser.error(f'no such config file: {args.config}')
        if args.checkpoint is not None and not osp.isfile(args.checkpoint):
            parser.error(f'no such checkpoint file: {args.checkpoint}')
        if args.checkpoint is not None and args.random_weights:
            parser.error('--random-weights replaces the weights: give no CKPT with it')
    if len(args.shape) != rank:
        what = 'H W' if rank == 2 else ('L' if rank == 1 else 'T H W')
        parser.error(f'--shape needs {rank} size(s) ({what}), got {args.shape}')
    if min(args.shape) < 1 or args.batch < 1 or args.in_channels < 1:
        parser.error('--shape, --batch and --in-channels must be >= 1')
    if not args.rtol > 0:
        parser.error(f'--rtol must be > 0, got {args.rtol}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from mmctx.deploy import (ExportError, OnnxMismatchError, build_block_for_export,
                              check_onnx, export_onnx, load_segmentor_for_export,
                              other_size, random_weights)
    from mmctx.deploy.onnx import require_onnx
    try:
        require_onnx()
    except ImportError as e:
        return fail(str(e))
    try:
        if args.block is not None:
            model = random_weights(build_block_for_export(
                args.block, args.in_channels, args.dim, **args.block_args), seed=args.seed)
            channels, what = args.in_channels, args.block
        else:
            model = load_segmentor_for_export(args.config, args.checkpoint, args.cfg_options)
            if args.random_weights:
                random_weights(model, seed=args.seed)
            channels, what = 3, osp.basename(args.config)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        return fail(str(e))
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, channels, *args.shape, generator=gen)
    try:
        export = export_onnx(model, x, args.out, dynamic=args.dynamic,
                             opset_version=args.opset)
    except (ExportError, ValueError) as e:
        return fail(str(e))
    print(f'exported {what} ({export.describe()}) to {args.out}', flush=True)
    inputs = [x]
    second = other_size(export)
    if second is not None:
        inputs.append(torch.randn(*second, generator=gen))
    try:
        for diff in check_onnx(args.out, model, inputs, rtol=args.rtol):
            print(f'check {diff.describe()} (tolerance {args.rtol:g})')
    except OnnxMismatchError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    written(args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
