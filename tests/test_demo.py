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
