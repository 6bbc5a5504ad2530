"""Let ``torch.load(weights_only=True)`` read mmengine 0.10.7 checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7's
``CheckpointLoader`` does not pass ``weights_only``, so ``resume=True`` fails with
"Unsupported global" (upstream mmengine#1655, STACK.md §3). Turning safe loading off
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) would accept any pickled callable. Instead we
allowlist exactly what a Runner checkpoint's ``message_hub`` holds:

* ``mmengine.logging.history_buffer.HistoryBuffer`` and the numpy pieces its arrays
  and scalars pickle to (``ndarray``, ``dtype``, ``_reconstruct``, ``scalar``, under
  both the numpy 1 ``numpy.core`` and numpy 2 ``numpy._core`` paths, and the bool /
  integer / float dtype classes of ``numpy.dtypes`` — never object or void dtypes);
* ``builtins.getattr`` — which HistoryBuffer needs to pickle its statistics methods
  (``getattr(HistoryBuffer, 'min')``). It is registered as a *restricted* stand-in
  that only returns those methods and raises ``UnpicklingError`` for anything else,
  so it cannot be used to reach arbitrary attributes.
"""
import pickle
from typing import Any, List, Tuple

import numpy as np
import torch

_DONE = False


def _numpy_multiarray():
    return np._core.multiarray if hasattr(np, '_core') else np.core.multiarray


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to the statistics methods of ``HistoryBuffer``."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and name in (
            'min', 'max', 'mean', 'current'):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        'mmctx safe loading: getattr is only allowed for HistoryBuffer.'
        f'{{min,max,mean,current}}, got getattr({obj!r}, {name!r})')


def mmengine_checkpoint_globals() -> List[Tuple[Any, str]]:
    """The (object, pickled name) pairs an mmengine 0.10.7 checkpoint needs."""
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = _numpy_multiarray()
    pairs = [(HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
             (np.ndarray, 'numpy.ndarray'), (np.dtype, 'numpy.dtype'),
             (_history_buffer_getattr, 'builtins.getattr')]
    for prefix in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        pairs.append((multiarray._reconstruct, f'{prefix}._reconstruct'))
        pairs.append((multiarray.scalar, f'{prefix}.scalar'))
    # numpy >= 1.25 rebuilds a pickled dtype as an instance of its class in
    # ``numpy.dtypes``; logged scalars are bool, integer or floating point
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for kind in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                     np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                     np.float64):
            cls = type(np.dtype(kind))
            pairs.append((cls, f'numpy.dtypes.{cls.__name__}'))
    return pairs


def allow_mmengine_checkpoints() -> None:
    """Register :func:`mmengine_checkpoint_globals` as safe (idempotent)."""
    global _DONE
    if _DONE:
        return
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
    _DONE = True
