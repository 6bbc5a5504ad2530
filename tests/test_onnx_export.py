"""ONNX export (mmctx.deploy, tools/deploy/export_onnx.py): bad input and refusals first,
then every registered block at a fixed and at a dynamic size, checked against PyTorch
with onnxruntime, then segmentors through the CLI."""
import glob
import importlib.util
import os.path as osp
import re

import pytest
import torch

for _module in ('onnx', 'onnxruntime', 'onnxscript'):
    pytest.importorskip(_module, reason=f'ONNX export needs {_module} (the deploy extra: '
                        'pip install -e ".[deploy]")')

from mmctx.deploy import (ExportError, OnnxMismatchError,  # noqa: E402
                          build_block_for_export, check_onnx, export_onnx, other_size,
                          random_weights, trace)
from mmctx.deploy.onnx import onnx_session  # noqa: E402
from mmctx.models.blocks import attention  # noqa: E402

from .conftest import ROOT, python  # noqa: E402
from .helpers.export_blocks import (BLOCKS, C, LR_ONE_ROW, Together, block,  # noqa: E402
                                    covers_every_block, example, relative_differences)

#: how each refused block's dynamic export is refused
REFUSED = {
    'apc': r'acm_modules.1 \(AdaptiveContextModule\): adaptive pooling to \(2, 2\).*'
           r'export it with a fixed size',
    'ann': r'stages.0 \(PyramidStage\): adaptive pooling to \(3, 3\)',
    'psa': r"the model \(PointwiseSpatialBlock\): its attention-map size and resize "
           r"align_corners follow mmseg's PSAHead, which picks them by the parity of H and "
           r'W.*; export it with a fixed size',
}
#: one entry per block type that can be dynamic, with the chunked paths forced to several
#: chunks in PyTorch (exported: one chunk, the same result)
DYNAMIC = [b for b in BLOCKS if b[3] and b[1] not in {e[1] for e in BLOCKS[:BLOCKS.index(b)]}
           and b[0] != 'lr'] + [
    ('nl-concatenation-chunked', 'NonLocalBlock', dict(mode='concatenation'), True),
    ('lr-chunked', 'LocalRelationBlock', dict(chunk_elements=LR_ONE_ROW), True)]


def cli():
    """tools/deploy/export_onnx.py as a module, to call its main() in-process."""
    spec = importlib.util.spec_from_file_location(
        'export_onnx', osp.join(ROOT, 'tools', 'deploy', 'export_onnx.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------- bad input, refusals
def test_table_covers_every_registered_block():
    assert covers_every_block()


@pytest.mark.parametrize('make, error, match', [
    (lambda p: export_onnx(block('NonLocalBlock', {}).train(), example(), p),
     ValueError, r'training mode.*call model.eval\(\)'),
    (lambda p: export_onnx(block('NonLocalBlock', {}), [example()], p),
     TypeError, 'inputs must be one torch.Tensor'),
    (lambda p: export_onnx(block('NonLocalBlock', {}), example((2, C, 1, 5)), p,
                           dynamic=True), ValueError, 'example size >= 2'),
    (lambda p: build_block_for_export('mmctx.ContextHead', C),
     TypeError, "'mmctx.ContextHead' is not an mmctx block; blocks: AdaptiveContextBlock"),
    (lambda p: check_onnx(p, block('NonLocalBlock', {}), example()),
     FileNotFoundError, 'no such ONNX file'),
])
def test_bad_input(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        make(str(tmp_path / 'missing.onnx'))


@pytest.mark.parametrize('type_, kwargs, dynamic, match', [
    # new random bases every forward: the ONNX model would draw its own
    ('HamburgerBlock', {}, False, r'the model \(HamburgerBlock\): draws random numbers '
     r'\(aten.rand\).*rand_init=False'),
    # a compiled mmcv kernel torch.export cannot trace
    ('LESABlock', dict(pe_size=9, dcn=dict(type='DCN', deform_groups=1)), False,
     r'torch.export could not trace LESABlock at a fixed size.*'
     r'mmcv.ops modules.*x_transform.0 \(DeformConv2dPack\)'),
    # tied to one size by construction
    ('LESABlock', dict(pe_size=(9, 11), pe_type='classification'), True,
     r"with a dynamic size.*pe_type='classification'\) cannot have a dynamic size: "
     r'its embeddings index the flattened position'),
] + [(b[1], b[2], True, REFUSED[b[0]]) for b in BLOCKS if not b[3]])
def test_refused_with_the_reason(tmp_path, type_, kwargs, dynamic, match):
    path = tmp_path / 'refused.onnx'
    with pytest.raises(ExportError, match=f'(?s){match}'):
        export_onnx(block(type_, kwargs), example(), str(path), dynamic=dynamic)
    assert not path.exists()


def test_mismatch_is_an_error(tmp_path):
    model = block('GlobalContextBlock', {})
    export = export_onnx(model, example(), str(tmp_path / 'gc.onnx'))
    other = random_weights(build_block_for_export('GlobalContextBlock', C), seed=1)
    with pytest.raises(OnnxMismatchError, match=r'differs from PyTorch on 2x16x9x11: '
                       r'max abs diff .* > tolerance 0.0001'):
        check_onnx(export.path, other, example())
    with pytest.raises(OnnxMismatchError, match=r'onnxruntime failed on an input of shape '
                       r'\(2, 16, 12, 11\)'):  # a static model at another size
        check_onnx(export.path, model, example((2, C, 12, 11)))


# --------------------------------------------------------------------------- blocks
def check_blocks(path: str, model: Together, inputs) -> dict:
    """``{id: max relative difference}`` of every block over the inputs; each <= 1e-4."""
    session, worst = onnx_session(path), {}
    for x in inputs:
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
        for key, rel in relative_differences(model, got, expected, x).items():
            worst[key] = max(worst.get(key, 0.), rel)
    bad = {k: v for k, v in worst.items() if not v <= 1e-4}
    assert not bad, f'ONNX differs from PyTorch by more than 1e-4 (relative): {bad}'
    return worst


def test_every_block_exports_at_a_fixed_size(tmp_path):
    model, x = Together(BLOCKS).eval(), example()
    export = export_onnx(model, x, str(tmp_path / 'blocks.onnx'))
    assert export.describe() == 'static 2x16x9x11'
    check_blocks(export.path, model, [x])


def test_every_block_exports_with_a_dynamic_size(tmp_path, monkeypatch):
    """Every block type that can be dynamic (one entry each; NL's concatenation mode and
    the local relation forced to loop over several chunks in PyTorch: exported, their
    loop runs as one chunk), checked at a second batch and size."""
    monkeypatch.setattr(attention, 'CHUNK_ELEMENTS', 2 * 9 * 11 * 7)  # 14 chunks of 7
    model, x = Together(DYNAMIC).eval(), example()
    export = export_onnx(model, x, str(tmp_path / 'blocks.onnx'), dynamic=True)
    # the bounds of all: ISA needs H, W > down_factor (8), LESA H, W <= pe_size (16)
    assert export.size_range == {0: (2, None), 2: (9, 16), 3: (9, 16)}
    second = other_size(export)  # another batch (1) and size, inside the bounds
    assert second == (1, C, 14, 12)
    check_blocks(export.path, model, [x, example(second, seed=1)])


class Parity(torch.nn.Module):
    """A graph that holds for odd widths only (as PSA's, which follows mmseg)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[3] % 2 else x


def test_guards_that_do_not_hold_are_refused(tmp_path):
    with pytest.raises(ExportError, match=r'Parity cannot be exported to ONNX with a '
                       r'dynamic size:\n  the traced graph holds only where \(W % 2\) != 0 '
                       r'\(not at input shape 2x16x9x12\): export it with a fixed size'):
        export_onnx(Parity().eval(), example(), str(tmp_path / 'parity.onnx'), dynamic=True)
    export_onnx(Parity().eval(), example(), str(tmp_path / 'parity.onnx'))  # fixed: fine


@pytest.mark.parametrize('type_, kwargs, bounds', [
    ('NonLocalBlock', {}, (2, None)),
    # torch.export's bound is 2; the pooled keys' guard (H // 2 != 1) narrows it
    ('NonLocalBlock', dict(sub_sample=True), (4, None)),
    ('InterlacedSparseBlock', {}, (9, None)),  # two groups per axis: > down_factor
    ('LESABlock', dict(pe_size=16), (2, 16)),  # its relative tables cropped, not stretched
])
def test_dynamic_bounds(type_, kwargs, bounds):
    _, _, found = trace(block(type_, kwargs), example(), dynamic=True)
    assert found == {0: (2, None), 2: bounds, 3: bounds}


# ------------------------------------------------------------------------ segmentors
def contextshapes(family: str) -> str:
    """The ContextShapes 'global' config of a family (exactly one must exist)."""
    found = glob.glob(osp.join(ROOT, 'configs', 'contextshapes',
                               f'{family}_tinyconv_*_contextshapes-global.py'))
    assert len(found) == 1, f'expected one {family} ContextShapes config, found {found}'
    return found[0]


@pytest.mark.parametrize('family, extra', [
    ('nonlocal', ['--dynamic']),  # the NL / DNL family
    ('gcnet', []),  # GC / SNL / SE
    ('emanet-t3', ['--dynamic']),  # the low-rank family
    ('ccnet', []),  # sparse attention
    ('hamnet', ['--cfg-options', 'model.decode_head.block.rand_init=False']),
])
def test_cli_segmentor(tmp_path, capsys, family, extra):
    out = str(tmp_path / f'{family}.onnx')
    rc = cli().main([contextshapes(family), '--shape', '24', '20', '--out', out,
                     '--random-weights'] + extra)
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    lines = printed.out.splitlines()
    checks = [line for line in lines if line.startswith('check ')]
    assert lines[-1] == f'written: {out}' and osp.isfile(out)
    if '--dynamic' in extra:  # checked at the example and at another batch and size
        assert 'dynamic: batch, H in [' in lines[0] and len(checks) == 2
        assert checks[0].startswith('check 1x3x24x20: ') and checks[1].startswith('check 2x3x')
    else:
        assert f'(static 1x3x24x20) to {out}' in lines[0] and len(checks) == 1
    assert all('tolerance 0.0001' in c for c in checks)


def test_cli_refusal_and_usage(tmp_path, capsys):
    main = cli().main
    out = str(tmp_path / 'ham.onnx')
    assert main([contextshapes('hamnet'), '--shape', '24', '20', '--out', out]) == 2
    err = capsys.readouterr().err
    assert 'error: EncoderDecoder cannot be exported to ONNX' in err
    assert 'decode_head.ham_block (HamburgerBlock): draws random numbers' in err
    assert not osp.exists(out)
    for argv, message in (
            (['--shape', '8', '8', '--out', out], 'give either CONFIG'),
            (['--block', 'NonLocalBlock', '--shape', '8', '--out', out],
             r'--shape needs 2 size\(s\) \(H W\), got \[8\]'),
            (['--block', 'NonLocalBlock', '--shape', '8', '8', '--out', out,
              '--random-weights'], '--random-weights is for segmentor mode'),
            ([osp.join(ROOT, 'nope.py'), '--shape', '8', '8', '--out', out],
             'no such config file')):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert re.search(message, capsys.readouterr().err), message


def test_cli_end_to_end(tmp_path):
    """One run as a user runs it: a subprocess, a block with its arguments."""
    out = str(tmp_path / 'gc.onnx')
    proc = python(osp.join(ROOT, 'tools', 'deploy', 'export_onnx.py'), '--block',
                  'mmctx.GlobalContextBlock', '--in-channels', '8', '--shape', '7', '9',
                  '--block-args', 'pooling_type=avg', 'ratio=0.5', '--out', out)
    lines = proc.stdout.splitlines()
    assert lines[0] == f'exported mmctx.GlobalContextBlock (static 1x8x7x9) to {out}'
    assert re.fullmatch(r'check 1x8x7x9: max abs diff \S+, max rel diff \S+ '
                        r'\(tolerance 0.0001\)', lines[1]), lines[1]
    assert lines[2] == f'written: {out}'
