"""tools/analysis/complexity.py: attention MACs are counted (mmengine alone misses them)."""
import os.path as osp

import pytest
import torch
from mmengine.analysis import FlopAnalyzer

from mmctx.analysis import count_complexity
from mmctx.models.blocks import DisentangledNonLocalBlock, GlobalContextBlock, NonLocalBlock

from .conftest import python


@pytest.mark.parametrize('cls', [NonLocalBlock, DisentangledNonLocalBlock])
def test_attention_macs_match_a_hand_formula(cls):
    c, h, w = 64, 12, 10
    block = cls(c).eval()
    model = torch.nn.Sequential(block)
    x = torch.randn(1, c, h, w)
    result = count_complexity(model, (x, ))
    L, d = h * w, c // 2
    attention = L * L * (d + d)  # q kᵀ and (softmax) v: L·L·d multiply-adds each
    convs = 4 * c * d * L  # θ, φ, g (C→d) and conv_out (d→C); fvcore counts no bias
    unary = L * d if cls is DisentangledNonLocalBlock else 0  # weights @ v
    mask = c * L if cls is DisentangledNonLocalBlock else 0  # conv_mask (C→1)
    (row, ) = result['blocks']
    assert row['attention_macs'] == attention
    assert row['macs'] == result['macs'] == attention + convs + unary + mask
    assert row['params'] == sum(p.numel() for p in block.parameters())
    # what mmengine's counter alone reports: everything but the attention
    plain = FlopAnalyzer(model, (x, ))
    plain.unsupported_ops_warnings(False)
    assert plain.total() == result['macs'] - attention


def test_gc_block_has_no_attention_matmul():
    model = torch.nn.Sequential(GlobalContextBlock(64, ratio=1. / 4)).eval()
    (row, ) = count_complexity(model, (torch.randn(1, 64, 8, 8), ))['blocks']
    assert row['attention_macs'] == 0 and row['macs'] > 0


def test_cli_writes_report_and_figure(tmp_path):
    out = python('tools/analysis/complexity.py',
                 'configs/dnl/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py', '--shape', '64',
                 '128', '--out', str(tmp_path)).stdout
    assert 'decode_head.dnl_block' in out
    text = open(tmp_path / 'complexity.md').read()
    assert '| decode_head.dnl_block | DisentangledNonLocalBlock |' in text
    assert osp.getsize(tmp_path / 'complexity.png') > 1000


def test_gcnet_check_reproduces_the_papers_counts(tmp_path):
    out = python('tools/analysis/complexity.py', '--gcnet-check', '--out',
                 str(tmp_path)).stdout
    assert '| ResNet-50 params | 25.56 M | 25.56 M |' in out
    assert '~+2.52 M | +2.52 M |' in out
