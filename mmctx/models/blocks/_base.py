"""Shared pieces of every context block: argument checks, rank-aware layers."""
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


HALF_DTYPES = (torch.float16, torch.bfloat16)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32; fp32 and fp64 stay as they are (gradcheck runs in fp64)."""
    return t.float() if t.dtype in HALF_DTYPES else t


def no_autocast(t: torch.Tensor):
    """A region where autocast does not lower matmuls/softmax back to half precision."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def exporting() -> bool:
    """Whether the forward is being traced for export (``torch.export``, which the ONNX
    exporter runs, or the TorchScript ONNX exporter).

    The memory-saving chunk loops (NL's concatenation mode, the local relation) then run
    as one chunk: their number of chunks depends on the input size, which an exported
    graph with a dynamic size cannot bake in (the result is the same; the exported model
    holds the whole map at once, as the explicit path does).
    """
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def traced() -> bool:
    """Whether the forward is being traced into a graph (export, ``torch.compile``, the
    jit tracer of the FLOP counter): eager-only paths (Python loops over chunks,
    custom autograd Functions) then give way to single ops."""
    return exporting() or torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int >= {minimum}, got '
                        f'{type(value).__name__} {value!r}')
    if value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value}')
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be a bool, got {type(value).__name__} {value!r}')
    return value


def check_cfg(name: str, cfg: Any) -> Optional[dict]:
    """An mmcv layer config (``norm_cfg``, ``act_cfg``): None or a dict with a "type"."""
    if cfg is not None and (not isinstance(cfg, dict) or 'type' not in cfg):
        raise TypeError(f'{name} must be None or a dict with a "type", got {cfg!r}')
    return cfg


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f'{name} must be one of {list(choices)}, got {value!r}')
    return value


def reduced_channels(in_channels: int, ratio: float, what: str = 'ratio') -> int:
    """``int(in_channels * ratio)``, refusing ratios that make 0 channels."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f'{what} must be a number in (0, 1], got '
                        f'{type(ratio).__name__} {ratio!r}')
    if not 0 < ratio <= 1:
        raise ValueError(f'{what} must be in (0, 1], got {ratio}')
    planes = int(in_channels * ratio)
    if planes < 1:
        raise ValueError(
            f'{what}={ratio} leaves 0 channels for in_channels={in_channels}; '
            f'use a {what} >= {1 / in_channels:.4g}')
    return planes


def pointwise(dim: int, in_channels: int, out_channels: int,
              bias: bool = True) -> nn.Module:
    """A 1×1 (×1) convolution for inputs of spatial rank ``dim``."""
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dim - 1]
    return conv(in_channels, out_channels, kernel_size=1, bias=bias)


class _PointwiseLogits(torch.autograd.Function):
    """A 1×1 convolution whose forward is the convolution itself (the values upstream's
    blocks compute, bit for bit) and whose backward is two small matrix products."""

    @staticmethod
    def forward(ctx, conv, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        return conv._conv_forward(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        # under autocast the forward ran in half precision: the products here run in
        # the inputs' common type, each gradient in its input's dtype
        dtype = torch.promote_types(x.dtype, weight.dtype)
        g = grad.reshape(n, weight.shape[0], -1).to(dtype)
        w = weight.reshape(weight.shape[0], c).to(dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[1]:
            gx = torch.matmul(w.t(), g).reshape(x.shape).to(x.dtype)
        if ctx.needs_input_grad[2]:
            gw = torch.matmul(g, x.reshape(n, c, -1).to(dtype).transpose(1, 2)).sum(0)
            gw = gw.reshape(weight.shape).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = g.sum((0, 2)).to(ctx.bias_dtype)
        return None, gx, gw, gb


def pointwise_logits(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` of a 1×1 conv with few outputs (attention-pooling masks, C→1) as
    ``(N, out, L)``. The forward is the convolution (the same values as upstream's
    blocks); in eager CPU training the backward is two small matrix products, where the
    convolution's backward (oneDNN) took about 10× longer (GC forward+backward at 32×64,
    C=512: 3.9 → 0.4 ms for the mask)."""
    n = x.shape[0]
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in conv.parameters()))
    if needs_grad and x.device.type == 'cpu' and not traced():
        out = _PointwiseLogits.apply(conv, x, conv.weight, conv.bias)
    else:
        out = conv(x)
    return out.reshape(n, conv.out_channels, -1)


class ContextBlockBase(nn.Module):
    """Base of all mmctx context blocks (mmcv plugin contract).

    Args:
        in_channels: channels of the input (and output) feature map.
        dim: spatial rank of the input: 1 for ``(N, C, L)``, 2 for
            ``(N, C, H, W)``, 3 for ``(N, C, T, H, W)``.
    """

    #: name of the block when mmcv's ``build_plugin_layer`` inserts it
    _abbr_ = 'context_block'
    #: whether the output is the input plus (or times) what the block adds
    residual = True
    #: why a graph traced at one input size holds for that size only (an export with a
    #: dynamic size is refused with it, :mod:`mmctx.deploy.onnx`); None: it does not
    fixed_size_reason: Optional[str] = None

    def __init__(self, in_channels: int, dim: int = 2) -> None:
        super().__init__()
        self.in_channels = check_int('in_channels', in_channels)
        self.dim = check_choice('dim', dim, (1, 2, 3))

    def check_input(self, x: Any) -> None:
        """Raise a clear error for a wrong tensor type, rank or channel count."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'{name} expects a torch.Tensor, got {type(x).__name__}')
        if x.dim() != self.dim + 2:
            layout = ('(N, C, L)', '(N, C, H, W)', '(N, C, T, H, W)')[self.dim - 1]
            raise ValueError(
                f'{name} was built with dim={self.dim} and expects a '
                f'{self.dim + 2}D input {layout}, got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'{name} was built for in_channels={self.in_channels}, '
                f'got an input with {x.shape[1]} channels')

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def init_weights(self) -> None:
        """Called by mmengine's ``BaseModule.init_weights``: the block's own init."""
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, dim={self.dim}'


def check_host_args(cfg: dict, host_args: dict, intro: str, host: str, what: str) -> None:
    """Refuse a config that sets an argument its host fills in to another value.

    ``intro`` names the config, ``host`` says what the host expects (with the
    placeholder ``{expected}``), ``what`` is what to remove the keys from.
    """
    wrong = {k: (cfg[k], v) for k, v in host_args.items() if k in cfg and cfg[k] != v}
    if wrong:
        given = ', '.join(f'{k}={a!r}' for k, (a, _) in wrong.items())
        expected = ', '.join(f'{k}={b!r}' for k, (_, b) in wrong.items())
        raise ValueError(f'{intro} sets {given}, but {host.format(expected=expected)}: '
                         f'remove {", ".join(wrong)} from {what}')


def build_block(cfg: Any, where: Optional[str] = None, **default_args: Any) -> nn.Module:
    """Build an mmctx block from a config, whatever the caller's default scope.

    Inside an mmseg/mmdet/mmaction run the default scope is theirs, where unprefixed
    mmctx names do not resolve; here both ``'NonLocalBlock'`` and
    ``'mmctx.NonLocalBlock'`` do. ``default_args`` are what the host fills in
    (``in_channels``, ``dim``); a config that sets one of them to another value is
    refused with a message naming ``where`` the block sits and the value expected
    there (the same value is accepted).
    """
    from mmengine.registry import DefaultScope

    from ...registry import MODELS
    place = f'{where}: ' if where else ''
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'{place}a block config must be a dict with a "type", got {cfg!r}')
    check_host_args(cfg, default_args, f'{place}the block config {cfg.get("type")!r}',
                    'the block sits where {expected} is expected (it is filled in)',
                    'the block config')
    with DefaultScope.overwrite_default_scope('mmctx'):
        return MODELS.build(cfg, default_args=default_args or None)


def zero_init_last(module: Optional[nn.Module]) -> None:
    """Zero the weights of the last layer with weights in ``module``."""
    if module is None:
        return
    last = [m for m in module.modules() if getattr(m, 'weight', None) is not None][-1]
    nn.init.zeros_(last.weight)
    if getattr(last, 'bias', None) is not None:
        nn.init.zeros_(last.bias)


def _conv_of(module: nn.Module) -> Optional[nn.Module]:
    """The plain convolution that :func:`concat_conv` can split, else None: an
    ``nn.ConvNd`` (groups 1, zero padding), or the one of an mmcv ``ConvModule`` that runs
    it first, without explicit padding, spectral norm or the fused conv-BN eval."""
    conv = getattr(module, 'conv', module)
    if type(conv) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d) or conv.groups != 1 \
            or conv.padding_mode != 'zeros' or not isinstance(conv.padding, tuple):
        return None
    if conv is module:
        return conv
    runs_first = (getattr(module, 'order', ('', ))[0] == 'conv'
                  and not getattr(module, 'with_explicit_padding', False)
                  and not getattr(module, 'with_spectral_norm', False)
                  and getattr(module, 'efficient_conv_bn_eval_forward', None) is None)
    return conv if runs_first else None


def concat_conv(module: nn.Module, parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """``module(torch.cat(parts, dim=1))`` without the concatenation.

    The convolution of a channel concatenation is the sum of each part's convolution
    with its slice of the weights: the concatenated tensor (the width of every part
    together, at full resolution: e.g. 512 MiB for ANN's and APCNet's fusions of a
    1024×2048 image at stride 8) is never formed, and ``parts`` may be a generator,
    each part made, convolved and dropped in turn. The same function up to the order
    of the sums (fp32 rounding); the parameters are the module's own, so upstream
    checkpoints load unchanged. ``module``: an ``nn.ConvNd`` or an mmcv ``ConvModule``
    (conv → norm → act); any other layer (grouped, reflect-padded, spectral-normed,
    conv-BN-fused), and any traced call (export, ``torch.compile``, the FLOP counters'
    jit trace), gets the concatenation itself.
    """
    conv = _conv_of(module)
    if conv is None or traced():  # a traced graph keeps the one conv (upstream's graph)
        return module(torch.cat(list(parts), dim=1))
    ops = (F.conv1d, F.conv2d, F.conv3d)[conv.weight.dim() - 3]
    # a 1×1 conv of stride 1 adds each further part into the output (one batched matrix
    # product in place), so it needs no part-sized temporary either
    pointwise_conv = (all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride)
                      and all(p == 0 for p in conv.padding))
    out, start, spatial = None, 0, None
    for part in parts:
        width = part.shape[1]
        if start + width > conv.in_channels:
            raise ValueError(f'concat_conv: the parts have more than the {conv.in_channels} '
                             f'input channels of {type(conv).__name__} (got at least '
                             f'{start + width})')
        weight = conv.weight[:, start:start + width]
        if pointwise_conv and out is not None:  # accumulate in place: no temporary
            w = weight.reshape(weight.shape[0], width).to(out.dtype)
            out.baddbmm_(w.expand(part.shape[0], -1, -1),
                         part.reshape(part.shape[0], width, -1).to(out.dtype))
        else:
            y = ops(part, weight, None, conv.stride, conv.padding, conv.dilation)
            # (a conv's backward needs not its output: in-place sums are free)
            out = y.reshape(y.shape[0], y.shape[1], -1) if pointwise_conv else (
                y if out is None else out.add_(y))
            spatial = y.shape[2:]
        start += width
    if start != conv.in_channels:
        raise ValueError(f'concat_conv: the parts have {start} channels, '
                         f'{type(conv).__name__} takes {conv.in_channels}')
    if pointwise_conv:
        out = out.reshape(out.shape[0], out.shape[1], *spatial)
    if conv.bias is not None:
        out = out.add_(conv.bias.reshape(1, -1, *([1] * (out.dim() - 2))).to(out.dtype))
    if conv is module:
        return out
    for layer in module.order[1:]:
        if layer == 'norm' and module.with_norm:
            out = module.norm(out)
        elif layer == 'act' and module.with_activation:
            out = module.activate(out)
    return out
