"""Restore ``mmaction/models/localizers/drn`` missing from the mmaction2 1.2.0 wheel.

``mmaction/models/localizers/__init__.py`` does ``from .drn.drn import DRN``, but the
1.2.0 wheel and source archive on PyPI ship without the ``drn`` folder
(open-mmlab/mmaction2#2714), so ``import mmaction.models`` fails on a fresh install.

``tools/setup_env.sh`` runs ``python -m mmctx.compat.mmaction_drn``, which writes a
two-file placeholder package there. It is:

* transparent — every file says who wrote it and why, ``--check`` reports the state,
  ``--remove`` deletes exactly what was written;
* idempotent — nothing is written when ``drn`` exists (a real one from a fixed
  mmaction2 release is never touched);
* honest — ``DRN`` stays registered under its name, but building it raises a
  ``RuntimeError`` saying the model is not in the installed wheel.
"""
import argparse
import importlib.util
import os
import os.path as osp
import shutil
import sys
from typing import Optional

MARKER = 'mmctx placeholder for the drn package missing from the mmaction2 wheel'

_INIT = f'''# {MARKER}
# Written by mmctx (python -m mmctx.compat.mmaction_drn); see open-mmlab/mmaction2#2714.
# Remove with: python -m mmctx.compat.mmaction_drn --remove
from .drn import DRN

__all__ = ['DRN']
'''

_DRN = f'''# {MARKER}
# Written by mmctx (python -m mmctx.compat.mmaction_drn); see open-mmlab/mmaction2#2714.
from mmaction.registry import MODELS


@MODELS.register_module()
class DRN:
    """Placeholder: the DRN localizer is not part of the installed mmaction2 wheel."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            'DRN is not available: the mmaction2 1.2.0 wheel ships without '
            'mmaction/models/localizers/drn (open-mmlab/mmaction2#2714); mmctx '
            'installed a placeholder so that `import mmaction.models` works. '
            'Install mmaction2 from its git repository to use DRN.')
'''


def find_localizers_dir() -> Optional[str]:
    """Directory of ``mmaction/models/localizers`` without importing mmaction.models."""
    spec = importlib.util.find_spec('mmaction')
    if spec is None or not spec.submodule_search_locations:
        return None
    path = osp.join(list(spec.submodule_search_locations)[0], 'models', 'localizers')
    return path if osp.isdir(path) else None


def status(localizers_dir: str) -> str:
    """``'missing'``, ``'placeholder'`` (written by mmctx) or ``'upstream'``."""
    drn_dir = osp.join(localizers_dir, 'drn')
    if not osp.isdir(drn_dir):
        return 'missing'
    init = osp.join(drn_dir, '__init__.py')
    if osp.isfile(init):
        with open(init) as f:
            if MARKER in f.read():
                return 'placeholder'
    return 'upstream'


def ensure_drn(localizers_dir: str) -> bool:
    """Write the placeholder if ``drn`` is missing. Returns whether it wrote."""
    if status(localizers_dir) != 'missing':
        return False
    drn_dir = osp.join(localizers_dir, 'drn')
    tmp_dir = drn_dir + '.mmctx-tmp'
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    for name, text in (('__init__.py', _INIT), ('drn.py', _DRN)):
        with open(osp.join(tmp_dir, name), 'w') as f:
            f.write(text)
    os.replace(tmp_dir, drn_dir)  # atomic: never a half-written package
    return True


def remove_drn(localizers_dir: str) -> bool:
    """Delete the placeholder (never an upstream ``drn``). Returns whether it did."""
    if status(localizers_dir) != 'placeholder':
        return False
    shutil.rmtree(osp.join(localizers_dir, 'drn'))
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--check', action='store_true', help='only report the state')
    group.add_argument('--remove', action='store_true', help='delete the placeholder')
    parser.add_argument('--localizers-dir', help='default: the installed mmaction2')
    args = parser.parse_args(argv)
    loc = args.localizers_dir or find_localizers_dir()
    if loc is None:
        print('mmaction2 is not installed: nothing to do')
        return 0
    if args.check:
        print(f'{osp.join(loc, "drn")}: {status(loc)}')
        return 0 if status(loc) != 'missing' else 1
    if args.remove:
        done = remove_drn(loc)
        print(f'removed the placeholder in {loc}' if done else 'no placeholder to remove')
        return 0
    if ensure_drn(loc):
        print(f'wrote the placeholder package {osp.join(loc, "drn")} '
              '(DRN itself stays unavailable)')
    else:
        print(f'{osp.join(loc, "drn")}: {status(loc)}, left as it is')
    return 0


if __name__ == '__main__':
    sys.exit(main())
