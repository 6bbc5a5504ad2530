"""Arguments and model loading shared by the attention-analysis CLIs."""
import argparse
import os.path as osp
import sys
from typing import Optional

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import _quiet  # noqa: E402  first: hides the known upstream deprecation warnings


def tool_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description and epilog come from the tool's docstring."""
    parser = argparse.ArgumentParser(
        description=doc.split('\n\n')[0],
        epilog=doc.split('\n\n', 1)[1] if '\n\n' in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _quiet.add_flag(parser)
    return parser


def add_output_args(parser: argparse.ArgumentParser, default: Optional[str] = None,
                    example: str = 'test_pipeline.1.scale="(1024,512)" to analyse '
                    'smaller images') -> None:
    """``--out-dir`` (required without a default) and ``--cfg-options``: the same
    names in every analysis tool."""
    from mmengine.config import DictAction
    if default is None:
        parser.add_argument('--out-dir', required=True, help='where the .md and .png go')
    else:
        parser.add_argument('--out-dir', default=default,
                            help='where the .md and .png go (default: %(default)s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help=f'override config entries, e.g. {example}')


def written(*paths: str) -> None:
    """The last line of every tool: the full path of each file it wrote."""
    print('written: ' + ', '.join(paths))


def base_parser(doc: str) -> argparse.ArgumentParser:
    parser = tool_parser(doc)
    parser.add_argument('config', help='the mmseg config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='a checkpoint (.pth) of that config')
    add_output_args(parser)
    parser.add_argument('--device', default='cpu')
    return parser


def add_image_set_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--images', metavar='GLOB', help='image files, e.g. "demo/*.png"')
    src.add_argument('--split', choices=['train', 'val', 'test'],
                     help="images of the config's {split}_dataloader")
    parser.add_argument('--num-images', type=int, default=16,
                        help='use at most this many images (default: 16)')


def load(parser: argparse.ArgumentParser, args):
    """Check the input files and load the model; parser errors for bad input."""
    for what in ('config', 'checkpoint'):
        if not osp.isfile(getattr(args, what)):
            parser.error(f'no such {what} file: {getattr(args, what)}')
    from mmctx.analysis import context_blocks, load_segmentor
    try:
        model = load_segmentor(args.config, args.checkpoint, args.device, args.cfg_options)
        blocks = context_blocks(model)
    except (ValueError, TypeError, KeyError) as e:
        parser.error(str(e))
    print(f'{len(blocks)} mmctx block(s): ' + ', '.join(
        f'{n} ({type(b).__name__})' for n, b in blocks.items()), flush=True)
    return model


def images_or_exit(parser, model, args):
    from mmctx.analysis import resolve_images
    if args.num_images is not None and args.num_images < 1:
        parser.error(f'--num-images must be >= 1, got {args.num_images}')
    try:
        return resolve_images(model, args.images, args.split, args.num_images)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))


def fail(message: str) -> int:
    print(f'error: {message}', file=sys.stderr)
    return 2
