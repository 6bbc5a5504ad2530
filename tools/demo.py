"""README command 1: what context blocks do, measured on ContextShapes in minutes on a CPU.

    python tools/demo.py                 # 5 models x 2 variants x 1 seed (~10 min, 2 cores)
    python tools/demo.py --full          # every model x 2 variants x 3 seeds
    python tools/demo.py --seeds 3 --models baseline nonlocal gcnet --variants paired
    python tools/demo.py --quick         # 200 instead of 1000 iterations per run

Generates ContextShapes (mmctx/datasets/context_shapes.py) under ``--data-root`` if
missing, then trains and validates every model of ``configs/contextshapes/`` on both
variants through mmengine's Runner (mmseg's pipeline and ``IoUMetric``), one Runner
after another in this process, and writes ``WORK_DIR/report.md``: the measured mIoU
of every model x variant (mean ± standard deviation over the seeds), a claims table
(each finding of the papers the demo can test, with the measured number, the
threshold and "holds" / "does not hold" / "not measurable here"), wall times, the
machine, and the analysis figures of the seed-0 models (attention maps, query
independence, NL / DNL consistency statistics, DNL term shares) as PNGs.
Each run keeps its checkpoint, ``vis_data/scalars.json`` and log under
``WORK_DIR/<model>-<variant>-s<seed>/``; seed ``s`` sets mmengine's ``randomness.seed``
(initialisation, data order; the data are the same for every seed);
``WORK_DIR/results.json`` is rewritten after every run, so an interrupted demo keeps
what it measured.
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
from typing import List, Optional, Tuple

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
    'se': ('Squeeze-and-Excitation', 'SqueezeExcitationBlock'),
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
#: the default run (README command 1, <= 12 min on 2 cores) and --full
DEFAULT_MODELS = ('baseline', 'nonlocal', 'dnl', 'gcnet', 'snl')
DEFAULT_SEEDS, FULL_SEEDS = 1, 3
#: the families, for the claims (query-specific = a pairwise, per-query map)
PAIRWISE = ('nonlocal', 'dnl', 'dnl-pairwise', 'lesa', 'ccnet', 'danet', 'isanet', 'ann')
QUERY_INDEPENDENT = ('gcnet', 'snl', 'se', 'dnl-unary')
#: thresholds of the claims (ours: the papers state none)
QI_DISTANCE = 0.1  # GCNet: "nearly query-independent" = mean cosine distance below this
SURVEY_TOLERANCE = 5.0  # NL ~ A2 ~ EMA(T=1): means within this many mIoU points
OWN_SHARE = 0.1  # LESA: "small" own-position attention
GLOBAL_MARGIN, PAIRED_MARGIN = 50.0, 15.0  # the demo's own targets (issue #14)


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


def train_one(model: str, variant: str, data_root: str, work_dir: str, iters, tag: str,
              seed: int = 0):
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
                        'default_hooks.checkpoint.interval': iters})
        options.update(scaled_schedule(cfg, iters))
    options['randomness.seed'] = seed
    run_dir = osp.join(work_dir, run_name(model, variant, seed))
    prepare_cfg(cfg, config_path=config, work_dir=run_dir, cfg_options=options)
    cfg.log_level = 'INFO'  # the run's log file keeps everything (scalars: vis_data)
    cfg.experiment_name = (f'{run_name(model, variant, seed)}-'
                           f'{time.strftime("%Y%m%d_%H%M%S")}')
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
    return dict(model=model, variant=variant, seed=seed, config=osp.relpath(config, ROOT),
                iters=max_iters, seconds=round(seconds, 1),
                **{k: _float(metrics.get(k)) for k in ('mIoU', 'mAcc', 'aAcc')},
                checkpoint=ckpt if osp.isfile(ckpt) else None)


def scaled_schedule(cfg, iters: int) -> dict:
    """``--iters`` options for the configs' schedule: the warm-up keeps its share of
    the run (100 of 1000 iterations → 20 of 200), the decay ends at ``iters``."""
    total = cfg.train_cfg.max_iters
    options = {}
    for i, sched in enumerate(cfg.param_scheduler):
        begin = round(sched.get('begin', 0) * iters / total)
        end = iters if sched.get('end', total) >= total else max(
            1, round(sched['end'] * iters / total))
        options[f'param_scheduler.{i}.begin'] = begin
        options[f'param_scheduler.{i}.end'] = end
    return options


def run_name(model: str, variant: str, seed: int) -> str:
    return f'{model}-{variant}-s{seed}'


def _float(value):
    return None if value is None else float(value)


def fmt(value) -> str:
    return '—' if value is None or value != value else f'{value:.1f}'


def cell_stats(rows: list, model: str, variant: str) -> Optional[Tuple[float, float, int]]:
    """(mean, sample standard deviation (0 for one seed), seeds) of a cell's mIoU."""
    got = [r['mIoU'] for r in rows if r['model'] == model and r['variant'] == variant
           and r.get('mIoU') is not None]
    if not got:
        return None
    mean = sum(got) / len(got)
    std = (sum((g - mean) ** 2 for g in got) / (len(got) - 1)) ** .5 if len(got) > 1 else 0.
    return mean, std, len(got)


def fmt_cell(stats) -> str:
    if stats is None:
        return '—'
    mean, std, n = stats
    return f'{mean:.1f}' if n == 1 else f'{mean:.1f} ± {std:.1f}'


def _verdict(ok: bool) -> str:
    return 'holds' if ok else 'does not hold'


def _missing(models) -> str:
    return ('not measurable here: run with `--models ' + ' '.join(models)
            + '` (or `--full`)')


def claims(rows: list, measured: dict, variants) -> List[Tuple[str, str, str, str, str]]:
    """The claims table: (paper, finding, measured, threshold, verdict) rows.

    ``measured``: from :func:`analyse` — ``qi[variant][model]`` (query-independence
    rows), ``consistency[variant][model]`` (consistency rows), ``own[variant]``
    (LESA own-position attention: (mean, 1/L))."""
    out = []
    cells = {(m, v): cell_stats(rows, m, v) for m in MODELS for v in variants}

    def better(paper, finding, a, b, v):
        """The claim row "a beats b": by more than the larger seed std of the two."""
        sa, sb = cells[(a, v)], cells[(b, v)]
        if sa is None or sb is None:
            return paper, finding, '—', 'Δ > the larger seed std', _missing([b, a])
        diff, spread = sa[0] - sb[0], max(sa[1], sb[1])
        return (paper, finding, f'{v}: {a} {fmt_cell(sa)} vs {b} {fmt_cell(sb)} '
                f'(Δ {diff:+.1f})', 'Δ > the larger seed std', _verdict(diff > spread))

    for v in variants:  # the demo's own targets
        base = cells[('baseline', v)]
        if v == 'global':
            ctx = [m for m in MODELS if m != 'baseline' and cells[(m, v)]]
            if base and ctx:
                worst = min(ctx, key=lambda m: cells[(m, v)][0])
                gap = cells[(worst, v)][0] - base[0]
                out.append(('ContextShapes', 'global: every context block far above the '
                            'context-free baseline',
                            f'lowest: {worst} {fmt_cell(cells[(worst, v)])}'
                            f' vs baseline {fmt_cell(base)} (Δ {gap:+.1f})',
                            f'Δ ≥ {GLOBAL_MARGIN:.0f} (means)', _verdict(gap >= GLOBAL_MARGIN)))
            else:
                out.append(('ContextShapes', 'global: every context block far above the '
                            'baseline', '—', f'Δ ≥ {GLOBAL_MARGIN:.0f}',
                            _missing(['baseline', 'gcnet'])))
        if v == 'paired':
            pw = [m for m in PAIRWISE if cells[(m, v)]]
            qi = [m for m in QUERY_INDEPENDENT if cells[(m, v)]]
            if pw and qi:
                low = min(pw, key=lambda m: cells[(m, v)][0])
                high = max(qi, key=lambda m: cells[(m, v)][0])
                gap = cells[(low, v)][0] - cells[(high, v)][0]
                out.append(('ContextShapes', 'paired: every pairwise block above every '
                            'query-independent one', f'lowest pairwise {low} '
                            f'{fmt_cell(cells[(low, v)])} vs highest query-independent {high} '
                            f'{fmt_cell(cells[(high, v)])} (Δ {gap:+.1f})',
                            f'Δ ≥ {PAIRED_MARGIN:.0f} (means)', _verdict(gap >= PAIRED_MARGIN)))
            else:
                out.append(('ContextShapes', 'paired: pairwise above query-independent', '—',
                            f'Δ ≥ {PAIRED_MARGIN:.0f}', _missing(['nonlocal', 'gcnet'])))
    for v in variants:  # GCNet
        row = measured.get('qi', {}).get(v, {}).get('nonlocal')
        if row is None:
            out.append(('GCNet', f'{v}: NL\'s attention maps are nearly query-independent',
                        '—', f'cosine distance < {QI_DISTANCE}', _missing(['nonlocal'])))
        else:
            d = row['cosine_distance']
            out.append(('GCNet', f'{v}: NL\'s attention maps are nearly query-independent',
                        f'mean cosine distance between queries\' maps {d:.3f}',
                        f'< {QI_DISTANCE}', _verdict(d < QI_DISTANCE)))
    for v in variants:  # DNL
        dnl = measured.get('consistency', {}).get(v, {}).get('dnl')
        nl = measured.get('consistency', {}).get(v, {}).get('nonlocal')
        from mmctx.analysis.consistency import RADII
        r = RADII[0]
        for term, mask, what in (('pairwise', 'within', 'the query\'s own category'),
                                 ('unary', f'boundary_r{r}', f'GT boundaries (radius {r})')):
            finding = f'{v}: the {term} term puts its mass on {what}'
            if dnl is None or nl is None:
                out.append(('DNL', finding, '—', '> chance and > NL\'s part',
                            _missing(['nonlocal', 'dnl'])))
                continue
            m, c = dnl[f'{term}_{mask}_mass'], dnl[f'{term}_{mask}_chance']
            n = nl[f'{term}_{mask}_mass']
            out.append(('DNL', finding, f'DNL {m:.3f} vs chance {c:.3f}, NL\'s '
                        f'{"whitened" if term == "pairwise" else "μ_q"} part {n:.3f}',
                        '> chance and > NL\'s part', _verdict(m > c and m > n)))
        out.append(better('DNL', f'{v}: decoupling beats coupling (mIoU)', 'dnl',
                          'nonlocal', v))
    for v in variants:  # the survey (low-rank reconstruction)
        three = ('nonlocal', 'a2net', 'emanet-t1')
        if all(cells.get((m, v)) for m in three):
            means = [cells[(m, v)][0] for m in three]
            spread = max(means) - min(means)
            out.append(('survey', f'{v}: NL ≈ A² ≈ EMA(T=1)', ', '.join(
                f'{m} {fmt_cell(cells[(m, v)])}' for m in three) + f' (range {spread:.1f})',
                f'range ≤ {SURVEY_TOLERANCE:.0f}', _verdict(spread <= SURVEY_TOLERANCE)))
        else:
            out.append(('survey', f'{v}: NL ≈ A² ≈ EMA(T=1)', '—',
                        f'range ≤ {SURVEY_TOLERANCE:.0f}', _missing(three)))
        out.append(better('survey', f'{v}: more EM iterations help', 'emanet-t3',
                          'emanet-t1', v))
    for v in variants:  # LESA
        own = measured.get('own', {}).get(v)
        if own is None:
            out.append(('LESA', f'{v}: in self-attention the own-position (unary) share is '
                        'small', '—', f'< {OWN_SHARE}', _missing(['lesa'])))
        else:
            out.append(('LESA', f'{v}: in self-attention the own-position (unary) share is '
                        'small', f'mean attention on the own position {own[0]:.4f} '
                        f'(uniform 1/L = {own[1]:.4f})', f'< {OWN_SHARE}',
                        _verdict(own[0] < OWN_SHARE)))
    return out


def write_report(path: str, rows: list, figures: list, notes: list, wall: float,
                 command: str, measured: Optional[dict] = None) -> None:
    variants = [v for v in VARIANTS if any(r['variant'] == v for r in rows)]
    seeds = sorted({r.get('seed', 0) for r in rows})
    lines = ['# mmctx demo: context blocks on ContextShapes', '',
             f'Measured by `{command}` on {time.strftime("%Y-%m-%d %H:%M %Z")}.', '',
             f'- machine: {machine()}',
             f'- wall time: {wall / 60:.1f} min in all (data, training, validation, analysis)',
             f'- seeds: {", ".join(map(str, seeds))} (mmengine `randomness.seed`: '
             'initialisation and data order; the same images for every seed)',
             '- every number below was measured in this run (mmseg `IoUMetric` on the '
             'validation split, 4 classes: background, red, green, blue)', '',
             '## mIoU (%) per model and variant' + (', mean ± std over seeds'
                                                    if len(seeds) > 1 else ''), '',
             '| model | block | ' + ' | '.join(f'{v} mIoU' for v in variants)
             + ' | seeds | iters | train + val time per run |',
             '|---|---|' + '---|' * len(variants) + '---|---|---|']
    for model, (what, block) in MODELS.items():
        got = [r for r in rows if r['model'] == model]
        if not got:
            continue
        iters = sorted({str(r['iters']) for r in got})
        secs = ' / '.join(
            (lambda t: f'{sum(t) / len(t):.0f} s' if t else '—')(
                [r['seconds'] for r in got if r['variant'] == v and r.get('seconds')])
            for v in variants)
        n = max(cell_stats(rows, model, v)[2] if cell_stats(rows, model, v) else 0
                for v in variants)
        lines.append(f'| {model} — {what} | {block} | '
                     + ' | '.join(fmt_cell(cell_stats(rows, model, v)) for v in variants)
                     + f" | {n} | {', '.join(iters)} | {secs} |")
    lines += ['', 'Variants: ' + '; '.join(f'*{v}* — {NEEDS[v]}' for v in variants) + '.',
              'A context-free model cannot know any object\'s class (see '
              '`mmctx/datasets/context_shapes.py`): its mIoU stays near what background alone '
              'plus chance on the objects gives.', '']
    if measured is not None:
        lines += ['## Claims', '',
                  'Each finding of the papers this demo can test, measured in this run. The '
                  'thresholds are ours (the papers give none); "Δ > the larger seed std" '
                  'compares means and asks for more than the seeds\' spread (with one seed, '
                  'the spread is unknown and counts as 0).', '',
                  '| paper | finding | measured | threshold | verdict |',
                  '|---|---|---|---|---|']
        lines += [f'| {" | ".join(c)} |' for c in claims(rows, measured, variants)]
        lines.append('')
    if figures:
        lines += ['## Analysis of the trained models (seed 0)', '']
        for title, png, md in figures:
            lines += [f'### {title}', '']
            if png:
                lines += [f'![{title}]({osp.relpath(png, osp.dirname(path))})', '']
            if md and osp.isfile(md):
                body = open(md).read().strip().splitlines()
                lines += [l for l in body if not l.startswith('# ')] + ['']
    if notes:
        lines += ['## Notes', ''] + [f'- {n}' for n in notes] + ['']
    lines += ['## Runs', '', '| run | config | mIoU | checkpoint |', '|---|---|---|---|']
    for r in rows:
        ck = osp.relpath(r['checkpoint'], osp.dirname(path)) if r.get('checkpoint') else '—'
        lines.append(f"| {run_name(r['model'], r['variant'], r.get('seed', 0))} | "
                     f"`{r['config']}` | {fmt(r.get('mIoU'))} | `{ck}` |")
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def analyse(rows: list, data_root: str, out_dir: str, log) -> tuple:
    """Analysis of the trained models of seed 0; returns (figures, notes, measured)."""
    notes = []
    measured = dict(qi={}, consistency={}, own={})
    from mmctx import analysis

    def load(config, checkpoint):
        # mmseg's init_model prints every checkpoint it loads ("Loads checkpoint by
        # local backend ..."): the demo says what it analyses itself
        with contextlib.redirect_stdout(io.StringIO()):
            return analysis.load_segmentor(config, checkpoint)
    first = min((r.get('seed', 0) for r in rows), default=0)
    trained = {(r['model'], r['variant']): r for r in rows
               if r.get('checkpoint') and r.get('seed', 0) == first}
    os.makedirs(out_dir, exist_ok=True)
    attention, independence, shares, consist = [], [], [], []  # in the report's order
    try:
        for variant in VARIANTS:
            images = sorted(glob.glob(osp.join(data_root, variant, 'img_dir', 'val',
                                               '*.png')))[:16]
            labels = [p.replace(osp.join('img_dir', 'val'), osp.join('ann_dir', 'val'))
                      for p in images]
            qi_rows, cons_rows = [], []
            for (name, v), r in trained.items():
                if v != variant or name == 'baseline':
                    continue
                # each checkpoint is loaded once, for every analysis of it
                net = load(osp.join(ROOT, r['config']), r['checkpoint'])
                log(f'analysis: query independence of {name} ({variant})')
                for row in analysis.query_independence(net, images):
                    qi_rows.append(dict(row, block=f"{name}: {row['block']}"))
                    measured['qi'].setdefault(variant, {}).setdefault(name, row)
                if name in ('nonlocal', 'dnl'):
                    log(f'analysis: consistency statistics of {name} ({variant})')
                    for row in analysis.consistency(net, images, labels, num_queries=256):
                        cons_rows.append(dict(row, block=f"{name}: {row['block']}"))
                        measured['consistency'].setdefault(variant, {}).setdefault(
                            name, row)
                if name == 'lesa':
                    log(f'analysis: own-position attention of LESA ({variant})')
                    for row in analysis.term_shares(net, images):
                        if 'own_attention' in row:
                            o = row['own_attention']
                            measured['own'][variant] = (o['mean'], o['chance'])
                            break
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
            if cons_rows:
                png, md = _png_md(analysis.write_consistency(
                    cons_rows, osp.join(out_dir, f'consistency-{variant}')))
                consist.append((f'Consistency statistics ({variant}, {len(images)} val '
                                'images; NL split into its whitened and μ_q parts)', png, md))
    except Exception as e:  # noqa: BLE001  (the table is kept whatever the analysis does)
        notes.append(f'analysis stopped: {type(e).__name__}: {e}')
        log(f'analysis stopped: {type(e).__name__}: {e}')
    return attention + independence + consist + shares, notes, measured


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
    parser.add_argument('--models', nargs='+', choices=list(MODELS), metavar='MODEL',
                        help=f'subset of {list(MODELS)} (default: {list(DEFAULT_MODELS)})')
    parser.add_argument('--seeds', type=int,
                        help=f'seeds 0..N-1 per model and variant (default: {DEFAULT_SEEDS}, '
                        f'--full: {FULL_SEEDS})')
    parser.add_argument('--full', action='store_true',
                        help=f'every model and {FULL_SEEDS} seeds')
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
    if args.seeds is not None and args.seeds < 1:
        parser.error(f'--seeds must be >= 1, got {args.seeds}')
    iters = args.iters or (QUICK_ITERS if args.quick else None)
    models = args.models or list(MODELS if args.full else DEFAULT_MODELS)
    seeds = args.seeds or (FULL_SEEDS if args.full else DEFAULT_SEEDS)
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
    for model in models:  # fail before training if a config is missing
        for variant in args.variants:
            find_config(model, variant)

    os.makedirs(args.work_dir, exist_ok=True)
    results_path = osp.join(args.work_dir, 'results.json')
    report_path = osp.join(args.work_dir, 'report.md')
    rows = []
    runs = [(m, v, s) for s in range(seeds) for v in args.variants for m in models]
    for i, (model, variant, seed) in enumerate(runs, 1):
        tag = f'[{i}/{len(runs)}] {run_name(model, variant, seed)}'
        log(f'{tag}: training ({MODELS[model][0]})')
        try:
            row = train_one(model, variant, args.data_root, args.work_dir, iters, tag, seed)
        except Exception as e:  # noqa: BLE001  (one failed run must not lose the others)
            row = dict(model=model, variant=variant, seed=seed, config=osp.relpath(
                find_config(model, variant), ROOT), iters=iters, seconds=None, mIoU=None,
                error=f'{type(e).__name__}: {e}')
            log(f'{tag}: FAILED — {row["error"]}')
        else:
            log(f"{tag}: mIoU {fmt(row['mIoU'])} in {row['seconds']:.0f} s")
        rows.append(row)
        with open(results_path, 'w') as f:
            json.dump(dict(command=command, machine=machine(), runs=rows), f, indent=1)
        write_report(report_path, rows, [], [], time.time() - start, command)

    figures, notes, measured = ([], [], {}) if args.no_analysis else analyse(
        rows, args.data_root, osp.join(args.work_dir, 'analysis'), log)
    notes += [f"{run_name(r['model'], r['variant'], r['seed'])} failed: {r['error']}"
              for r in rows if r.get('error')]
    notes.append('a rerun trains the same configs on the same data with the same seeds, '
                 'but is not guaranteed to give bit-identical numbers (threading and '
                 'library versions change floating-point sums); the seeds\' spread above '
                 'is the measure of how much a cell moves')
    wall = time.time() - start
    write_report(report_path, rows, figures, notes, wall, command, measured)
    log(f'report: {report_path} ({wall / 60:.1f} min)')
    return 1 if any(r.get('error') for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
