"""The package itself and the mmaction2 1.2.0 wheel work-around."""
import os

import pytest

import mmctx
from mmctx.compat import mmaction_drn

from .conftest import python


def test_version():
    assert isinstance(mmctx.__version__, str) and mmctx.__version__.count('.') == 2


def test_import_mmaction_models_works():
    """After set-up a plain ``import mmaction.models`` works (STACK.md §2)."""
    code = ("import sys; import mmaction.models\n"
            "assert 'mmctx' not in sys.modules\n"
            "from mmaction.registry import MODELS\n"
            "try:\n"
            "    MODELS.build(dict(type='DRN'))\n"
            "except RuntimeError as e:\n"
            "    print('refused:', e)\n")
    out = python('-c', code).stdout
    assert 'refused:' in out and 'mmaction2#2714' in out
    loc = mmaction_drn.find_localizers_dir()
    assert mmaction_drn.status(loc) in ('placeholder', 'upstream')


def test_drn_placeholder_is_idempotent_and_removable(tmp_path):
    loc = str(tmp_path / 'localizers')
    os.makedirs(loc)
    assert mmaction_drn.status(loc) == 'missing'
    assert mmaction_drn.main(['--check', '--localizers-dir', loc]) == 1
    assert mmaction_drn.ensure_drn(loc) is True
    files = sorted(os.listdir(os.path.join(loc, 'drn')))
    assert files == ['__init__.py', 'drn.py']
    snapshot = {f: open(os.path.join(loc, 'drn', f)).read() for f in files}
    assert mmaction_drn.ensure_drn(loc) is False  # second run writes nothing
    assert {f: open(os.path.join(loc, 'drn', f)).read() for f in files} == snapshot
    assert mmaction_drn.status(loc) == 'placeholder'
    assert mmaction_drn.remove_drn(loc) is True
    assert mmaction_drn.status(loc) == 'missing'


def test_drn_never_touches_an_upstream_package(tmp_path):
    loc = str(tmp_path / 'localizers')
    os.makedirs(os.path.join(loc, 'drn'))
    with open(os.path.join(loc, 'drn', '__init__.py'), 'w') as f:
        f.write('from .drn import DRN\n')
    assert mmaction_drn.status(loc) == 'upstream'
    assert mmaction_drn.ensure_drn(loc) is False
    assert mmaction_drn.remove_drn(loc) is False
    assert open(os.path.join(loc, 'drn', '__init__.py')).read() == 'from .drn import DRN\n'


def test_drn_cli_help():
    out = python('-m', 'mmctx.compat.mmaction_drn', '--help').stdout
    assert '--remove' in out and '--check' in out


@pytest.mark.parametrize('rel', ['tools/setup_env.sh', 'tools/dist_train.sh', 'tools/_dist_common.sh',
                                 'tools/dist_test.sh', '.ci/run'])
def test_scripts_are_valid_bash(rel):
    from .conftest import ROOT, run
    run(['bash', '-n', os.path.join(ROOT, rel)])
