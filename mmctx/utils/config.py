"""Config utilities."""
from typing import Any, Union

#: norm types that need a process group on GPUs (scope prefixes are ignored)
SYNCBN_TYPES = ('SyncBN', 'MMSyncBN')


def _is_syncbn(norm_type: Any) -> bool:
    return isinstance(norm_type, str) and norm_type.split('.')[-1] in SYNCBN_TYPES


def syncbn_to_bn(cfg: Any, target: str = 'BN') -> int:
    """Replace every nested ``SyncBN`` norm config by ``target``, in place.

    Upstream configs inherited with ``mmseg::`` / ``mmdet::`` carry
    ``norm_cfg=dict(type='SyncBN')`` in nested entries (backbone, decode_head,
    auxiliary_head, ...), which a top-level ``norm_cfg`` in a child config does not
    reach; ``SyncBN`` fails under CPU DDP. This walks the whole config (dicts, lists,
    tuples) and rewrites each ``dict(type='SyncBN', ...)``; other keys such as
    ``requires_grad`` are kept. Use ``target='BN3d'`` for 3D (video) models.

    Returns:
        the number of replaced entries.
    """
    if not isinstance(target, str) or not target:
        raise TypeError(f'target must be a norm type name such as "BN", got {target!r}')
    count = 0
    if isinstance(cfg, dict):
        if _is_syncbn(cfg.get('type')):
            cfg['type'] = target
            count += 1
        for value in cfg.values():
            count += syncbn_to_bn(value, target)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            count += syncbn_to_bn(value, target)
    return count


def resolve_syncbn_switch(value: Union[None, bool, str], cuda: bool) -> Union[None, str]:
    """What the ``syncbn_to_bn`` config key asks for: a target type or None.

    ``True`` → ``'BN'``; a string → that norm type; ``False`` → keep SyncBN;
    unset (``None``) → convert to ``'BN'`` only when CUDA is not available.
    """
    if value is None:
        return None if cuda else 'BN'
    if value is True:
        return 'BN'
    if value is False:
        return None
    if isinstance(value, str) and value:
        return value
    raise TypeError('syncbn_to_bn must be true, false, a norm type such as "BN3d", '
                    f'or unset; got {value!r}')
