"""A small plain CNN whose receptive field is known exactly (for ContextShapes)."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from ...registry import MODELS


@MODELS.register_module()
class TinyConvNet(BaseModule):
    """A 3×3 stride-2 stem followed by ``num_convs`` 3×3 convs (BN + ReLU each).

    Its receptive field is ``3 + 4 * num_convs`` input pixels (15 for the default 3):
    small enough that, on ContextShapes, an object pixel never sees a cue.

    Args:
        in_channels: input channels.
        channels: width of every layer.
        num_convs: 3×3 convs after the stem.
        norm_cfg: norm of every layer.
    """

    def __init__(self, in_channels: int = 3, channels: int = 32, num_convs: int = 3,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        for name, value in (('in_channels', in_channels), ('channels', channels),
                            ('num_convs', num_convs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an int >= 1, got {value!r}')
        layers = [ConvModule(in_channels, channels, 3, stride=2, padding=1,
                             norm_cfg=norm_cfg)]
        layers += [ConvModule(channels, channels, 3, padding=1, norm_cfg=norm_cfg)
                   for _ in range(num_convs)]
        self.layers = nn.Sequential(*layers)
        self.num_convs = num_convs

    @property
    def receptive_field(self) -> int:
        """Side of the square receptive field, in input pixels."""
        return 3 + 2 * 2 * self.num_convs  # each 3x3 conv after the stride-2 stem: +4

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        return (self.layers(x), )
