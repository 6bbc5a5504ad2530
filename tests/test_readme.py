"""Every config snippet of the README is a complete config: build it and run it."""
import os.path as osp
import re

import pytest
import torch

from .conftest import ROOT

README = osp.join(ROOT, 'README.md')


def config_snippets():
    text = open(README).read()
    blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
    return [b for b in blocks if 'model = dict(' in b]


def test_every_config_snippet_names_its_base():
    snippets = config_snippets()
    assert len(snippets) >= 4  # plugins, ContextHead, ContextResNet, ContextResNet3d
    for snippet in snippets:
        assert re.search(r"^_base_ = \['(mmseg|mmdet|mmaction)::", snippet, flags=re.M), \
            f'a README config snippet must start from an upstream base:\n{snippet}'


@pytest.mark.parametrize('index', range(len(config_snippets())))
def test_config_snippet_builds_and_runs(index, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from mmctx.models.blocks._base import ContextBlockBase
    from mmctx.utils import syncbn_to_bn
    snippet = config_snippets()[index]
    path = tmp_path / 'snippet.py'
    path.write_text(snippet)
    cfg = Config.fromfile(str(path))
    syncbn_to_bn(cfg._cfg_dict)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model).eval()
    blocks = [m for m in model.modules() if isinstance(m, ContextBlockBase)]
    assert blocks, f'the snippet builds no mmctx block:\n{snippet}'
    with torch.no_grad():
        if cfg.default_scope == 'mmseg':
            out = model(torch.randn(1, 3, 64, 64))  # tensor mode: the logits
            assert out.shape[-2:] == (8, 8) and torch.isfinite(out).all()
        elif cfg.default_scope == 'mmdet':
            feats = model.extract_feat(torch.randn(1, 3, 64, 96))
            assert len(feats) == 5 and all(torch.isfinite(f).all() for f in feats)
        else:  # mmaction: (N, C, T, H, W) through the 3D backbone
            feats = model.backbone(torch.randn(1, 3, 8, 64, 64))
            assert feats.shape[:2] == (1, 2048) and torch.isfinite(feats).all()
