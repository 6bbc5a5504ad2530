"""The share of each context term (DNL: pairwise vs unary) in every mmctx block.

    python tools/analysis/term_shares.py CONFIG CHECKPOINT \
        (--images GLOB | --split val) [--num-images N] --out-dir DIR

share of term t = M_t / sum of M, with M_t the mean over images and positions of the
norm of the term's contribution to the block output before fusion (see
mmctx.analysis.term_shares). Blocks with one term are not listed. Writes
DIR/term_shares.md (one row per block with several terms) and DIR/term_shares.png.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (add_image_set_args, base_parser, fail, images_or_exit,  # noqa
                     load, written)


def main(argv=None) -> int:
    parser = base_parser(__doc__)
    add_image_set_args(parser)
    args = parser.parse_args(argv)
    model = load(parser, args)
    images = images_or_exit(parser, model, args)
    print(f'{len(images)} image(s)', flush=True)
    from mmctx.analysis import term_shares, write_term_shares
    try:
        rows = term_shares(model, images, progress=True)
    except ValueError as e:
        return fail(str(e))
    md, png = write_term_shares(rows, args.out_dir, osp.basename(args.config))
    print(open(md).read())
    written(md, png)
    return 0


if __name__ == '__main__':
    sys.exit(main())
