"""Attention maps of every mmctx block of a segmentor at given query points.

    python tools/analysis/attention_maps.py CONFIG CHECKPOINT IMAGE \
        --query Y X [--query Y X ...] --out-dir DIR

Writes DIR/attention_maps.png (one row per block: the image with the queries marked,
the pairwise map of each query, the unary map — the DNL paper's figure) and
DIR/attention_maps.md (query → feature position, peak of each map). Queries are pixel
coordinates (row y, column x) of the original image. The maps come from the blocks'
explicit path, re-run by forward hooks: no model code changes.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import base_parser, fail, load, written  # noqa: E402


def main(argv=None) -> int:
    parser = base_parser(__doc__)
    parser.add_argument('image', help='an image file')
    parser.add_argument('--query', type=int, nargs=2, action='append', required=True,
                        metavar=('Y', 'X'), help='a query point in image pixels (repeat)')
    args = parser.parse_args(argv)
    if not osp.isfile(args.image):
        parser.error(f'no such image file: {args.image}')
    model = load(parser, args)
    from mmctx.analysis import attention_maps
    try:
        md, png = attention_maps(model, args.image, args.query, args.out_dir,
                                 title=osp.basename(args.config))
    except ValueError as e:
        return fail(str(e))
    print(open(md).read())
    written(md, png)
    return 0


if __name__ == '__main__':
    sys.exit(main())
