"""README command 1 (tools/demo.py), shortened: its report shows what the runs measured."""
import glob
import json
import os.path as osp
import re

from .conftest import ROOT, python, scalars


def test_demo_writes_a_report_of_what_it_measured(tmp_path):
    data, work = str(tmp_path / 'data'), str(tmp_path / 'demo')
    proc = python(osp.join(ROOT, 'tools', 'demo.py'), '--models', 'baseline', 'dnl',
                  'dnl-unary', '--variants', 'global', '--iters', '2', '--seeds', '2',
                  '--num-train', '8',
                  '--num-val', '4', '--data-root', data, '--work-dir', work)
    # progress: one line per run, the report path at the end
    assert re.search(r'\[1/6\] baseline-global-s0: mIoU [\d.]+ in', proc.stdout)
    assert re.search(r'\[6/6\] dnl-unary-global-s1: mIoU [\d.]+ in', proc.stdout)
    assert 'report: ' + osp.join(work, 'report.md') in proc.stdout
    # the console shows the demo's own lines only (no upstream warnings or log lines)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    stray = [line for line in lines
             if not line.startswith(('[demo ', '    [', '  ContextShapes-'))]
    assert not stray, stray
    # ... while each run's log file keeps mmengine's full log
    (log, ) = glob.glob(osp.join(work, 'dnl-global-s1', '*', '*.log'))
    assert 'Exp name: dnl-global-s1' in open(log).read()
    assert osp.isfile(osp.join(data, 'global', 'img_dir', 'val', '00003.png'))

    results = json.load(open(osp.join(work, 'results.json')))
    assert [(r['model'], r['seed']) for r in results['runs']] == [
        (m, s) for s in (0, 1) for m in ('baseline', 'dnl', 'dnl-unary')]
    report = open(osp.join(work, 'report.md')).read()
    for run in results['runs']:
        # the number in results.json is the one mmengine's IoUMetric logged for that run
        name = f"{run['model']}-global-s{run['seed']}"
        logged = [r for r in scalars(osp.join(work, name)) if 'mIoU' in r]
        assert len(logged) == 1 and run['iters'] == 2
        assert abs(logged[0]['mIoU'] - run['mIoU']) < 1e-6
        assert f"| {name} | `{run['config']}` | {run['mIoU']:.1f} |" in report
        assert osp.isfile(run['checkpoint'])
    # the table: mean ± sample std over the two seeds, from the runs
    for model in ('baseline', 'dnl', 'dnl-unary'):
        a, b = (r['mIoU'] for r in results['runs'] if r['model'] == model)
        row = next(line for line in report.splitlines() if line.startswith(f'| {model} — '))
        assert f'| {(a + b) / 2:.1f} ± {abs(a - b) / 2 ** .5:.1f} | 2 |' in row, row
    # the claims table: measured rows with a verdict, the others say what to run
    claims = report.split('## Claims')[1].split('\n## ')[0]
    dnl_rows = [l for l in claims.splitlines() if l.startswith('| DNL | global: the ')]
    assert len(dnl_rows) == 2 and all('not measurable here' in l for l in dnl_rows)  # no NL
    lesa = next(l for l in claims.splitlines() if l.startswith('| LESA |'))
    assert lesa.endswith('not measurable here: run with `--models lesa` (or `--full`) |')
    target = next(l for l in claims.splitlines() if 'every context block far above' in l)
    assert re.search(r'\| (holds|does not hold) \|$', target), target
    assert 'wall time:' in report and 'machine:' in report and results['machine'] in report
    assert 'python tools/demo.py --models baseline dnl dnl-unary' in report
    assert 'seeds: 0, 1' in report

    # the analysis figures of the trained models, linked from the report
    pngs = re.findall(r'!\[[^\]]*\]\(([^)]+\.png)\)', report)
    # attention maps, query independence, consistency, term shares
    assert len(pngs) == 4, report
    for png in pngs:
        path = osp.join(work, png)
        assert osp.isfile(path) and osp.getsize(path) > 5000, path
    # the unary-only block is query-independent: exactly 0 in the report's table
    qi = next(line for line in report.splitlines()
              if line.startswith('| dnl-unary: '))
    assert re.search(r'\| 0(\.0+)? \|', qi), qi


def test_claims_table_verdicts_from_measured_numbers():
    """Each claim's verdict follows from the numbers and thresholds it prints."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('demo', osp.join(ROOT, 'tools', 'demo.py'))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    def runs(model, variant, *values):
        return [dict(model=model, variant=variant, seed=s, mIoU=v) for s, v in enumerate(values)]
    rows = (runs('baseline', 'global', 37., 37.) + runs('nonlocal', 'global', 90., 96.)
            + runs('dnl', 'global', 99., 99.4) + runs('gcnet', 'global', 86., 88.)
            + runs('baseline', 'paired', 38., 38.) + runs('nonlocal', 'paired', 70., 72.)
            + runs('dnl', 'paired', 60., 62.) + runs('gcnet', 'paired', 50., 58.)
            + runs('a2net', 'global', 92., 94.) + runs('emanet-t1', 'global', 95., 95.))
    assert demo.cell_stats(rows, 'gcnet', 'paired') == (54., 32 ** .5, 2)
    cons = dict(pairwise_within_mass=.5, pairwise_within_chance=.3, unary_boundary_r1_mass=.1,
                unary_boundary_r1_chance=.2)
    nl = dict(pairwise_within_mass=.4, unary_boundary_r1_mass=.05)
    measured = dict(qi=dict(paired={'nonlocal': dict(cosine_distance=.05)}),
                    consistency=dict(paired={'dnl': cons, 'nonlocal': nl}),
                    own=dict(paired=(.2, 1 / 1024)))
    table = {(c[0], c[1]): c for c in demo.claims(rows, measured, ['global', 'paired'])}

    def verdict(paper, finding):
        return table[(paper, finding)][4]
    # global: lowest context block gcnet 87 vs baseline 37: +50 -> holds (>= 50)
    assert verdict('ContextShapes', 'global: every context block far above the context-free '
                   'baseline') == 'holds'
    # paired: lowest pairwise dnl 61 vs highest query-independent gcnet 54: +7 < 15
    assert verdict('ContextShapes', 'paired: every pairwise block above every '
                   'query-independent one') == 'does not hold'
    assert verdict('GCNet', "paired: NL's attention maps are nearly query-independent") == 'holds'
    assert verdict('GCNet', "global: NL's attention maps are nearly query-independent"
                   ).startswith('not measurable here')
    assert verdict('DNL', "paired: the pairwise term puts its mass on the query's own "
                   'category') == 'holds'  # 0.5 > 0.3 and > 0.4
    assert verdict('DNL', 'paired: the unary term puts its mass on GT boundaries (radius 1)'
                   ) == 'does not hold'  # 0.1 < chance 0.2
    # global: DNL 99.2 vs NL 93 (+6.2) beats the larger std (NL: 4.24); paired: 61 < 71
    assert verdict('DNL', 'global: decoupling beats coupling (mIoU)') == 'holds'
    assert verdict('DNL', 'paired: decoupling beats coupling (mIoU)') == 'does not hold'
    # NL 93, A2 93, EMA 95: range 2 <= 5
    assert verdict('survey', 'global: NL ≈ A² ≈ EMA(T=1)') == 'holds'
    assert verdict('survey', 'paired: NL ≈ A² ≈ EMA(T=1)').startswith('not measurable')
    assert verdict('LESA', 'paired: in self-attention the own-position (unary) share is '
                   'small') == 'does not hold'  # 0.2 >= 0.1


def test_iters_override_scales_the_warm_up_and_ends_the_decay():
    import sys
    from mmengine.config import Config
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import demo
    cfg = Config.fromfile(demo.find_config('nonlocal', 'paired'))
    assert cfg.train_cfg.max_iters == 1000  # the recipe: 100 warm-up + poly decay to 1000
    assert [s['type'] for s in cfg.param_scheduler] == ['LinearLR', 'PolyLR']
    assert demo.scaled_schedule(cfg, 200) == {
        'param_scheduler.0.begin': 0, 'param_scheduler.0.end': 20,
        'param_scheduler.1.begin': 20, 'param_scheduler.1.end': 200}
    assert demo.scaled_schedule(cfg, 2000)['param_scheduler.0.end'] == 200
    assert demo.scaled_schedule(cfg, 2)['param_scheduler.0.end'] == 1  # never empty
