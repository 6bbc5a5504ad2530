"""Parameters and FLOPs of a config, per mmctx block, attention matmuls included.

    python tools/analysis/complexity.py CONFIG [--shape H W] [--clip-len T] [--out-dir DIR]
    python tools/analysis/complexity.py --gcnet-check      # GCNet's ResNet-50 numbers

Works for mmseg segmentors, mmdet detectors and mmaction2 recognizers (the config's
model decides). Default --shape per task: segmentation 512 1024, detection 800 1333
(padded as the data preprocessor pads), recognition 224 224 with --clip-len frames
(default: the test pipeline's SampleFrames clip_len, else 32). Writes
DIR/complexity.md and DIR/complexity.png (MACs per block, attention part highlighted).
Counts follow fvcore/mmengine: one multiply-add = one MAC; the report also gives
FLOPs = 2 × MACs. mmengine's counter alone misses the attention of mmctx's blocks (no
handle for scaled_dot_product_attention); this tool adds it.
"""
import os
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import add_output_args, tool_parser, written  # noqa: E402


def build_from_config(path: str, cfg_options=None):
    """The config's model (SyncBN → BN, no pretrained weights) and the config."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    import mmctx  # noqa: F401
    from mmctx.utils import syncbn_to_bn
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    syncbn_to_bn(cfg._cfg_dict)
    if 'pretrained' in cfg.model:
        cfg.model.pretrained = None
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    return MODELS.build(cfg.model), cfg


def config_clip_len(cfg, default: int = 32) -> int:
    """``clip_len`` of the first ``SampleFrames`` in the test (or val) pipeline."""
    for key in ('test_pipeline', 'val_pipeline'):
        for step in cfg.get(key, None) or []:
            if isinstance(step, dict) and step.get('type') == 'SampleFrames':
                return int(step.get('clip_len', default))
    return default


class _ImageNetResNet50(torch.nn.Module):
    """mmdet's ResNet-50 (Caffe style: stride in the 1×1 conv, as GCNet's counts) + fc."""

    def __init__(self, plugins=None):
        super().__init__()
        from mmdet.registry import MODELS
        self.backbone = MODELS.build(dict(
            type='mmdet.ResNet', depth=50, out_indices=(3, ), style='caffe',
            norm_cfg=dict(type='BN'), plugins=plugins))
        self.fc = torch.nn.Linear(2048, 1000)

    def forward(self, x):
        return self.fc(self.backbone(x)[0].mean((2, 3)))


def gcnet_check() -> str:
    from mmctx.analysis import count_complexity
    x = (torch.randn(1, 3, 224, 224), )
    base = count_complexity(_ImageNetResNet50(), x)
    gc = count_complexity(_ImageNetResNet50([dict(
        cfg=dict(type='mmctx.GlobalContextBlock', ratio=1. / 16),
        stages=(False, True, True, True), position='after_conv3')]), x)
    extra_p = gc['params'] - base['params']
    extra_m = 100 * (gc['macs'] - base['macs']) / base['macs']
    return '\n'.join([
        '# GCNet check: ResNet-50, ImageNet, 224×224', '',
        '| | GCNet paper (reference) | mmctx count |', '|---|---|---|',
        f'| ResNet-50 params | 25.56 M | {base["params"] / 1e6:.2f} M |',
        f'| ResNet-50 "FLOPs" (MACs) | ~3.86 G | {base["macs"] / 1e9:.2f} GMACs '
        f'({2 * base["macs"] / 1e9:.2f} GFLOPs) |',
        f'| + GC r16, every bottleneck of c3–c5 ({len(gc["blocks"])} blocks): params | '
        f'~+2.52 M | +{extra_p / 1e6:.2f} M |',
        f'| + GC r16: compute | ~+0.26 % | +{extra_m:.2f} % |', '',
        'mmctx counts batch norm (and LayerNorm) multiply-adds as fvcore does, and no '
        'softmax / sigmoid / element-wise ops; GCNet\'s counter differs on those small '
        'terms, hence 3.88 vs ~3.86 G and +0.21–0.22 % vs ~+0.26 %.']) + '\n'


def plot(result, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    blocks = result['blocks']
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(blocks) + 2), 3.5))
    names = [b['name'] for b in blocks]
    other = [(b['macs'] - b['attention_macs']) / 1e9 for b in blocks]
    attn = [b['attention_macs'] / 1e9 for b in blocks]
    ax.bar(names, other, label='projections / transforms')
    ax.bar(names, attn, bottom=other, label='attention (missed by mmengine alone)')
    ax.set_ylabel('GMACs')
    ax.set_title(f'{result["macs"] / 1e9:.2f} GMACs in all, '
                 f'{result["params"] / 1e6:.2f} M params')
    ax.tick_params(axis='x', labelrotation=60, labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = tool_parser(__doc__)
    parser.add_argument('config', nargs='?', help='an mmseg/mmdet/mmaction config')
    parser.add_argument('--shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='input height and width (default: per task, see above)')
    parser.add_argument('--clip-len', type=int, default=None, metavar='T',
                        help='frames per clip for video recognizers')
    add_output_args(parser, default='work_dirs/complexity',
                    example='model.backbone.depth=101')
    parser.add_argument('--gcnet-check', action='store_true',
                        help="compare with GCNet's ResNet-50 numbers instead")
    args = parser.parse_args(argv)
    if args.gcnet_check:
        import mmctx  # noqa: F401
        text = gcnet_check()
        os.makedirs(args.out_dir, exist_ok=True)
        path = osp.join(args.out_dir, 'gcnet_check.md')
        with open(path, 'w') as f:
            f.write(text)
        print(text)
        written(path)
        return 0
    if args.config is None:
        parser.error('give a CONFIG (or --gcnet-check)')
    if not osp.isfile(args.config):
        parser.error(f'no such config: {args.config}')
    if args.shape is not None and min(args.shape) < 1:
        parser.error(f'--shape takes a positive H W, got {args.shape}')
    if args.clip_len is not None and args.clip_len < 1:
        parser.error(f'--clip-len must be >= 1, got {args.clip_len}')
    from mmctx.analysis import complexity_report, count_model_complexity
    model, cfg = build_from_config(args.config, args.cfg_options)
    clip_len = args.clip_len or config_clip_len(cfg)
    try:
        result = count_model_complexity(model, args.shape, clip_len)
    except TypeError as e:
        parser.error(str(e))
    except RuntimeError as e:  # e.g. an input too small for the network's poolings
        parser.error(f'the model does not run on this input (--shape {args.shape}, '
                     f'--clip-len {clip_len}): {str(e).splitlines()[0]}')
    text = complexity_report(result, osp.basename(args.config))
    os.makedirs(args.out_dir, exist_ok=True)
    md, png = osp.join(args.out_dir, 'complexity.md'), osp.join(args.out_dir,
                                                                'complexity.png')
    with open(md, 'w') as f:
        f.write(text)
    plot(result, png)
    print(text)
    written(md, png)
    return 0


if __name__ == '__main__':
    sys.exit(main())
