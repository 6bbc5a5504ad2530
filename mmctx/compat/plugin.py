"""Clear errors for mmctx blocks built by mmcv's ``build_plugin_layer``.

mmcv 2.1.0's ``build_plugin_layer`` (used by mmdet's and mmseg's ResNet
``plugins=[...]`` and mmdet's RoI extractors) reports a type it cannot resolve as
``KeyError: 'Cannot find None in registry under scope name mmseg'`` (naming neither
the type nor where it lives), and an ``in_channels`` in the plugin's own config — the
host passes it too — as Python's ``got multiple values for keyword argument``.
``import mmctx`` wraps the function (in mmcv and in the modules that imported it by
name) with checks that run *before* mmcv's code and otherwise change nothing: the
same arguments reach mmcv's function, so plugins that resolve build exactly as before.

An unprefixed mmctx name is refused, not resolved: plugins resolve types in the
caller's default scope (see :mod:`mmctx.registry`), and a working config must not
depend on whether mmctx happens to be imported.
"""
import sys
from typing import Any, Dict, Tuple

import torch.nn as nn

#: the attribute set on the wrapper, pointing at mmcv's function
_ORIGINAL = '__mmctx_wrapped__'


def _check_plugin_cfg(cfg: Any, kwargs: Dict[str, Any]) -> bool:
    """Raise a clear error for an unresolvable type or a duplicated host argument.

    Returns whether ``cfg`` builds an mmctx block.
    """
    from mmengine.registry import MODELS as MMCV_MODELS  # what mmcv uses

    from ..registry import MODELS, UnknownTypeError, close_matches, mmctx_suggestion
    if not isinstance(cfg, dict) or not isinstance(cfg.get('type'), str):
        return False  # mmcv's own checks and messages apply
    layer_type = cfg['type']
    with MMCV_MODELS.switch_scope_and_registry(None) as registry:
        cls = registry.get(layer_type)  # an unknown 'mmctx.X' raises here
        scope = registry.scope
        names = list(registry._module_dict)
        parent = registry.parent
        while parent is not None:
            names += list(parent._module_dict)
            parent = parent.parent
    if cls is None:
        _, real = registry.split_scope_key(layer_type)
        hint = mmctx_suggestion(real, MODELS)
        if hint is not None and f"'mmctx.{real}'" in hint:
            raise UnknownTypeError(
                f"plugin type={layer_type!r} is an mmctx block, but a plugin's type is "
                f"resolved in the current scope {scope!r} and its parents, never in "
                f"mmctx's scope (custom_imports only imports mmctx): write {hint}")
        hits = close_matches(real, names)
        suggestions = ([f'type={h!r}' for h in hits] + ([hint] if hint else []))
        raise UnknownTypeError(
            f'plugin type={layer_type!r} is not registered in scope {scope!r} (or its '
            'parents)' + (f"; did you mean {' or '.join(suggestions)}?"
                          if suggestions else ''))
    from ..models.blocks._base import ContextBlockBase, check_host_args
    if not (isinstance(cls, type) and issubclass(cls, ContextBlockBase)):
        return False
    check_host_args(cfg, kwargs, f'the plugin config of {layer_type}{_plugin_place()}',
                    'the host module fills in {expected} for the place the plugin sits '
                    '(its stage and position)', "the plugin's cfg")
    return True


def _plugin_place() -> str:
    """Best effort: `` in layer3 of ResNet`` when a ResNet is building its stages.

    mmdet's and mmseg's ``ResNet.__init__`` build stage ``i`` in a loop whose index is
    the local ``i``; nothing else tells ``build_plugin_layer`` where it is called from.
    """
    frame = sys._getframe(2)
    while frame is not None:
        host = frame.f_locals.get('self')
        if frame.f_code.co_name == '__init__' and hasattr(host, 'stage_blocks') \
                and isinstance(frame.f_locals.get('i'), int):
            return f' in layer{frame.f_locals["i"] + 1} of {type(host).__name__}'
        frame = frame.f_back
    return ''


def build_plugin_layer(cfg: Dict, postfix: Any = '', **kwargs) -> Tuple[str, nn.Module]:
    """mmcv's ``build_plugin_layer`` with mmctx's checks first (see the module doc).

    An ``in_channels`` (or other host argument) in the cfg of an mmctx block that
    equals what the host passes is dropped instead of failing.
    """
    if _check_plugin_cfg(cfg, kwargs) and any(k in cfg for k in kwargs):
        cfg = {k: v for k, v in cfg.items() if k not in kwargs}  # equal, checked above
    return getattr(build_plugin_layer, _ORIGINAL)(cfg, postfix, **kwargs)


def install() -> int:
    """Put the wrapper in mmcv and in every imported module holding mmcv's function.

    Idempotent. Returns the number of module attributes replaced.
    """
    import mmcv.cnn
    import mmcv.cnn.bricks
    import mmcv.cnn.bricks.plugin as plugin
    original = plugin.build_plugin_layer
    if getattr(original, _ORIGINAL, None) is not None:
        original = getattr(original, _ORIGINAL)
    setattr(build_plugin_layer, _ORIGINAL, original)
    count = 0
    for module in list(sys.modules.values()):
        if module is None or module is sys.modules[__name__]:
            continue
        try:
            current = module.__dict__.get('build_plugin_layer')
        except Exception:  # exotic modules without a plain __dict__
            continue
        if current is original:
            module.build_plugin_layer = build_plugin_layer
            count += 1
    return count
