"""mmdet's ResNet with mmctx blocks *after the residual add* of chosen Bottlenecks.

The NL paper (Mask R-CNN: one block before the last res4 block) and the official DNL
detection code (``Howal/DNL-Object-Detection``: ``stage_with_nlgcb=[[], [], [-2], []]``)
apply their block to the sum ``out + identity`` of a Bottleneck, before its final
ReLU. mmdet's ``plugins`` only offer positions before the add (after_conv1/2/3), so
this backbone adds that one position to mmdet's ``ResNet`` without copying it.
"""
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmdet.models.backbones.resnet import Bottleneck, ResNet

from ...registry import MODELS
from ..blocks._base import build_block

AFTER_ADD_KEYS = ('block', 'indices', 'postfix')


class AfterAddBottleneck(Bottleneck):
    """mmdet's ``Bottleneck`` with a block on ``out + identity``, before the ReLU.

    Not built directly: :class:`ContextResNet` turns chosen ``Bottleneck`` instances
    into this class (as ``torch.nn.utils.parametrize`` does) and adds the block
    under ``after_add_name``, so every other key of the state dict stays mmdet's.

    Note:
        mmdet's ``Bottleneck.forward`` does the add and the ReLU in one function with
        no hook point in between, so ``residual_sum`` re-states its residual branch
        (conv1/2/3, norms, ReLUs, after_conv1/2/3 plugins, downsample). A test checks
        it against mmdet's forward, with and without plugins, downsampling and
        ``with_cp``. With ``with_cp`` the block is checkpointed with the branch.
    """

    after_add_name: str

    def residual_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``block(branch(x) + identity)``: everything but the final ReLU."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv1_plugin_names)
        out = self.relu(self.norm2(self.conv2(out)))
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv2_plugin_names)
        out = self.norm3(self.conv3(out))
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv3_plugin_names)
        return getattr(self, self.after_add_name)(out + identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self.residual_sum, x, use_reentrant=False)
        else:
            out = self.residual_sum(x)
        return self.relu(out)


def _check_indices(indices: Any, stage_blocks: Sequence[int]) -> List[Tuple[int, ...]]:
    """Per-stage block indices (negative allowed), normalised to non-negative."""
    num = len(stage_blocks)
    if not isinstance(indices, (list, tuple)) or len(indices) != num:
        raise ValueError(
            f'after_add.indices must be a list with one list of block indices per '
            f'stage ({num} stages with {list(stage_blocks)} blocks), e.g. '
            f'{[[]] * (num - 2) + [[-2], []]} for one block before the last block '
            f'of stage {num - 1}; got {indices!r}')
    out = []
    for stage, (chosen, count) in enumerate(zip(indices, stage_blocks)):
        if not isinstance(chosen, (list, tuple)):
            raise TypeError(f'after_add.indices[{stage}] must be a list of ints, '
                            f'got {chosen!r}')
        resolved = []
        for i in chosen:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f'after_add.indices[{stage}] must hold ints, got {i!r}')
            if not -count <= i < count:
                raise ValueError(
                    f'after_add.indices[{stage}] has index {i}, but stage {stage} '
                    f'(layer{stage + 1}) has {count} blocks: use -{count}..{count - 1}')
            resolved.append(i % count)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f'after_add.indices[{stage}] names a block twice: '
                             f'{list(chosen)} -> {resolved}')
        out.append(tuple(sorted(resolved)))
    return out


@MODELS.register_module()
class ContextResNet(ResNet):
    """mmdet's ``ResNet`` plus mmctx blocks after the residual add of chosen blocks.

    Args:
        after_add: ``None`` (plain ResNet) or a dict with

            * ``block``: an mmctx block config (``in_channels`` is filled in), e.g.
              ``dict(type='mmctx.DisentangledNonLocalBlock', preset='official_det')``;
            * ``indices``: one list per stage of the Bottleneck indices that get the
              block (negative counts from the end), e.g. ``[[], [], [-2], []]``
              ("c4": before the last res4 block) or ``[[], [], [-2], [0, 1, 2]]``;
            * ``postfix`` (optional): appended to the block's module name
              (``_abbr_``, e.g. ``dnl_block``) if a plugin already uses that name.
        *args, **kwargs: mmdet ``ResNet`` arguments (``plugins`` still work).

    Shape:
        as ``ResNet``; the blocks keep the shape of their Bottleneck's output.

    Note:
        mmdet's default init (no pretrained checkpoint) Kaiming-initialises every
        Conv2d first; mmengine then calls each child's ``init_weights``, which for
        mmctx blocks restores their own init (zero-initialised outputs). mmcv's
        ``ContextBlock`` has no ``init_weights``, so as an mmdet plugin it keeps the
        Kaiming weights instead of its zero init.
    """

    def __init__(self, *args: Any, after_add: Optional[dict] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_add = after_add
        if after_add is None:
            return
        if not isinstance(after_add, dict):
            raise TypeError('after_add must be None or a dict with keys '
                            f'{list(AFTER_ADD_KEYS)}, got {after_add!r}')
        unknown = set(after_add) - set(AFTER_ADD_KEYS)
        missing = {'block', 'indices'} - set(after_add)
        if unknown or missing:
            raise ValueError(f'after_add takes the keys {list(AFTER_ADD_KEYS)} '
                             f'(block and indices required); unknown: '
                             f'{sorted(unknown)}, missing: {sorted(missing)}')
        postfix = after_add.get('postfix', '')
        if not isinstance(postfix, (str, int)) or isinstance(postfix, bool):
            raise TypeError(f'after_add.postfix must be a str or int, got {postfix!r}')
        stages = [getattr(self, name) for name in self.res_layers]
        indices = _check_indices(after_add['indices'], [len(s) for s in stages])
        for stage, (layer, chosen) in enumerate(zip(stages, indices)):
            for i in chosen:
                self._insert(layer[i], after_add['block'], str(postfix),
                             f'layer{stage + 1}.{i}')

    @staticmethod
    def _insert(bottleneck: nn.Module, block_cfg: dict, postfix: str, where: str) -> None:
        if type(bottleneck) is not Bottleneck:
            raise TypeError(f'after_add needs mmdet Bottleneck blocks (ResNet depth 50, '
                            f'101 or 152); {where} is a {type(bottleneck).__name__}')
        channels = bottleneck.planes * bottleneck.expansion
        block = build_block(block_cfg, f'ContextResNet after_add block at {where}',
                            in_channels=channels)
        name = f'{getattr(block, "_abbr_", "context_block")}{postfix}'
        if hasattr(bottleneck, name):
            raise ValueError(f'{where} already has a module named {name!r} (a plugin?); '
                             'set after_add.postfix to tell them apart')
        bottleneck.add_module(name, block)
        bottleneck.__class__ = AfterAddBottleneck
        bottleneck.after_add_name = name

    def after_add_blocks(self) -> List[Tuple[str, nn.Module]]:
        """``(Bottleneck name, block)`` for every block after a residual add."""
        return [(name, getattr(m, m.after_add_name)) for name, m in self.named_modules()
                if isinstance(m, AfterAddBottleneck)]

