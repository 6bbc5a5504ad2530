"""Model-zoo docs: metafiles name real configs, READMEs match their metafiles."""
import glob
import os.path as osp
import re

import pytest
import yaml

from .conftest import ROOT

METAFILES = sorted(glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yaml')))


def fmt(value):
    return '—' if value is None else f'{value:g}'


def readme_rows(path):
    rows = {}
    for line in open(path):
        m = re.match(r'^\| \[([^\]]+)\]\(([^)]+)\) \|(.*)\|\s*$', line)
        if m:
            rows[m.group(1)] = (m.group(2), [c.strip() for c in m.group(3).split('|')])
    return rows


def test_metafiles_found():
    assert len(METAFILES) >= 4


@pytest.mark.parametrize('metafile', METAFILES, ids=[osp.relpath(m, ROOT) for m in METAFILES])
def test_metafile_and_readme_agree(metafile):
    folder = osp.dirname(metafile)
    meta = yaml.safe_load(open(metafile))
    models = meta['Models']
    assert models
    named = set()
    for m in models:
        assert osp.isfile(osp.join(ROOT, m['Config'])), m['Config']
        assert osp.splitext(osp.basename(m['Config']))[0] == m['Name']
        named.add(osp.basename(m['Config']))
        ours = m['mmctx']
        if ours['mIoU'] is not None:  # an mmctx number needs the command that made it
            assert ours['Command'], m['Name']
        ref = m['Reference']
        assert (ref['mIoU'] is None) == (ref['Source'] is None), m['Name']
    on_disk = {osp.basename(f) for f in glob.glob(osp.join(folder, '*.py'))}
    assert on_disk == named, f'configs without a metafile entry: {on_disk - named}'

    readme = osp.join(folder, 'README.md')
    rows = readme_rows(readme)
    assert set(rows) == {m['Name'] for m in models}
    for m in models:
        link, cells = rows[m['Name']]
        assert link == m['Name'] + '.py'
        md, ref, ours = m['Metadata'], m['Reference'], m['mmctx']
        expected = [md['Dataset'], md['Backbone'], md['Crop Size'], md['Lr schd'],
                    fmt(ref['mIoU']), fmt(ref['mIoU(ms+flip)']), ref['Source'] or '—',
                    fmt(ours['mIoU'])]
        assert cells == expected, m['Name']


def test_top_level_readme_links_every_algorithm():
    text = open(osp.join(ROOT, 'README.md')).read()
    for metafile in METAFILES:
        rel = osp.relpath(osp.join(osp.dirname(metafile), 'README.md'), ROOT)
        assert f']({rel})' in text, rel
