"""README command 1: what context blocks do, measured on ContextShapes in minutes on a CPU.

    python tools/demo.py                 # 15 models x 2 variants, ~25-30 min on 2 cores
    python tools/demo.py --quick         # 200 instead of 600 iterations per run
    python tools/demo.py --models baseline gcnet --variants global

Generates ContextShapes (mmctx/datasets/context_shapes.py) under ``--data-root`` if
missing, then trains and validates every model of ``configs/contextshapes/`` on both
variants through mmengine's Runner (mmseg's pipeline and ``IoUMetric``), one Runner
after another in this process, and writes ``WORK_DIR/report.md``: the measured mIoU
of every model x variant, wall times, the machine, and the analysis figures of the
trained models (attention maps, query independence, DNL term shares) as PNGs.
Each run keeps its checkpoint, ``vis_data/scalars.json`` and log under
``WORK_DIR/<model>-<variant>/``; ``WORK_DIR/results.json`` is rewritten after every
run, so an interrupted demo keeps what it measured.
"""
import os.path as _osp
import sys as _sys

_sys.path.insert(0, _osp.dirname(_osp.abspath(__file__)))
import _quiet  # noqa: E402  first: hides the known upstream deprecation warnings

import argparse
import contextlib
import glob
import io
import json
import logging
import os
import os.path as osp
import platform
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

#: model -> (what it is, the block) in the order of the report
MODELS = {
    'baseline': ('no context: FCN head with 1x1 convs', '—'),
    'nonlocal': ('Non-local, embedded Gaussian', 'NonLocalBlock'),
    'dnl': ('Disentangled NL (pairwise + unary)', 'DisentangledNonLocalBlock'),
    'dnl-pairwise': ('DNL pairwise term only', 'PairwiseNonLocalBlock'),
    'dnl-unary': ('DNL unary term only', 'UnaryNonLocalBlock'),
    'snl': ('Simplified NL', 'SimplifiedNonLocalBlock'),
    'gcnet': ('Global Context (r4)', 'GlobalContextBlock'),
    'lesa': ('LESA (unary conv + binary self-attention + gate)', 'LESABlock'),
    'a2net': ('A² (double attention)', 'DoubleAttentionBlock'),
    'emanet-t1': ('EMA, 1 EM iteration', 'EMABlock'),
    'emanet-t3': ('EMA, 3 EM iterations', 'EMABlock'),
    'glore': ('GloRe (graph reasoning)', 'GloReBlock'),
    'latentgnn': ('LatentGNN', 'LatentGNNBlock'),
    'cgnl': ('CGNL (dot-product kernel)', 'CGNLBlock'),
    'hamnet': ('Hamburger (NMF)', 'HamburgerBlock'),
    'ccnet': ('Criss-cross attention (2 passes)', 'CrissCrossBlock'),
    'danet': ('DANet position + channel attention', 'DualAttentionBlock'),
    'isanet': ('ISA (interlaced sparse attention)', 'InterlacedSparseBlock'),
    'ann': ('ANN APNB (pyramid-pooled keys)', 'AsymmetricNonLocalBlock'),
    'ocrnet': ('OCR (16 latent object regions)', 'ObjectContextBlock'),
    'psanet': ('PSANet (collect + distribute)', 'PointwiseSpatialBlock'),
    'apcnet': ('APCNet (adaptive context modules)', 'AdaptiveContextBlock'),
    'gcu': ('GCU (graph convolutional units)', 'GraphUnitBlock'),
    'dgmn': ('DGMN (dynamic sampled neighbourhoods)', 'DynamicGraphBlock'),
    'lrnet': ('Local relation 7x7 (a local control)', 'LocalRelationBlock'),
}
VARIANTS = ('global', 'paired')
#: what each variant needs, for the report
NEEDS = {'global': 'one image-level fact: query-independent context suffices',
         'paired': 'each object its own cue: query-specific (pairwise) context'}
#: iterations per run (the configs' own schedule) and of --quick
QUICK_ITERS = 200


def find_config(model: str, variant: str) -> str:
    pattern = osp.join(ROOT, 'configs', 'contextshapes',
                       f'{model}_tinyconv_*_contextshapes-{variant}.py')
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(f'expected one config matching {pattern}, found {found}')
    return found[0]


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f
                     if line.startswith('model name')]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return (f'{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} '
            f'({torch.get_num_threads()} threads), Python {platform.python_version()}, '
            f'{platform.system()} {platform.release()}')


class Progress:
    """A Runner hook printing one line every ``interval`` iterations and the val result."""

    priority = 'LOW'

    def __init__(self, tag: str, interval: int):
        from mmengine.hooks import Hook

        class _Hook(Hook):
            def after_train_iter(hook, runner, batch_idx, data_batch=None, outputs=None):
                it = runner.iter + 1
                if it % interval == 0 or it == runner.max_iters:
                    loss = (outputs['loss'].item() if outputs and 'loss' in outputs
                            else float('nan'))
                    print(f'    {tag}: iter {it:4d}/{runner.max_iters}  loss {loss:.3f}  '
                          f'{time.time() - self.start:5.1f} s', flush=True)

            def after_val_epoch(hook, runner, metrics=None):
                self.metrics = dict(metrics or {})

        self.hook = _Hook()
        self.start = time.time()
        self.metrics = {}


def train_one(model: str, variant: str, data_root: str, work_dir: str, iters, tag: str):
    """Train + validate one config with mmengine's Runner; return its result row."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmctx.utils import prepare_cfg
    config = find_config(model, variant)
    cfg = Config.fromfile(config)
    options = {f'{s}_dataloader.dataset.data_root': osp.join(data_root, variant)
               for s in ('train', 'val', 'test')}
    if iters is not None:
        options.update({'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
                        'param_scheduler.0.end': iters,
                        'default_hooks.checkpoint.interval': iters})
    run_dir = osp.join(work_dir, f'{model}-{variant}')
    prepare_cfg(cfg, config_path=config, work_dir=run_dir, cfg_options=options)
    cfg.log_level = 'INFO'  # the run's log file keeps everything (scalars: vis_data)
    cfg.experiment_name = f'{model}-{variant}-{time.strftime("%Y%m%d_%H%M%S")}'
    # mmengine reuses a visualizer of the same name: a fixed name (mmseg's default
    # runtime says 'visualizer') would send every run's scalars to the first run's dir
    cfg.visualizer.name = f'visualizer-{cfg.experiment_name}'
    max_iters = cfg.train_cfg.max_iters
    progress = Progress(tag, interval=max(max_iters // 4, 1))
    # the console shows the demo's own lines: mmengine's console handler (created with
    # the runner, which logs the environment at once) is silenced up to errors; the
    # run's log file keeps mmengine's full log
    with contextlib.redirect_stdout(io.StringIO()):
        runner = Runner.from_cfg(cfg)
    for handler in runner.logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setStream(sys.stdout)
            handler.setLevel(logging.ERROR)
    runner.register_hook(progress.hook, priority='LOW')
    runner.train()
    seconds = time.time() - progress.start
    metrics = progress.metrics
    ckpt = osp.join(run_dir, f'iter_{max_iters}.pth')
    return dict(model=model, variant=variant, config=osp.relpath(config, ROOT),
                iters=max_iters, seconds=round(seconds, 1),
                **{k: _float(metrics.get(k)) for k in ('mIoU', 'mAcc', 'aAcc')},
                checkpoint=ckpt if osp.isfile(ckpt) else None)


def _float(value):
    return None if value is None else float(value)


def fmt(value) -> str:
    return '—' if value is None else f'{value:.1f}'


def write_report(path: str, rows: list, figures: list, notes: list, wall: float,
                 command: str) -> None:
    by = {(r['model'], r['variant']): r for r in rows}
    variants = [v for v in VARIANTS if any(r['variant'] == v for r in rows)]
    lines = ['# mmctx demo: context blocks on ContextShapes', '',
             f'Measured by `{command}` on {time.strftime("%Y-%m-%d %H:%M %Z")}.', '',
             f'- machine: {machine()}',
             f'- wall time: {wall / 60:.1f} min in all (data, training, validation, analysis)',
             '- every number below was measured in this run (mmseg `IoUMetric` on the '
             'validation split, 4 classes: background, red, green, blue)', '',
             '## mIoU (%) per model and variant', '',
             '| model | block | ' + ' | '.join(f'{v} mIoU' for v in variants)
             + ' | iters | train + val time |',
             '|---|---|' + '---|' * len(variants) + '---|---|']
    for model, (what, block) in MODELS.items():
        got = [by.get((model, v)) for v in variants]
        if not any(got):
            continue
        iters = sorted({str(r['iters']) for r in got if r})
        secs = ' / '.join(f"{r['seconds']:.0f} s" if r else '—' for r in got)
        lines.append(f'| {model} — {what} | {block} | '
                     + ' | '.join(fmt(r and r['mIoU']) for r in got)
                     + f" | {', '.join(iters)} | {secs} |")
    lines += ['', 'Variants: ' + '; '.join(f'*{v}* — {NEEDS[v]}' for v in variants) + '.',
              'A context-free model cannot know any object\'s class (see '
              '`mmctx/datasets/context_shapes.py`): its mIoU stays near what background alone '
              'plus chance on the objects gives.', '']
    if figures:
        lines += ['## Analysis of the trained models', '']
        for title, png, md in figures:
            lines += [f'### {title}', '']
            if png:
                lines += [f'![{title}]({osp.relpath(png, osp.dirname(path))})', '']
            if md and osp.isfile(md):
                body = open(md).read().strip().splitlines()
                lines += [l for l in body if not l.startswith('# ')] + ['']
    if notes:
        lines += ['## Notes', ''] + [f'- {n}' for n in notes] + ['']
    lines += ['## Runs', '', '| run | config | checkpoint |', '|---|---|---|']
    for r in rows:
        ck = osp.relpath(r['checkpoint'], osp.dirname(path)) if r.get('checkpoint') else '—'
        lines.append(f"| {r['model']}-{r['variant']} | `{r['config']}` | `{ck}` |")
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def analyse(rows: list, data_root: str, out_dir: str, log) -> tuple:
    """Analysis figures of the trained models; returns (figures, notes)."""
    notes = []
    from mmctx import analysis

    def load(config, checkpoint):
        # mmseg's init_model prints every checkpoint it loads ("Loads checkpoint by
        # local backend ..."): the demo says what it analyses itself
        with contextlib.redirect_stdout(io.StringIO()):
            return analysis.load_segmentor(config, checkpoint)
    trained = {(r['model'], r['variant']): r for r in rows if r.get('checkpoint')}
    os.makedirs(out_dir, exist_ok=True)
    attention, independence, shares = [], [], []  # figures, in the report's order
    try:
        for variant in VARIANTS:
            images = sorted(glob.glob(osp.join(data_root, variant, 'img_dir', 'val',
                                               '*.png')))[:16]
            qi_rows = []
            for (name, v), r in trained.items():
                if v != variant or name == 'baseline':
                    continue
                # each checkpoint is loaded once, for every analysis of it
                net = load(osp.join(ROOT, r['config']), r['checkpoint'])
                log(f'analysis: query independence of {name} ({variant})')
                for row in analysis.query_independence(net, images):
                    qi_rows.append(dict(row, block=f"{name}: {row['block']}"))
                if name != 'dnl':
                    continue
                log(f'analysis: attention maps and term shares of DNL ({variant})')
                image, queries = _example(data_root, variant)
                png, md = _png_md(analysis.attention_maps(
                    net, image, queries, osp.join(out_dir, f'attention-dnl-{variant}')))
                attention.append((f'DNL attention at the objects ({variant}): pairwise and '
                                  'unary terms', png, md))
                png, md = _png_md(analysis.write_term_shares(
                    analysis.term_shares(net, images),
                    osp.join(out_dir, f'term-shares-dnl-{variant}')))
                shares.append((f'DNL term shares ({variant})', png, md))
            if qi_rows:
                png, md = _png_md(analysis.write_query_independence(
                    qi_rows, osp.join(out_dir, f'query-independence-{variant}')))
                independence.append((f'Query independence ({variant}, {len(images)} val '
                                     'images)', png, md))
    except Exception as e:  # noqa: BLE001  (the table is kept whatever the analysis does)
        notes.append(f'analysis stopped: {type(e).__name__}: {e}')
        log(f'analysis stopped: {type(e).__name__}: {e}')
    return attention + independence + shares, notes


def _png_md(paths):
    """(png, md) from the paths an analysis writer returns."""
    return (next(p for p in paths if p.endswith('.png')),
            next(p for p in paths if p.endswith('.md')))


def _example(data_root: str, variant: str):
    """A validation image with its object centres as query points (y, x)."""
    with open(osp.join(data_root, variant, 'meta.json')) as f:
        meta = json.load(f)
    from mmctx.datasets.context_shapes import make_sample
    import numpy as np
    from mmctx.datasets.context_shapes import VARIANTS as ALL
    rng = np.random.RandomState([meta['seed'], 1, 0, ALL.index(variant)])
    _, _, info = make_sample(variant, rng, meta['size'])
    queries = [((b[0] + b[2]) // 2, (b[1] + b[3]) // 2)
               for b in (o['box'] for o in info['objects'])]
    return osp.join(data_root, variant, 'img_dir', 'val', '00000.png'), queries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    _quiet.add_flag(parser)
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'contextshapes'))
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    parser.add_argument('--quick', action='store_true',
                        help=f'{QUICK_ITERS} iterations per run instead of the configs\' own')
    parser.add_argument('--iters', type=int, help='override the iterations of every run')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS),
                        metavar='MODEL', help=f'subset of {list(MODELS)}')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument('--num-train', type=int, default=512,
                        help='ContextShapes training images per variant')
    parser.add_argument('--num-val', type=int, default=128,
                        help='ContextShapes validation images per variant')
    parser.add_argument('--no-analysis', action='store_true',
                        help='skip the analysis figures')
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error(f'--iters must be >= 1, got {args.iters}')
    iters = args.iters or (QUICK_ITERS if args.quick else None)
    command = 'python tools/demo.py' + (' ' + ' '.join(argv if argv is not None
                                                       else sys.argv[1:])).rstrip()
    start = time.time()

    def log(msg):
        print(f'[demo {time.time() - start:5.0f} s] {msg}', flush=True)

    import mmctx  # noqa: F401
    from mmctx.datasets import generate_context_shapes
    for variant in args.variants:
        log(f'data: ContextShapes-{variant} in {args.data_root}')
        try:
            generate_context_shapes(args.data_root, variant, num_train=args.num_train,
                                    num_val=args.num_val, progress=True)
        except ValueError as e:
            parser.error(str(e))
    for model in args.models:  # fail before training if a config is missing
        for variant in args.variants:
            find_config(model, variant)

    os.makedirs(args.work_dir, exist_ok=True)
    results_path = osp.join(args.work_dir, 'results.json')
    report_path = osp.join(args.work_dir, 'report.md')
    rows = []
    runs = [(m, v) for v in args.variants for m in args.models]
    for i, (model, variant) in enumerate(runs, 1):
        tag = f'[{i}/{len(runs)}] {model}-{variant}'
        log(f'{tag}: training ({MODELS[model][0]})')
        try:
            row = train_one(model, variant, args.data_root, args.work_dir, iters, tag)
        except Exception as e:  # noqa: BLE001  (one failed run must not lose the others)
            row = dict(model=model, variant=variant, config=osp.relpath(
                find_config(model, variant), ROOT), iters=iters, seconds=None, mIoU=None,
                error=f'{type(e).__name__}: {e}')
            log(f'{tag}: FAILED — {row["error"]}')
        else:
            log(f"{tag}: mIoU {fmt(row['mIoU'])} in {row['seconds']:.0f} s")
        rows.append(row)
        with open(results_path, 'w') as f:
            json.dump(dict(command=command, machine=machine(), runs=rows), f, indent=1)
        write_report(report_path, rows, [], [], time.time() - start, command)

    figures, notes = ([], []) if args.no_analysis else analyse(
        rows, args.data_root, osp.join(args.work_dir, 'analysis'), log)
    notes += [f"{r['model']}-{r['variant']} failed: {r['error']}" for r in rows
              if r.get('error')]
    wall = time.time() - start
    write_report(report_path, rows, figures, notes, wall, command)
    log(f'report: {report_path} ({wall / 60:.1f} min)')
    return 1 if any(r.get('error') for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
