"""LESA-ResNets: upstream ResNets whose Bottleneck 3×3 convs are LESA blocks.

The official LESA backbones (``Chenglin-Yang/LESA_classification`` and
``LESA_detection``) replace ``conv2`` (the 3×3 conv) of the Bottlenecks of chosen
stages by a LESA module and drop its BN (LESA's output is already batch-normalised;
the ReLU after it stays); the first (downsampling) Bottleneck of a stage can keep its
conv. A stride-2 LESA computes at the input resolution and average-pools.

``LESAResNetMixin`` does this on an already built upstream ResNet (mmdet's ``ResNet``,
mmseg's ``ResNetV1c``): it swaps the chosen ``conv2`` modules for
:class:`~mmctx.models.blocks.LESABlock` and their ``norm2`` for ``nn.Identity`` — the
upstream forward runs unchanged, and every other state-dict key stays upstream's.
"""
import importlib.util
from typing import Any, List, Optional, Sequence, Tuple

import torch.nn as nn

from ...registry import MODELS
from ..blocks._base import build_block, check_int


def _flags(value: Any, name: str, num: int) -> Tuple[bool, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != num \
            or not all(isinstance(v, bool) for v in value):
        raise ValueError(f'{name} must be {num} bools, one per stage, got {value!r}')
    return tuple(value)


class LESAResNetMixin:
    """Puts LESA blocks in place of the 3×3 convs of chosen Bottlenecks.

    Args:
        lesa: :class:`~mmctx.models.blocks.LESABlock` arguments shared by every LESA
            block (``num_heads``, ``pe_type``, ``unary`` / ``binary`` / ``fusion``,
            ``with_cp``, ...); ``in_channels`` / ``out_channels`` / ``stride`` come
            from the Bottleneck.
        lesa_stages: per stage, whether its Bottlenecks get LESA (official: stages 3
            and 4).
        keep_first_conv: per stage, whether its first Bottleneck keeps the conv
            (official: ``(True, True, True, False)``: all stage-4 blocks are LESA).
        pe_sizes: per stage, the feature-map size (int or ``(H, W)``) the relative
            tables are made for (official detection at 1024²: ``(256, 128, 64, 32)``;
            ImageNet: ``(56, 28, 14, 14)``), or None for LESABlock's default. A
            stride-2 block computes at twice that size, as the official code.
        *args, **kwargs: the host ResNet's arguments. With the host's ``dcn`` /
            ``stage_with_dcn``, a LESA block in a DCN stage gets a deformable unary
            3×3 (the official detection backbone).
    """

    def __init__(self, *args: Any, lesa: Optional[dict] = None,
                 lesa_stages: Sequence[bool] = (False, False, True, True),
                 keep_first_conv: Sequence[bool] = (True, True, True, False),
                 pe_sizes: Optional[Sequence[Any]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        name = type(self).__name__
        if lesa is not None and not isinstance(lesa, dict):
            raise TypeError(f'{name}: lesa must be a dict of LESABlock arguments, got '
                            f'{lesa!r}')
        reserved = {'in_channels', 'out_channels', 'stride', 'type'} & set(lesa or {})
        if reserved:
            raise ValueError(f'{name}: lesa must not set {sorted(reserved)}: they come '
                             'from each Bottleneck')
        num = len(self.res_layers)
        self.lesa_cfg = dict(lesa or {})
        self.lesa_stages = _flags(lesa_stages, 'lesa_stages', num)
        self.keep_first_conv = _flags(keep_first_conv, 'keep_first_conv', num)
        if pe_sizes is None:
            pe_sizes = (None, ) * num
        if not isinstance(pe_sizes, (list, tuple)) or len(pe_sizes) != num:
            raise ValueError(f'pe_sizes must hold {num} entries (one per stage, an int, '
                             f'(H, W) or None), got {pe_sizes!r}')
        self.pe_sizes = tuple(pe_sizes)
        for stage, layer_name in enumerate(self.res_layers):
            if not self.lesa_stages[stage]:
                continue
            for index, block in enumerate(getattr(self, layer_name)):
                if index == 0 and self.keep_first_conv[stage]:
                    continue
                self._to_lesa(block, stage, f'{layer_name}.{index}')

    def _to_lesa(self, block: nn.Module, stage: int, where: str) -> None:
        if not all(hasattr(block, a) for a in ('conv2', 'norm2_name', 'conv2_stride')):
            raise TypeError(f'{type(self).__name__}: LESA replaces the 3×3 conv of '
                            f'Bottleneck blocks (ResNet depth 50, 101 or 152); {where} is '
                            f'a {type(block).__name__}')
        if getattr(block, 'with_cp', False) and self.lesa_cfg.get('with_cp', False):
            raise ValueError('with_cp (whole Bottlenecks) and lesa.with_cp (the LESA '
                             'terms only) cannot both be True, as in the official code')
        conv = block.conv2
        channels = conv.in_channels
        cfg = dict(self.lesa_cfg, type='LESABlock')
        size = self.pe_sizes[stage]
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            cfg.setdefault('pe_size', tuple(s * block.conv2_stride for s in size))
        dcn = getattr(block, 'dcn', None)
        if dcn is not None:
            cfg.setdefault('dcn', {k: v for k, v in dcn.items() if k != 'fallback_on_stride'})
        block.conv2 = build_block(cfg, f'{type(self).__name__} {where}.conv2',
                                  in_channels=channels, out_channels=conv.out_channels,
                                  stride=block.conv2_stride)
        setattr(block, block.norm2_name, nn.Identity())

    def lesa_blocks(self) -> List[Tuple[str, nn.Module]]:
        """``(name, block)`` of every LESA block."""
        from ..blocks.lesa import LESABlock
        return [(n, m) for n, m in self.named_modules() if isinstance(m, LESABlock)]


if importlib.util.find_spec('mmdet') is not None:
    from mmdet.models.backbones.resnet import Bottleneck as _MMDetBottleneck
    from mmdet.models.backbones.resnet import ResNet as _MMDetResNet

    @MODELS.register_module()
    class LESAResNet(LESAResNetMixin, _MMDetResNet):
        """mmdet's ``ResNet`` with LESA blocks (the official LESA detection backbone:
        ``strides=(1, 2, 2, 2)``, LESA in stages 3–4, DCN unary terms with
        ``dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)``); see :class:`LESAResNetMixin`.

        Args:
            expansion: the Bottleneck's output / inner width ratio (mmdet's: 4). With
                ``stem_channels=64, base_channels=128, expansion=2`` this is WRN-50-2,
                the official ``wrn=True`` backbone of the LESA HTC model (a 64-channel
                stem, inner widths 128..1024, stage outputs 256..2048: the keys and
                shapes of torchvision's ``wide_resnet50_2``; without ``stem_channels``
                mmdet makes the stem ``base_channels`` wide); the argument exists as in
                mmpretrain's ResNet, mmdet's has none.
        """

        def __init__(self, *args: Any, expansion: Optional[int] = None,
                     **kwargs: Any) -> None:
            if expansion is not None:
                expansion = check_int('expansion', expansion)
                depth = kwargs.get('depth', args[0] if args else None)
                block, stages = _MMDetResNet.arch_settings.get(depth, (None, None))
                if block is not _MMDetBottleneck:
                    raise ValueError('LESAResNet: expansion needs a Bottleneck ResNet '
                                     f'(depth 50, 101 or 152), got depth={depth!r}')
                wide = type(f'Bottleneck{expansion}', (_MMDetBottleneck, ),
                            dict(expansion=expansion, __module__=__name__))
                # an instance attribute: mmdet's ResNet reads self.arch_settings[depth]
                object.__setattr__(self, 'arch_settings', {depth: (wide, stages)})
            super().__init__(*args, **kwargs)

if importlib.util.find_spec('mmseg') is not None:
    from mmseg.models.backbones.resnet import ResNetV1c as _MMSegResNetV1c

    @MODELS.register_module()
    class LESAResNetV1c(LESAResNetMixin, _MMSegResNetV1c):
        """mmseg's ``ResNetV1c`` (the ``-D8`` backbones) with LESA blocks; see
        :class:`LESAResNetMixin`."""

if importlib.util.find_spec('mmpretrain') is not None:
    from mmpretrain.models.backbones.resnet import ResNet as _MMPretrainResNet

    @MODELS.register_module()
    class LESAResNetCls(LESAResNetMixin, _MMPretrainResNet):
        """mmpretrain's ``ResNet`` with LESA blocks (the official ImageNet LESA
        backbones: ``strides=(1, 2, 2, 1)``, LESA in stages 3–4 with
        ``pe_type='classification'`` at ``pe_sizes=(56, 28, 14, 14)``; WRN-50-2:
        ``base_channels=128, expansion=2``); see :class:`LESAResNetMixin`."""
