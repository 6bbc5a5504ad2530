"""Model-zoo docs: metafiles name real configs, READMEs match their metafiles."""
import glob
import os.path as osp
import re

import pytest
import yaml

from .conftest import ROOT

METAFILES = sorted(glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yaml')))

#: task -> (Metadata columns, Reference metrics, mmctx metrics), in README column order:
#: | [name](name.py) | metadata... | reference metrics... | reference source | mmctx metrics... |
#: A model's ``Task`` defaults to semantic segmentation.
TASKS = {
    'Semantic Segmentation': (['Dataset', 'Backbone', 'Crop Size', 'Lr schd'],
                              ['mIoU', 'mIoU(ms+flip)'], ['mIoU']),
    'Instance Segmentation': (['Dataset', 'Backbone', 'Norm', 'Blocks', 'Lr schd'],
                              ['box AP', 'mask AP'], ['box AP', 'mask AP']),
    'Action Recognition': (['Dataset', 'Backbone', 'Frames', 'Blocks', 'Lr schd'],
                           ['top1 acc', 'top5 acc'], ['top1 acc']),
    'Image Classification': (['Dataset', 'Backbone', 'Resolution', 'Blocks', 'Lr schd'],
                             ['top1 acc', 'top5 acc'], ['top1 acc']),
}


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
        task = m.get('Task', 'Semantic Segmentation')
        assert task in TASKS, (m['Name'], task)
        _, ref_metrics, our_metrics = TASKS[task]
        ours = m['mmctx']
        if any(ours[k] is not None for k in our_metrics):  # needs the command that made it
            assert ours['Command'], m['Name']
        ref = m['Reference']
        assert all(k in ref for k in ref_metrics), m['Name']
        has_ref = any(ref[k] is not None for k in ref_metrics)
        assert has_ref == (ref['Source'] is not None), m['Name']
    on_disk = {osp.basename(f) for f in glob.glob(osp.join(folder, '*.py'))}
    assert on_disk == named, f'configs without a metafile entry: {on_disk - named}'

    readme = osp.join(folder, 'README.md')
    rows = readme_rows(readme)
    assert set(rows) == {m['Name'] for m in models}
    for m in models:
        link, cells = rows[m['Name']]
        assert link == m['Name'] + '.py'
        md, ref, ours = m['Metadata'], m['Reference'], m['mmctx']
        columns, ref_metrics, our_metrics = TASKS[m.get('Task', 'Semantic Segmentation')]
        expected = ([str(md[c]) for c in columns] + [fmt(ref[k]) for k in ref_metrics]
                    + [ref['Source'] or '—'] + [fmt(ours[k]) for k in our_metrics])
        assert cells == expected, m['Name']


def test_top_level_readme_links_every_algorithm():
    text = open(osp.join(ROOT, 'README.md')).read()
    for metafile in METAFILES:
        rel = osp.relpath(osp.join(osp.dirname(metafile), 'README.md'), ROOT)
        assert f']({rel})' in text, rel


def test_every_config_is_covered_by_a_config_test():
    """Each config file is built and run by the config test of its task."""
    from .test_det import DET_CONFIGS
    from .test_lesa import LESA_CLS_CONFIGS, LESA_DET_CONFIGS, LESA_HTC_CONFIGS
    from .test_local_relation import LRNET_CONFIGS
    from .test_seg import CONFIGS, SEG_CONFIGS
    from .test_video import VIDEO_CONFIGS
    covered = (set(SEG_CONFIGS) | set(DET_CONFIGS) | set(VIDEO_CONFIGS)
               | set(LESA_DET_CONFIGS) | set(LESA_CLS_CONFIGS) | set(LESA_HTC_CONFIGS)
               | set(LRNET_CONFIGS))
    smoke = {f for f in CONFIGS if osp.basename(osp.dirname(f)) == 'smoke'}  # test_train_tools
    assert set(CONFIGS) - covered - smoke == set()
    assert (len(SEG_CONFIGS) + len(DET_CONFIGS) + len(VIDEO_CONFIGS)
            + len(LESA_DET_CONFIGS) + len(LESA_CLS_CONFIGS) + len(LESA_HTC_CONFIGS)
            + len(LRNET_CONFIGS)) == len(covered)
