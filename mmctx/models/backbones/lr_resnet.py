"""LR-ResNets (LR-Nets): mmpretrain ResNets whose spatial convs are local relation layers.

* Local Relation Networks for Image Recognition (Hu et al., ICCV 2019) —
  https://arxiv.org/abs/1904.11491 (no official code found).

``LRResNet`` builds mmpretrain's ``ResNet`` and then swaps, in every Bottleneck, the
3×3 ``conv2`` for a :class:`~mmctx.models.blocks.LocalRelationBlock` (same channels,
the Bottleneck's stride; its BN and ReLU stay: the relation output is not normalised).
The upstream forward runs unchanged and every other state-dict key stays upstream's.

Choices where the paper's layout is [NF] for us (the paper's Table 1 was not
available; written down here):

* **Stem** (``lr_stem=True``, default): the 7×7 stride-2 conv becomes ``1×1 conv (3 →
  stem_channels) → BN → ReLU → 7×7 local relation, stride 2`` (then the stem's BN,
  ReLU and max-pool as upstream): a local relation needs more than 3 channels for its
  ``G = C/m`` key/query groups. ``lr_stem=False`` keeps the conv stem.
* **Widths**: mmpretrain's (``base_channels``, ``expansion``). A 7×7 local relation
  has far fewer weights and MACs than the 3×3 conv it replaces, so an LR-ResNet of
  ResNet's widths is smaller and cheaper than its ResNet; the configs widen the
  Bottleneck's inner width to half its output (``base_channels=128, expansion=2``),
  which puts LR-ResNet-26 at 15.3 M params / 2.6 GMACs, near the paper's LR-Net-26
  (14.7 M, 2.6 GFLOPs [A: second-hand]); measured numbers: ``configs/lrnet/README.md``.
* Depths: 26 (Bottlenecks ``(2, 2, 2, 2)``), 38 (``(2, 3, 5, 2)``), 50, 101.
"""
import importlib.util
from typing import Any, List, Optional, Sequence, Tuple

import torch.nn as nn

from ...registry import MODELS
from ..blocks._base import build_block, check_bool

#: LocalRelationBlock arguments that come from where the block sits
RESERVED = ('type', 'in_channels', 'out_channels', 'stride', 'dim')

if importlib.util.find_spec('mmpretrain') is not None:
    from mmcv.cnn import build_norm_layer
    from mmpretrain.models.backbones.resnet import Bottleneck as _Bottleneck
    from mmpretrain.models.backbones.resnet import ResNet as _MMPretrainResNet

    @MODELS.register_module()
    class LRResNet(_MMPretrainResNet):
        """mmpretrain's ``ResNet`` with local relation layers in place of the spatial
        convs (see the module docstring).

        Args:
            depth: 26, 38, 50 or 101 (Bottleneck ResNets).
            relation: :class:`~mmctx.models.blocks.LocalRelationBlock` arguments shared
                by every layer (``kernel_size`` (7), ``channel_sharing`` (8),
                ``composability``, ``geometry``, ``with_cp``, ...); channels and stride
                come from where each layer sits.
            lr_stem: replace the 7×7 stem conv by ``1×1 conv → BN → ReLU → local
                relation (stride 2)``.
            lr_stages: per stage, whether its Bottlenecks get local relation layers.
            *args, **kwargs: mmpretrain ``ResNet`` arguments (``dilations`` must stay
                1 in local relation stages; ``deep_stem`` excludes ``lr_stem``).
        """

        arch_settings = {
            26: (_Bottleneck, (2, 2, 2, 2)),
            38: (_Bottleneck, (2, 3, 5, 2)),
            50: (_Bottleneck, (3, 4, 6, 3)),
            101: (_Bottleneck, (3, 4, 23, 3)),
        }

        def __init__(self, depth: int, *args: Any, relation: Optional[dict] = None,
                     lr_stem: bool = True,
                     lr_stages: Sequence[bool] = (True, True, True, True),
                     **kwargs: Any) -> None:
            if depth not in self.arch_settings:
                raise ValueError(f'LRResNet depth must be one of '
                                 f'{sorted(self.arch_settings)}, got {depth!r}')
            if relation is not None and not isinstance(relation, dict):
                raise TypeError('LRResNet: relation must be a dict of LocalRelationBlock '
                                f'arguments, got {relation!r}')
            reserved = sorted(set(RESERVED) & set(relation or {}))
            if reserved:
                raise ValueError(f'LRResNet: relation must not set {reserved}: they come '
                                 'from where each local relation layer sits')
            check_bool('lr_stem', lr_stem)
            if lr_stem and kwargs.get('deep_stem', False):
                raise ValueError('LRResNet: lr_stem=True replaces the 7×7 stem conv; '
                                 'deep_stem=True has none: set one of them to False')
            super().__init__(depth, *args, **kwargs)
            num = len(self.res_layers)
            if not isinstance(lr_stages, (list, tuple)) or len(lr_stages) != num \
                    or not all(isinstance(v, bool) for v in lr_stages):
                raise ValueError(f'lr_stages must be {num} bools, one per stage, got '
                                 f'{lr_stages!r}')
            self.relation_cfg = dict(relation or {})
            self.lr_stem, self.lr_stages = lr_stem, tuple(lr_stages)
            if lr_stem:
                self._stem_to_relation()
            for stage, layer_name in enumerate(self.res_layers):
                if not self.lr_stages[stage]:
                    continue
                for index, block in enumerate(getattr(self, layer_name)):
                    self._to_relation(block, f'{layer_name}.{index}')

        def _build(self, where: str, channels: int, stride: int) -> nn.Module:
            cfg = dict(self.relation_cfg, type='LocalRelationBlock')
            return build_block(cfg, f'LRResNet {where}', in_channels=channels,
                               stride=stride)

        def _stem_to_relation(self) -> None:
            conv = self.conv1  # the upstream 7×7, stride 2
            c = conv.out_channels
            _, norm = build_norm_layer(self.norm_cfg, c)
            self.conv1 = nn.Sequential(
                nn.Conv2d(conv.in_channels, c, 1, bias=False), norm, nn.ReLU(inplace=True),
                self._build('conv1.3', c, conv.stride[0]))

        def _to_relation(self, block: nn.Module, where: str) -> None:
            if block.dilation != 1:
                raise ValueError(f'LRResNet: {where} has dilation {block.dilation}; local '
                                 'relation layers are not dilated: use dilations of 1 '
                                 'in local relation stages')
            conv = block.conv2
            block.conv2 = self._build(f'{where}.conv2', conv.in_channels,
                                      block.conv2_stride)

        def relation_layers(self) -> List[Tuple[str, nn.Module]]:
            """``(name, layer)`` of every local relation layer."""
            from ..blocks.local_relation import LocalRelationBlock
            return [(n, m) for n, m in self.named_modules()
                    if isinstance(m, LocalRelationBlock)]

        def init_weights(self) -> None:
            """mmpretrain's init (Kaiming for every ``Conv2d``, zero-γ last BNs), then the
            local relation layers' own init (their key/query convs would otherwise be
            Kaiming fan-out, far too large for logits). Skipped for pretrained
            weights."""
            super().init_weights()
            if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
                return
            for _, layer in self.relation_layers():
                layer.reset_parameters()
