"""GCNet's query-independence statistics (its Table 1) for every mmctx block.

    python tools/analysis/query_independence.py CONFIG CHECKPOINT \
        (--images GLOB | --split val) [--num-images N] [--num-queries K] --out-dir DIR

Over the images: the mean cosine distance and Jensen-Shannon divergence between the
attention maps of K random query positions (for DNL the effective map pairwise +
unary, and the pairwise term alone), and the mean cosine distance between the block's
input features and between its outputs before fusion at those positions. Writes
DIR/query_independence.md (one row per block) and DIR/query_independence.png.
A query-independent block (unary-only, GC, SNL, SE) scores exactly 0.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (add_image_set_args, base_parser, fail, images_or_exit,  # noqa
                     load, written)


def main(argv=None) -> int:
    parser = base_parser(__doc__)
    add_image_set_args(parser)
    parser.add_argument('--num-queries', type=int, default=64,
                        help='query positions drawn per image and block (default: 64)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_queries < 2:
        parser.error(f'--num-queries must be >= 2, got {args.num_queries}')
    model = load(parser, args)
    images = images_or_exit(parser, model, args)
    print(f'{len(images)} image(s)', flush=True)
    from mmctx.analysis import query_independence, write_query_independence
    try:
        rows = query_independence(model, images, num_queries=args.num_queries,
                                  seed=args.seed, progress=True)
    except ValueError as e:
        return fail(str(e))
    md, png = write_query_independence(rows, args.out_dir, osp.basename(args.config))
    print(open(md).read())
    written(md, png)
    return 0


if __name__ == '__main__':
    sys.exit(main())
