"""mmctx's registries: children of mmengine's root registries, scope ``mmctx``.

Because they hang below mmengine's roots, ``type='mmctx.X'`` resolves from any
downstream scope (mmseg, mmdet, mmaction, mmcv's ``build_plugin_layer``): on seeing
the ``mmctx.`` prefix mmengine imports ``mmctx.registry``, and ``locations`` make the
registry import the modules that fill it on first use. ``custom_imports=dict(
imports=['mmctx'])`` works too.

Where the prefix is needed: mmengine resolves an *unprefixed* type in the current
default scope (``mmseg`` / ``mmdet`` / ``mmaction``, set by the config) and its
parents, never in a sibling scope such as ``mmctx``; ``custom_imports`` only imports
mmctx. So a block placed by an upstream module (a ResNet ``plugins=[...]`` entry) and
an mmctx module placed in an upstream config (``decode_head``, ``neck``, ``backbone``)
need ``type='mmctx.X'``. Block configs handed to mmctx's own modules (``ContextHead``
and ``ContextNeck`` ``block``, ``ContextResNet`` ``after_add.block``,
``ContextResNet3d`` ``context_cfg``) are built in the mmctx scope, where both forms
work.

A name that does not resolve in mmctx raises :class:`UnknownTypeError` (a
``KeyError``) naming the type and the closest mmctx names, instead of mmengine's
``None`` that upstream builders turn into messages such as mmcv's ``Cannot find None
in registry``.
"""
import difflib
from typing import Iterable, List, Optional

from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

SCOPE = 'mmctx'


class UnknownTypeError(KeyError):
    """A config ``type`` that names nothing; ``str()`` is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


def _names(registry: Registry) -> List[str]:
    registry.import_from_location()
    return sorted(registry._module_dict)


def scoped_registries(root: Registry) -> Iterable[Registry]:
    """``root`` and every registry below it (mmcv/mmseg/mmdet/... and mmctx)."""
    stack = [root]
    while stack:
        registry = stack.pop()
        yield registry
        stack.extend(registry._children.values())


def close_matches(name: str, names: Iterable[str], n: int = 3) -> List[str]:
    """Up to ``n`` names like ``name`` (case-insensitive spelling mistakes too)."""
    names = list(names)
    lower = {x.lower(): x for x in names}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)
    return [lower[h] for h in hits]


def mmctx_suggestion(name: str, registry: Registry) -> Optional[str]:
    """``"type='mmctx.X'"`` for the mmctx name ``name`` is (or resembles), else None."""
    own = _names(registry)
    if name in own:
        return f"type='{SCOPE}.{name}'"
    hits = close_matches(name, own)
    if hits:
        return ' or '.join(f"type='{SCOPE}.{h}'" for h in hits)
    return None


def unknown_type_message(key: str, registry: Registry) -> str:
    """The message for ``key`` not resolving in the mmctx ``registry``."""
    scope, real = Registry.split_scope_key(key)
    if scope not in (None, SCOPE):
        root = registry._get_root_registry()
        other = root._children.get(scope)
        hits = close_matches(real, _names(other)) if other is not None else []
        hint = (f"; did you mean {' or '.join(repr(scope + '.' + h) for h in hits)}?"
                if hits else '')
        return (f'{key!r} (asked for while building in the mmctx scope) is not in the '
                f'{scope} {registry.name} registry{hint}')
    lines = [f"mmctx has no {registry.name} named {real!r} (type={key!r})"]
    hint = mmctx_suggestion(real, registry)
    if hint:
        lines.append(f'did you mean {hint}?')
    if scope is None:
        # maybe an upstream name used inside an mmctx module: say which scope has it
        root = registry._get_root_registry()
        owners = [r.scope for r in scoped_registries(root)
                  if r is not registry and real in r._module_dict]
        if owners:
            lines.append(f"{real!r} is registered in {owners}: write "
                         + ' or '.join(f"type='{s}.{real}'" for s in owners))
    if len(lines) == 1:
        lines.append(f'mmctx {registry.name}s: {", ".join(_names(registry))}')
    return '; '.join(lines)


class MMCTXRegistry(Registry):
    """mmengine's ``Registry`` that raises :class:`UnknownTypeError` for an unknown
    name instead of returning ``None`` (``in`` still answers ``False``)."""

    def get(self, key: str):
        obj = super().get(key)
        if obj is None:
            raise UnknownTypeError(unknown_type_message(key, self))
        return obj

    def __contains__(self, key: str) -> bool:
        try:
            return super().get(key) is not None
        except RuntimeError:
            return False


MODELS = MMCTXRegistry(
    'model', parent=MMENGINE_MODELS, scope=SCOPE, locations=['mmctx.models'])
DATASETS = MMCTXRegistry(
    'dataset', parent=MMENGINE_DATASETS, scope=SCOPE, locations=['mmctx.datasets'])

#: every registry mmctx defines, by name (the collision test walks these)
ALL_REGISTRIES = dict(models=MODELS, datasets=DATASETS)
