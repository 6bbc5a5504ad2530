"""DNL's consistency statistics for every block with a pairwise and/or unary term.

    python tools/analysis/consistency.py CONFIG CHECKPOINT \
        (--split val | --images GLOB --labels GLOB) [--num-images N] \
        [--num-queries K] [--radii 1 2 3] --out-dir DIR

For each block: the attention mass of the pairwise map on the query's own category and
of the unary map on ground-truth boundaries (and the cross terms), each beside its
chance level, and the Pearson correlation of map and mask — mmctx's protocol (the DNL
paper's could not be found; see mmctx/analysis/consistency.py). Plain NL blocks are
split by the paper's identity into a whitened pairwise part and a unary part. Label
maps come from the config's split (``--split``) or from ``--labels`` (sorted, one per
image). Writes DIR/consistency.md and DIR/consistency.png.
"""
import glob
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import base_parser, fail, load, written  # noqa: E402


def main(argv=None) -> int:
    parser = base_parser(__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--split', choices=['train', 'val', 'test'],
                     help="images and label maps of the config's {split}_dataloader")
    src.add_argument('--images', metavar='GLOB', help='image files (needs --labels)')
    parser.add_argument('--labels', metavar='GLOB',
                        help='label maps, sorted to pair with the sorted --images')
    parser.add_argument('--num-images', type=int, default=16,
                        help='use at most this many images (default: 16)')
    parser.add_argument('--num-queries', type=int, default=1024,
                        help='valid query positions sampled per image (default: 1024)')
    parser.add_argument('--radii', type=int, nargs='+', default=[1, 2, 3],
                        help='boundary radii in feature cells (default: 1 2 3)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if (args.images is None) != (args.labels is None):
        parser.error('--images and --labels go together')
    if args.num_images < 1 or args.num_queries < 1 or min(args.radii) < 1:
        parser.error('--num-images, --num-queries and --radii must be >= 1')
    model = load(parser, args)
    from mmctx.analysis.consistency import consistency, labelled_split, write_consistency
    if args.split:
        try:
            images, labels = labelled_split(model, args.split, args.num_images)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
    else:
        images = sorted(glob.glob(args.images))[:args.num_images]
        labels = sorted(glob.glob(args.labels))[:args.num_images]
        if not images or len(images) != len(labels):
            parser.error(f'--images matches {len(images)} file(s), --labels {len(labels)}: '
                         'give one label map per image')
    print(f'{len(images)} image(s)', flush=True)
    try:
        rows = consistency(model, images, labels, radii=args.radii,
                           num_queries=args.num_queries, seed=args.seed, progress=True)
    except ValueError as e:
        return fail(str(e))
    md, png = write_consistency(rows, args.out_dir, osp.basename(args.config), args.radii)
    print(open(md).read())
    written(md, png)
    return 0


if __name__ == '__main__':
    sys.exit(main())
