"""Pretrained-weight references of a config, and a clear line when they cannot load.

Upstream bases carry e.g. ``pretrained='open-mmlab://resnet50_v1c'`` (mmseg),
``init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')`` (mmdet,
mmaction) or ``load_from``; on a machine without internet the download fails deep in
``init_weights`` with ``urllib.error.URLError``. mmctx's ``tools/train.py`` turns that
into one line naming the keys to set.
"""
import http.client
import socket
import urllib.error
from typing import Any, List, Tuple

#: (dotted key, value, the dict holding it, its key there)
Ref = Tuple[str, Any, dict, str]


def pretrained_refs(cfg: Any, path: str = 'model') -> List[Ref]:
    """Every ``pretrained`` string and ``Pretrained`` ``init_cfg`` below ``cfg``."""
    refs: List[Ref] = []
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            where = f'{path}.{key}'
            if key == 'pretrained' and isinstance(value, str):
                refs.append((where, value, cfg, key))
            elif key == 'init_cfg' and isinstance(value, dict) \
                    and value.get('type') == 'Pretrained':
                refs.append((where, value.get('checkpoint'), cfg, key))
            else:
                refs += pretrained_refs(value, where)
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            refs += pretrained_refs(value, f'{path}.{i}')
    return refs


def is_download_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it came from) is a failed network access."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (urllib.error.URLError, socket.gaierror, socket.timeout,
                            ConnectionError, http.client.HTTPException)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def offline_message(cfg, exc: BaseException) -> str:
    """One line: what could not be downloaded and which keys to set instead."""
    refs = [(k, v) for k, v, _, _ in pretrained_refs(cfg.get('model', {}))]
    if cfg.get('load_from', None):
        refs.append(('load_from', cfg.load_from))
    reason = str(getattr(exc, 'reason', exc))
    if not refs:
        return (f'error: a download failed ({reason}) and the config names no pretrained '
                'weights (model...pretrained / init_cfg / load_from)')
    named = ', '.join(f'{k}={v!r}' for k, v in refs)
    scratch = ' '.join(f'{k}=None' for k, _ in refs)
    return (f'error: could not download the pretrained weights in {named} ({reason}); '
            f'train from scratch with --cfg-options {scratch}, or set '
            f'{refs[0][0]}=/path/to/weights.pth (a local file), or put the file in '
            '$TORCH_HOME/hub/checkpoints (~/.cache/torch/hub/checkpoints) under the '
            "URL's file name")
