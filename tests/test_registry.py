"""mmctx's registry: scoped types from every downstream repo, plugins, collisions."""
import textwrap

import pytest
import torch

from .conftest import python

SCOPES = {
    'mmseg': 'mmseg.registry',
    'mmdet': 'mmdet.registry',
    'mmaction': 'mmaction.registry',
    'mmcv plugin builder': None,
}


@pytest.mark.parametrize('scope', list(SCOPES))
def test_scoped_type_without_custom_imports(scope):
    """``type='mmctx.X'`` resolves from a fresh process that never imported mmctx."""
    module = SCOPES[scope]
    build = (f'from {module} import MODELS\n'
             "m = MODELS.build(dict(type='mmctx.GlobalContextBlock', in_channels=16))"
             if module else
             'from mmcv.cnn import build_plugin_layer\n'
             "name, m = build_plugin_layer(dict(type='mmctx.GlobalContextBlock'), "
             "in_channels=16, postfix='_3')\n"
             "assert name == 'gc_block_3', name")
    code = textwrap.dedent("""
        import sys
        {build}
        assert 'mmctx' in sys.modules
        assert type(m).__module__ == 'mmctx.models.blocks.global_context', type(m)
        print('OK', type(m).__name__)
    """).format(build=build)
    assert 'OK GlobalContextBlock' in python('-c', code).stdout


def test_custom_imports_in_a_config(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("custom_imports = dict(imports=['mmctx'], allow_failed_imports=False)\n"
                   "model = dict(type='GlobalContextBlock', in_channels=16)\n")
    code = textwrap.dedent(f"""
        import sys
        from mmengine.config import Config
        cfg = Config.fromfile({str(cfg)!r})
        assert 'mmctx' in sys.modules
        from mmctx.registry import MODELS
        print(type(MODELS.build(cfg.model)).__name__)
    """)
    assert 'GlobalContextBlock' in python('-c', code).stdout


def test_registry_is_a_scoped_child_of_mmengine():
    from mmengine.registry import MODELS as ROOT
    from mmctx.registry import ALL_REGISTRIES, MODELS
    assert MODELS.scope == 'mmctx' and MODELS.parent is ROOT
    assert ROOT._children['mmctx'] is MODELS
    assert all(r.scope == 'mmctx' for r in ALL_REGISTRIES.values())
    assert 'GlobalContextBlock' in MODELS  # filled through `locations`


def test_mmdet_resnet_plugins_build_mmctx_blocks():
    """An mmdet ResNet ``plugins=[...]`` entry builds the block; GC starts as identity."""
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    base = dict(type='mmdet.ResNet', depth=50, base_channels=8, out_indices=(0, 1, 2, 3),
                norm_cfg=dict(type='BN'))
    plain = MODELS.build(base)
    with_gc = MODELS.build(dict(base, plugins=[dict(
        cfg=dict(type='mmctx.GlobalContextBlock', ratio=1. / 4),
        stages=(False, True, True, True), position='after_conv3')]))
    names = [n for n, _ in with_gc.named_modules() if n.endswith('gc_block')]
    assert len(names) == 4 + 6 + 3  # every bottleneck of c3-c5
    assert not any(n.startswith('layer1') for n in names)
    missing, unexpected = with_gc.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all('gc_block' in k for k in missing)
    plain.eval(), with_gc.eval()
    x = torch.randn(2, 3, 33, 47)
    for a, b in zip(plain(x), with_gc(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and once the blocks are non-trivial, they change the output
    for n, m in with_gc.named_modules():
        if n.endswith('gc_block'):
            torch.nn.init.normal_(m.channel_add_conv[-1].weight)
    assert not torch.allclose(plain(x)[-1], with_gc(x)[-1])


def _registered_names():
    """{scope: {registry name: set of names}} over mmengine's whole registry tree."""
    import mmengine.registry as root
    from mmengine.registry import Registry

    from mmaction.utils import register_all_modules as reg_action
    from mmdet.utils import register_all_modules as reg_det
    from mmseg.utils import register_all_modules as reg_seg
    import mmcv.cnn  # noqa: F401  (registers mmcv's bricks in the roots)
    import mmctx.models  # noqa: F401
    for register in (reg_seg, reg_det, reg_action):
        register(init_default_scope=False)
    names = {}

    def walk(reg):
        try:
            reg.import_from_location()
        except ImportError:  # an upstream registry with a bad location
            pass              # (mmaction's 'mmaction.mmengine'); its names are loaded
        names.setdefault(reg.scope, {}).setdefault(reg.name, set()).update(reg.module_dict)
        for child in reg.children.values():
            walk(child)

    for value in vars(root).values():
        if isinstance(value, Registry) and value.parent is None:
            walk(value)
    return names


def test_no_name_collides_with_upstream():
    names = _registered_names()
    assert {'mmengine', 'mmseg', 'mmdet', 'mmaction', 'mmctx'} <= set(names)
    ours = set().union(*names['mmctx'].values())
    assert 'GlobalContextBlock' in ours
    upstream = set()
    for scope, by_registry in names.items():
        if scope != 'mmctx':
            upstream |= set().union(*by_registry.values())
    assert len(upstream) > 500  # the walk really saw mmcv/mmseg/mmdet/mmaction
    assert {'ContextBlock', 'NonLocal2d', 'DNLHead', 'NLHead', 'GCHead'} <= upstream
    assert not ours & upstream, f'mmctx names that collide: {sorted(ours & upstream)}'
