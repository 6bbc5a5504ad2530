"""ONNX export of mmctx blocks and mmseg segmentors, checked against PyTorch.

    from mmctx.deploy import check_onnx, export_onnx
    export = export_onnx(model.eval(), x, 'model.onnx', dynamic=True)
    check_onnx('model.onnx', model, [x, x_of_another_size])  # OnnxMismatchError if off

**Exporter.** torch.onnx's ``torch.export``-based exporter (``dynamo=True``, torch's
default since 2.9; it needs ``onnxscript``). On torch 2.14.1 it exports every registered
mmctx block at a fixed size, and all but APC, ANN (adaptive pooling) and PSA (its map
size depends on the parity of H and W) with a dynamic size
(``tests/test_onnx_export.py``).
The TorchScript exporter (``dynamo=False``) was tried on the same blocks and is not used:
it refuses adaptive pooling to sizes that do not divide the input (APC, ANN), writes
criss-cross's negative ``Transpose`` axes into a graph onnxruntime rejects, and its PSA
graph differed from PyTorch by 1e-2 (relative) without any error; with a dynamic size it
also bakes in ISA's group count.

**Dynamic sizes.** ``dynamic=True`` marks the batch and every spatial axis
``Dim.DYNAMIC``: ``torch.export`` fails (:class:`ExportError`) where the model fixes a
size, and bounds one where the code needs it (ISA: at least two groups per axis, ``H, W
> down_factor``; LESA: its relative tables are cropped up to ``pe_size`` and interpolated
beyond, one graph holds one of the two, ``H, W <= pe_size``). Other conditions the code
puts on the size stay as guards of the program that ONNX would not check:
:func:`checked_bounds` narrows the bounds to where they hold, or refuses. The bounds are
:attr:`OnnxExport.size_range`; ONNX does not enforce them: stay inside them. Size-
dependent chunk loops run as one chunk when exported
(:func:`mmctx.models.blocks._base.exporting`).

**Refused before translation** (:class:`ExportError` naming the module): with a
dynamic size, a block whose ``fixed_size_reason`` says why one graph holds for one
size only (PSA); after tracing (:func:`graph_issues`), random ops (Hamburger with ``rand_init=True`` draws new bases every forward:
the ONNX model would draw its own, so it cannot match PyTorch; build it with
``rand_init=False``), and, for a dynamic export, adaptive pooling to an output size
other than 1 (torch.onnx 2.14 writes its windows for the example size only: onnxruntime
fails or is wrong at another size). A ``torch.export`` failure is reported with the
model's ``mmcv.ops`` modules (compiled kernels, e.g. LESA's ``dcn``), the usual cause.

**onnxruntime.** Its default optimisation level (1.32) computes ``Transpose → MatMul(·,
1-D)`` wrongly; :func:`matrix_matmuls` rewrites such products in the written file.
"""
import itertools
import math
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils._sympy.numbers import int_oo

INPUT_NAME, OUTPUT_NAME = 'input', 'output'
#: default tolerance of :func:`check_onnx` on ``max|onnx − torch| / max|torch|``
RTOL = 1e-4
#: aten adaptive pooling ops: with a dynamic size, exported for the example size only
ADAPTIVE_POOLS = frozenset(
    f'{prefix}adaptive_{kind}_pool{d}d' for prefix in ('', '_') for kind in ('avg', 'max')
    for d in (1, 2, 3))
#: what the deploy extra installs; named in the error when one is missing
REQUIREMENTS = ('onnx', 'onnxruntime', 'onnxscript')

SizeRange = Tuple[int, Optional[int]]


class ExportError(ValueError):
    """The model cannot be exported as asked; the message names the module and why."""


class OnnxMismatchError(RuntimeError):
    """The ONNX model's output differs from PyTorch's by more than the tolerance."""


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file (weights inside it).
        dynamic: whether the batch and spatial axes are dynamic.
        example_shape: shape of the example input it was traced with.
        size_range: for a dynamic export, ``{axis: (min, max)}`` of every dynamic axis
            (0: batch, 2...: spatial) inside which the graph holds (``max`` None:
            unbounded): ``torch.export``'s bounds, narrowed where the program's guards
            fail (:func:`checked_bounds`). ONNX does not enforce them. The batch's
            ``min`` is 2 by torch's tracing convention; batch 1 runs (the CLI checks it).
    """
    path: str
    dynamic: bool
    example_shape: Tuple[int, ...]
    size_range: Dict[int, SizeRange] = field(default_factory=dict)

    def describe(self) -> str:
        """``'static 1x3x48x48'`` or ``'dynamic: batch, H in [9, inf), W in [9, inf)'``."""
        if not self.dynamic:
            return 'static ' + 'x'.join(map(str, self.example_shape))
        names = spatial_names(len(self.example_shape) - 2)
        parts = ['batch']
        for axis, (lo, hi) in sorted(self.size_range.items()):
            if axis >= 2:
                parts.append(f'{names[axis - 2]} in [{lo}, {"inf)" if hi is None else f"{hi}]"}')
        return 'dynamic: ' + ', '.join(parts)


@dataclass
class Difference:
    """ONNX vs PyTorch on one input: ``max_abs = max|onnx − torch|``, ``max_rel =
    max_abs / max|torch|`` (relative to the output's scale, not elementwise: an
    elementwise ratio is meaningless at outputs near 0)."""
    input_shape: Tuple[int, ...]
    max_abs: float
    max_rel: float

    def describe(self) -> str:
        return (f'{"x".join(map(str, self.input_shape))}: max abs diff {self.max_abs:.3g}, '
                f'max rel diff {self.max_rel:.3g}')


def spatial_names(rank: int) -> Tuple[str, ...]:
    return (('L', ), ('H', 'W'), ('T', 'H', 'W'))[rank - 1]


def require_onnx() -> None:
    """Raise an ImportError naming what to install when the deploy extra is missing."""
    import importlib.util
    missing = [m for m in REQUIREMENTS if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f'ONNX export needs {", ".join(missing)}: pip install -e ".[deploy]" '
                          f'(or pip install {" ".join(REQUIREMENTS)})')


# --------------------------------------------------------------------------- models
class SegmentorLogits(nn.Module):
    """An mmseg segmentor's tensor path, ``segmentor(inputs, mode='tensor')``: the decode
    head's logits ``(N, K, h, w)`` at its own resolution (not resized to the input).

    ``inputs`` are what the segmentor's data preprocessor outputs (normalised, padded
    images ``(N, 3, H, W)``); the preprocessor itself is not part of the graph.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.segmentor(inputs, mode='tensor')


def load_segmentor_for_export(config, checkpoint: Optional[str] = None,
                              cfg_options: Optional[dict] = None) -> SegmentorLogits:
    """:class:`SegmentorLogits` of an mmseg config (path or ``Config``), in eval mode on
    the CPU (SyncBN → BN; ``checkpoint=None`` keeps the initial weights)."""
    from mmctx.analysis import load_segmentor
    return SegmentorLogits(load_segmentor(config, checkpoint, 'cpu', cfg_options)).eval()


def block_types() -> List[str]:
    """The registered mmctx block names (``'NonLocalBlock'``, ...)."""
    from mmctx.models.blocks._base import ContextBlockBase
    from mmctx.registry import MODELS
    MODELS.import_from_location()
    return sorted(n for n, c in MODELS.module_dict.items()
                  if isinstance(c, type) and issubclass(c, ContextBlockBase))


def build_block_for_export(block_type: str, in_channels: int, dim: int = 2,
                           **kwargs) -> nn.Module:
    """A registered mmctx block (``'mmctx.NonLocalBlock'`` or ``'NonLocalBlock'``) in eval
    mode; ``kwargs`` are its other arguments."""
    from mmctx.models.blocks._base import build_block
    names = block_types()
    if not isinstance(block_type, str) or block_type.split('mmctx.', 1)[-1] not in names:
        raise TypeError(f'{block_type!r} is not an mmctx block; blocks: {", ".join(names)}')
    return build_block(dict(type=block_type, in_channels=in_channels, dim=dim,
                            **kwargs)).eval()


def random_weights(module: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """Every parameter ``N(0, std²)`` and BN statistics away from (0, 1), in place.

    mmctx blocks start as the identity (their last layer is zero-initialised): checked
    at their initial weights, a wrong context path would go unnoticed.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
        for name, b in module.named_buffers():
            if name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)
            elif name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.1)
    return module


# --------------------------------------------------------------------------- export
def _where(node: torch.fx.Node) -> str:
    """The innermost module a traced node ran in, ``'path (Type)'``."""
    stack = list(node.meta.get('nn_module_stack', {}).values())
    if not stack:
        return 'the model'
    path, kind = stack[-1]
    kind = kind if isinstance(kind, str) else kind.__qualname__
    return f'{path or "the model"} ({kind.rsplit(".", 1)[-1]})'


def _draws_random(node: torch.fx.Node) -> bool:
    """A random op; ops that are random only through a ``dropout_p`` (the fused
    attention) only when it is not 0."""
    if torch.Tag.nondeterministic_seeded not in node.target.tags:
        return False
    schema = node.target._schema
    for i, arg in enumerate(schema.arguments):
        if arg.name == 'dropout_p':
            value = node.kwargs.get('dropout_p', node.args[i] if i < len(node.args)
                                    else arg.default_value)
            return value != 0
    return True


def graph_issues(program: torch.export.ExportedProgram, dynamic: bool) -> List[str]:
    """Why an exported program cannot become a faithful ONNX model (module docstring):
    ``'where: why'`` per offending module (empty: none found)."""
    issues: Dict[str, str] = {}
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op != 'call_function' or not isinstance(node.target, torch._ops.OpOverload):
                continue
            op = node.target._schema.name.split('::')[-1]
            if _draws_random(node):
                issues.setdefault(_where(node), (
                    f'draws random numbers (aten.{op}) in every forward: the ONNX model '
                    'would draw its own and cannot match PyTorch (HamburgerBlock: build '
                    'it with rand_init=False, fixed bases)'))
            elif dynamic and op in ADAPTIVE_POOLS and any(s != 1 for s in node.args[1]):
                issues.setdefault(_where(node), (
                    f'adaptive pooling to {tuple(node.args[1])} (aten.{op}): torch.onnx '
                    'writes its windows for the example size only, so the model cannot '
                    'have a dynamic size; export it with a fixed size'))
    return [f'{where}: {why}' for where, why in issues.items()]


def _readable(guard: str, rank: int) -> str:
    names = ('N', 'C') + spatial_names(rank)
    return re.sub(r"L\['\w+'\]\.size\(\)\[(\d+)\]", lambda m: names[int(m.group(1))], guard)


def checked_bounds(program: torch.export.ExportedProgram, example: Sequence[int]
                   ) -> Tuple[Dict[int, SizeRange], List[str]]:
    """The bounds of a dynamic export inside which its graph holds, and why it holds
    for no size but the example's on an axis (``[]``: it holds for a range on each).

    ``torch.export`` accepts a ``Dim.DYNAMIC`` axis that the code constrains beyond its
    range (a derived size that must not be 1, PSA's map size chosen by the parity of H
    and W, a chunk loop unrolled for one size) and keeps the condition as a guard of the
    program, checked when PyTorch runs it; an ONNX graph checks nothing and is silently
    wrong where a guard fails. The guards are evaluated on each axis from the example
    size down to torch's bound and up to about twice it, every size, and at torch's
    upper bound (8x when unbounded), the other axes at their example sizes, then at the
    corners of the result: the bounds shrink to the interval around the example where
    they hold (an unbounded axis stays unbounded when its 8x probe holds); a corner that
    fails, or an axis left with its example size alone, is reported ``'the traced graph
    holds only where <guard> (not at input shape <shape>)'``. (Reads the program's
    ``_guards_code`` of torch 2.14; where a torch version has none, torch's bounds are
    taken as they are.)
    """
    bounds = dict(size_range_of(program))
    guards = [(g, compile(g, '<guard>', 'eval'))
              for g in getattr(program, '_guards_code', None) or []]
    if not guards:
        return bounds, []

    def failing(shape: Sequence[int]) -> Optional[str]:
        scope = {'L': _AnyInput(torch.empty(tuple(shape), device='meta'))}
        # torch's own generated guard expressions, on a meta tensor of the probe shape
        return next((g for g, code in guards
                     if not eval(code, {'torch': torch, 'math': math}, scope)), None)

    failures: Dict[str, Tuple[int, ...]] = {}
    for axis, (lo, hi) in sorted(bounds.items()):
        size = example[axis]

        def at(value: int) -> Tuple[int, ...]:
            return tuple(value if i == axis else s for i, s in enumerate(example))

        new_lo, new_hi, failed = lo, hi, []  # failed: (guard, shape) on either side
        for value in range(size - 1, lo - 1, -1):  # down to torch's bound, every size
            guard = failing(at(value))
            if guard is not None:
                new_lo = value + 1
                failed.append((guard, at(value)))
                break
        top = 2 * size + 1 if hi is None else min(hi, 2 * size + 1)
        for value in range(size + 1, top + 1):  # up to about twice, every size
            guard = failing(at(value))
            if guard is not None:
                new_hi = value - 1
                failed.append((guard, at(value)))
                break
        else:  # beyond: torch's bound (or 8x when unbounded) alone
            far = hi if hi is not None else 8 * size + 3
            if far > top and failing(at(far)) is not None:
                new_hi = top
        if new_lo == new_hi == size and failed:
            failures.setdefault(*failed[-1])
        bounds[axis] = (new_lo, new_hi)
    if not failures:  # the corners of the box, every axis at once
        ends = [(lo, hi if hi is not None else 2 * example[axis] + 1)
                for axis, (lo, hi) in sorted(bounds.items())]
        for corner in itertools.product(*ends):
            shape = list(example)
            for axis, value in zip(sorted(bounds), corner):
                shape[axis] = value
            guard = failing(shape)
            if guard is not None:
                failures.setdefault(guard, tuple(shape))
    rank = len(example) - 2
    return bounds, [
        f'the traced graph holds only where {_readable(g, rank)} (not at input shape '
        f'{"x".join(map(str, shape))}): export it with a fixed size'
        for g, shape in failures.items()]


class _AnyInput(dict):
    """``L[name]`` of a guard: the probe tensor whatever the forward's argument name."""

    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__()
        self.tensor = tensor

    def __missing__(self, key):
        return self.tensor


def _first_lines(error: BaseException, count: int = 12) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return '\n'.join(lines[:count])


def _mmcv_ops(model: nn.Module) -> List[str]:
    return [f'{name} ({type(m).__name__})' for name, m in model.named_modules()
            if type(m).__module__.startswith('mmcv.ops')]


def size_range_of(program: torch.export.ExportedProgram) -> Dict[int, SizeRange]:
    """``{axis: (min, max)}`` of the user input's symbolic axes."""
    user = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == 'placeholder' and n.name == user)
    out = {}
    for axis, size in enumerate(node.meta['val'].shape):
        if isinstance(size, torch.SymInt):
            bounds = program.range_constraints[size.node.expr]
            upper = bounds.upper  # torch's int_oo when unbounded
            out[axis] = (int(bounds.lower), None if upper == int_oo else int(upper))
    return out


def trace(model: nn.Module, inputs: torch.Tensor, dynamic: bool = False
          ) -> Tuple[torch.export.ExportedProgram, torch.Tensor, Dict[int, SizeRange]]:
    """``torch.export`` of ``model(inputs)`` as :func:`export_onnx` translates it: the
    program, the example it was traced with and, when ``dynamic``, the bounds of its
    dynamic axes (:func:`checked_bounds`). Raises :class:`ExportError` when the model
    cannot be traced or :func:`graph_issues` / :func:`checked_bounds` refuse it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f'inputs must be one torch.Tensor (N, C, *spatial), got '
                        f'{type(inputs).__name__}')
    if inputs.dim() < 3:
        raise ValueError(f'inputs must be (N, C, *spatial), got shape {tuple(inputs.shape)}')
    if model.training:
        raise ValueError(f'{type(model).__name__} is in training mode: the export is of '
                         'the inference graph; call model.eval() first')
    what = type(model.segmentor if isinstance(model, SegmentorLogits) else model).__name__
    example, shapes = inputs, None
    if dynamic:
        fixed = [f'{path or "the model"} ({type(m).__name__}): {m.fixed_size_reason}'
                 for path, m in model.named_modules()
                 if getattr(m, 'fixed_size_reason', None)]
        if fixed:
            raise ExportError(f'{what} cannot be exported to ONNX with a dynamic size:\n  '
                              + '\n  '.join(f'{f}; export it with a fixed size'
                                             for f in fixed))
        if any(s < 2 for s in inputs.shape[2:]):
            raise ValueError(f'a dynamic export needs an example size >= 2 on every spatial '
                             f'axis, got shape {tuple(inputs.shape)}')
        if inputs.shape[0] == 1:  # torch cannot trace a size-1 axis as dynamic
            example = inputs.expand(2, *inputs.shape[1:]).contiguous()
        axes = (0, ) + tuple(range(2, inputs.dim()))
        shapes = ({axis: torch.export.Dim.DYNAMIC for axis in axes}, )
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example, ), dynamic_shapes=shapes)
    except Exception as e:  # noqa: BLE001  (any tracing failure, reported with its cause)
        kind = 'with a dynamic size' if dynamic else 'at a fixed size'
        ops = _mmcv_ops(model)
        hint = ('\nIts mmcv.ops modules run compiled kernels that torch.export cannot '
                'trace: ' + ', '.join(ops)) if ops else ''
        raise ExportError(f'torch.export could not trace {what} {kind} '
                          f'({type(e).__name__}):\n{_first_lines(e)}{hint}') from e
    issues = graph_issues(program, dynamic)
    bounds: Dict[int, SizeRange] = {}
    if dynamic:
        bounds, failures = checked_bounds(program, tuple(example.shape))
        issues += failures
    if issues:
        raise ExportError(f'{what} cannot be exported to ONNX'
                          f'{" with a dynamic size" if dynamic else ""}:\n  '
                          + '\n  '.join(issues))
    return program, example, bounds


def export_onnx(model: nn.Module, inputs: torch.Tensor, path: str, dynamic: bool = False,
                opset_version: Optional[int] = None) -> OnnxExport:
    """Export ``model(inputs)`` (one tensor in, one out) to the ONNX file ``path``.

    Args:
        model: in eval mode (the inference graph: BN statistics, EMA's fixed bases).
        inputs: an example input ``(N, C, *S)``.
        path: the ``.onnx`` file to write (weights inside it); its folder is created.
        dynamic: make the batch and every spatial axis dynamic (the module docstring
            says how sizes are bounded); a batch of 1 is traced as 2 (torch cannot
            trace a size-1 axis as dynamic), spatial sizes must be >= 2.
        opset_version: ONNX opset (default: the exporter's).

    Raises:
        ExportError: the model cannot be exported as asked (the message says which
            module and why).
    """
    require_onnx()
    program, example, bounds = trace(model, inputs, dynamic)
    if osp.dirname(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
    try:
        torch.onnx.export(program, (example, ), path, dynamo=True, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset_version,
                          external_data=False, verbose=False)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f'torch.onnx could not translate {type(model).__name__} '
                          f'({type(e).__name__}):\n{_first_lines(e)}') from e
    matrix_matmuls(path)
    return OnnxExport(path, dynamic, tuple(inputs.shape), bounds)


def matrix_matmuls(path: str) -> int:
    """Rewrite every ``MatMul(A, b)`` with a 1-D ``b`` in the ONNX file ``path`` as
    ``Squeeze(MatMul(A, Unsqueeze(b)))`` (the same function); returns how many.

    Note:
        A workaround for onnxruntime (1.32, default optimisation level): it fuses
        ``Transpose → MatMul(·, 1-D)`` into a ``FusedMatMul`` that computes a wrong
        result (relative error ~0.5 on NL's concatenation mode, whose scores are
        ``q @ w``); with a 2-D ``b`` the fusion is right.
    """
    import onnx
    from onnx import helper
    model = onnx.load(path)
    graph = onnx.shape_inference.infer_shapes(model).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in list(graph.value_info) + list(graph.input) + list(graph.output)
             if v.type.tensor_type.HasField('shape')}
    ranks.update({t.name: len(t.dims) for t in model.graph.initializer})
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != 'MatMul' or ranks.get(node.input[1]) != 1:
            nodes.append(node)
            continue
        count += 1
        axes, col, product = (f'{node.output[0]}_{tag}' for tag in ('axes', 'col', 'mat'))
        model.graph.initializer.append(
            onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))
        nodes += [helper.make_node('Unsqueeze', [node.input[1], axes], [col]),
                  helper.make_node('MatMul', [node.input[0], col], [product]),
                  helper.make_node('Squeeze', [product, axes], [node.output[0]])]
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.checker.check_model(model)
        onnx.save(model, path)
    return count


# --------------------------------------------------------------------------- check
def onnx_session(path: str):
    """An onnxruntime CPU session with as many threads as torch uses."""
    require_onnx()
    import onnxruntime as ort
    if not osp.isfile(path):
        raise FileNotFoundError(f'no such ONNX file: {path}')
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def check_onnx(path: str, model: nn.Module,
               inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
               rtol: float = RTOL) -> List[Difference]:
    """Run the ONNX file ``path`` with onnxruntime and ``model`` with PyTorch on each
    input; one :class:`Difference` per input.

    Raises:
        OnnxMismatchError: an output shape differs, onnxruntime fails on an input, or
            ``max_rel > rtol``.
    """
    batch = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not batch or not all(isinstance(x, torch.Tensor) for x in batch):
        raise TypeError('inputs must be a torch.Tensor or a non-empty sequence of them')
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    out = []
    for x in batch:
        shape = tuple(x.shape)
        with torch.no_grad():
            expected = model(x).float().cpu().numpy()
        try:
            got = session.run(None, {name: x.detach().cpu().numpy()})[0]
        except Exception as e:  # noqa: BLE001  (onnxruntime's own error types)
            raise OnnxMismatchError(f'onnxruntime failed on an input of shape {shape}: '
                                    f'{_first_lines(e, 3)}') from e
        if got.shape != expected.shape:
            raise OnnxMismatchError(f'input {shape}: the ONNX output has shape {got.shape}, '
                                    f'PyTorch\'s {expected.shape}')
        max_abs = float(abs(got - expected).max()) if expected.size else 0.
        scale = float(abs(expected).max()) if expected.size else 0.
        diff = Difference(shape, max_abs, max_abs / scale if scale > 0 else max_abs)
        if not diff.max_rel <= rtol:
            raise OnnxMismatchError(f'the ONNX model differs from PyTorch on {diff.describe()}'
                                    f' > tolerance {rtol:g}')
        out.append(diff)
    return out


def other_size(export: OnnxExport) -> Optional[Tuple[int, ...]]:
    """An input shape other than the example one inside a dynamic export's bounds (batch
    1 when traced with more, else one more; each spatial size about 1.5× or, when that
    is out of bounds, smaller), for checking the dynamic model; None if none exists."""
    if not export.dynamic:
        return None
    shape = list(export.example_shape)
    shape[0] = 1 if shape[0] > 1 else 2
    changed = False
    for axis in range(2, len(shape)):
        lo, hi = export.size_range.get(axis, (shape[axis], shape[axis]))
        size = shape[axis]
        for candidate in (size + size // 2 + 1, size - size // 2 - 1, size + 1, size - 1):
            if candidate >= max(lo, 1) and (hi is None or candidate <= hi):
                shape[axis], changed = candidate, True
                break
    return tuple(shape) if changed else None
