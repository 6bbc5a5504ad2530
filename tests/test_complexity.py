"""tools/analysis/complexity.py: attention MACs are counted (mmengine alone misses them)."""
import os.path as osp

import pytest
import torch
from mmengine.analysis import FlopAnalyzer

from mmctx.analysis import count_complexity
from mmctx.models.blocks import DisentangledNonLocalBlock, GlobalContextBlock, NonLocalBlock

from .conftest import ROOT, python


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
                 '128', '--out-dir', str(tmp_path)).stdout
    assert 'decode_head.dnl_block' in out
    assert f'written: {tmp_path}/complexity.md, {tmp_path}/complexity.png' in out
    text = open(tmp_path / 'complexity.md').read()
    assert '| decode_head.dnl_block | DisentangledNonLocalBlock |' in text
    assert osp.getsize(tmp_path / 'complexity.png') > 1000


def test_gcnet_check_reproduces_the_papers_counts(tmp_path):
    out = python('tools/analysis/complexity.py', '--gcnet-check', '--out-dir',
                 str(tmp_path)).stdout
    assert '| ResNet-50 params | 25.56 M | 25.56 M |' in out
    assert '~+2.52 M | +2.52 M |' in out


def _complexity_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'complexity_cli', osp.join(ROOT, 'tools', 'analysis', 'complexity.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize('config, block, task, shape_note', [
    # mmdet two-stage detectors need image metas in tensor mode (RPN proposals)
    ('configs/gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py',
     '| backbone.layer4.2.gc_block | GlobalContextBlock |', 'detection',
     '1×3×96×128 (90×120 padded to a multiple of 32)'),
    # mmaction2 3D recognizers take (N, clips, C, T, H, W); T from --clip-len
    ('configs/dnl/i3d_imagenet-pretrained-r50-dnl_8xb8-32x2x1-100e_kinetics400-rgb.py',
     '| backbone.layer3.5.non_local_block | DisentangledNonLocalBlock |', 'recognition',
     '1 clip of 8 frames, 3×8×90×120'),
])
def test_counts_detectors_and_recognizers(config, block, task, shape_note, tmp_path,
                                          capsys):
    assert _complexity_main()([config, '--shape', '90', '120', '--clip-len', '8',
                               '--out-dir', str(tmp_path)]) == 0
    text = open(tmp_path / 'complexity.md').read()
    assert block in text
    assert f'- input ({task}): {shape_note}' in text
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        f'written: {tmp_path}/complexity.md, {tmp_path}/complexity.png')


def test_after_add_attention_is_counted_and_parts_of_models_are_refused():
    from mmengine.registry import init_default_scope

    from mmctx.analysis import count_model_complexity
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = dict(type='mmctx.ContextResNet', depth=50, base_channels=8, out_indices=(3, ),
               norm_cfg=dict(type='BN'),
               after_add=dict(block=dict(type='DisentangledNonLocalBlock'),
                              indices=[[], [], [-2], []]))
    backbone = MODELS.build(cfg)
    (row, ) = count_complexity(backbone, (torch.randn(1, 3, 64, 96), ))['blocks']
    L, d = (64 // 16) * (96 // 16), 32 * 4 // 2  # c4 at stride 16, 128 channels, d=C/2
    assert row['attention_macs'] == L * L * 2 * d
    with pytest.raises(TypeError, match='cannot count a ContextResNet: complexity is counted for whole'):
        count_model_complexity(backbone)


def test_refuses_a_config_that_is_not_a_whole_model(tmp_path, capsys):
    cfg = tmp_path / 'block.py'
    cfg.write_text("model = dict(type='mmctx.GlobalContextBlock', in_channels=64)\n")
    with pytest.raises(SystemExit):
        _complexity_main()([str(cfg), '--out-dir', str(tmp_path)])
    assert 'cannot count a GlobalContextBlock' in capsys.readouterr().err


@pytest.mark.parametrize('pe_type, dcn', [('detection_qr', None), ('classification', None),
                                          ('detection_qr', dict(type='DCN', deform_groups=1))])
def test_lesa_terms_are_counted(pe_type, dcn):
    """LESA's per-term MACs: the conv terms equal mmengine's count of those modules;
    attention / relative terms follow the hand formulas; the report lists them."""
    from mmctx.analysis import complexity_report
    from mmctx.models.blocks import LESABlock
    c, h, w, g = 32, 6, 5, 4
    block = LESABlock(c, num_heads=g, pe_type=pe_type, pe_size=(h, w), dcn=dcn).eval()
    model = torch.nn.Sequential(block)
    result = count_complexity(model, (torch.randn(2, c, h, w), ))
    (row, ) = result['blocks']
    terms = row['terms']
    analyzer = FlopAnalyzer(model, (torch.randn(2, c, h, w), ))
    analyzer.unsupported_ops_warnings(False)
    by_module = analyzer.by_module()
    n, L, d, dv = 2, h * w, c // g // 2, c // g
    if dcn is None:  # mmcv's DCN op has no jit handle: its MACs are not in mmengine's
        assert terms['unary'] == by_module['0.x_transform']
    assert terms['unary'] == n * L * c * (c // g) * 9 + n * L * c * c + (
        n * L * 18 * c * 9 if dcn else 0)
    assert terms['qkv'] == by_module['0.qkv_transform'] == n * L * c * 2 * c
    assert terms['gate'] == by_module['0.reasoning.1'] + by_module['0.projection.0']  # BN not
    assert terms['attention'] == n * g * L * L * (d + dv)
    assert terms['relative'] == (n * g * L * (2 * h - 1 + 2 * w - 1) * d
                                 if pe_type == 'detection_qr' else n * g * L * L * (2 * d + dv))
    text = complexity_report(result, 'lesa')
    assert '## Terms (LESA' in text
    assert f'| 0 | {terms["unary"] / 1e9:.4f} | {terms["qkv"] / 1e9:.4f} |' in text
