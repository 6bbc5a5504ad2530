"""mmctx's registry: scoped types from every downstream repo, plugins, collisions."""
import textwrap

import pytest
import torch

from .conftest import python

SCOPES = {
    'mmseg': 'mmseg.registry',
    'mmdet': 'mmdet.registry',
    'mmaction': 'mmaction.registry',
    'mmpretrain': 'mmpretrain.registry',
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
    from mmpretrain.utils import register_all_modules as reg_pretrain
    from mmseg.utils import register_all_modules as reg_seg
    import mmcv.cnn  # noqa: F401  (registers mmcv's bricks in the roots)
    import mmctx.models  # noqa: F401
    for register in (reg_seg, reg_det, reg_action, reg_pretrain):
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
    assert {'mmengine', 'mmseg', 'mmdet', 'mmaction', 'mmpretrain', 'mmctx'} <= set(names)
    ours = set().union(*names['mmctx'].values())
    assert 'GlobalContextBlock' in ours
    upstream = set()
    for scope, by_registry in names.items():
        if scope != 'mmctx':
            upstream |= set().union(*by_registry.values())
    assert len(upstream) > 500  # the walk really saw mmcv/mmseg/mmdet/mmaction
    assert {'ContextBlock', 'NonLocal2d', 'DNLHead', 'NLHead', 'GCHead'} <= upstream
    assert not ours & upstream, f'mmctx names that collide: {sorted(ours & upstream)}'


# --- mistakes a user makes with block types, and the messages they get -------------

def test_unprefixed_and_misspelt_plugin_types_in_a_custom_imports_config(tmp_path):
    """README: with custom_imports, a plugin still needs the prefix; both mistakes name
    the type and what to write (mmcv said 'Cannot find None in registry')."""
    messages = {}
    for name, block in (('unprefixed', 'GlobalContextBlock'),
                        ('misspelt', 'mmctx.GlobalContextBlok')):
        cfg = tmp_path / f'{name}.py'
        cfg.write_text(textwrap.dedent(f"""
            custom_imports = dict(imports=['mmctx'], allow_failed_imports=False)
            default_scope = 'mmseg'
            model = dict(type='ResNetV1c', depth=50, base_channels=8, stem_channels=8,
                         norm_cfg=dict(type='BN'), plugins=[dict(
                             cfg=dict(type={block!r}), stages=(False, True, True, True),
                             position='after_conv3')])
        """))
        code = textwrap.dedent(f"""
            from mmengine.config import Config
            from mmengine.registry import MODELS, init_default_scope
            cfg = Config.fromfile({str(cfg)!r})
            init_default_scope(cfg.default_scope)
            try:
                MODELS.build(cfg.model)
            except KeyError as e:
                print('ERROR', e)
        """)
        messages[name] = python('-c', code).stdout
    assert "plugin type='GlobalContextBlock' is an mmctx block" in messages['unprefixed']
    assert "write type='mmctx.GlobalContextBlock'" in messages['unprefixed']
    assert "mmctx has no model named 'GlobalContextBlok'" in messages['misspelt']
    assert "did you mean type='mmctx.GlobalContextBlock'" in messages['misspelt']
    assert 'Cannot find None' not in ''.join(messages.values())


def _mmdet_resnet(cfg):
    from mmdet.registry import MODELS
    return MODELS.build(dict(type='mmdet.ResNet', depth=50, base_channels=8,
                             norm_cfg=dict(type='BN'), plugins=[dict(
                                 cfg=cfg, stages=(False, False, True, False),
                                 position='after_conv3')]))


def test_plugin_in_channels_is_filled_in_by_the_host():
    import mmctx  # noqa: F401  (installs the plugin checks)
    with pytest.raises(ValueError, match=r"GlobalContextBlock in layer3 of ResNet sets "
                       r"in_channels=16, but the host module fills "
                       r"in in_channels=128 .*remove in_channels"):
        _mmdet_resnet(dict(type='mmctx.GlobalContextBlock', in_channels=16))
    # the same value as the host's is accepted; mmcv's own plugins are untouched
    resnet = _mmdet_resnet(dict(type='mmctx.GlobalContextBlock', in_channels=128,
                                ratio=1. / 4))
    assert resnet.layer3[0].gc_block.in_channels == 128
    assert _mmdet_resnet(dict(type='ContextBlock', ratio=1. / 4)).layer3[0].context_block


def _seg_head(cls, **kwargs):
    """A head built in the mmseg scope (its loss is mmseg's), whatever ran before."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmseg'):
        return cls(in_channels=16, channels=8, num_classes=3, **kwargs)


def test_misspelt_block_types_in_every_mmctx_place():
    """ContextHead / ContextNeck / ContextResNet / ContextResNet3d build their block in
    the mmctx scope: unprefixed names work there, and a wrong one is named."""
    from mmctx.models.backbones import ContextResNet, ContextResNet3d
    from mmctx.models.heads import ContextHead
    from mmctx.models.necks import ContextNeck
    from mmctx.registry import UnknownTypeError
    builds = [
        lambda b: _seg_head(ContextHead, block=b),
        lambda b: ContextNeck([8, 16], b, levels=(1, )),
        lambda b: ContextResNet(depth=50, base_channels=8, norm_cfg=dict(type='BN'),
                                after_add=dict(block=b, indices=[[], [], [-1], []])),
        lambda b: ContextResNet3d(depth=50, base_channels=8, pretrained2d=False,
                                  non_local=((0, ) * 3, (0, ) * 4, (0, ) * 5 + (1, ),
                                             (0, ) * 3),
                                  context_cfg=b),
    ]
    for build in builds:
        assert build(dict(type='GlobalContextBlock', ratio=1. / 4)) is not None
        assert build(dict(type='mmctx.GlobalContextBlock', ratio=1. / 4)) is not None
        for wrong in ('mmctx.GlobalContextBlok', 'GlobalContextBlok'):
            with pytest.raises(UnknownTypeError) as info:
                build(dict(type=wrong))
            assert "mmctx has no model named 'GlobalContextBlok'" in str(info.value)
            assert "did you mean type='mmctx.GlobalContextBlock'" in str(info.value)


def test_explicit_in_channels_that_disagrees_with_the_place_is_named():
    from mmctx.models.backbones import ContextResNet
    from mmctx.models.heads import ContextHead
    from mmctx.models.necks import ContextNeck
    block = dict(type='GlobalContextBlock', ratio=1. / 4, in_channels=32)
    with pytest.raises(ValueError, match=r'ContextHead.block .*sets in_channels=32, but '
                       r'the block sits where in_channels=8 is expected'):
        _seg_head(ContextHead, block=block)
    with pytest.raises(ValueError, match='ContextNeck level 1: .*in_channels=16 is exp'):
        ContextNeck([8, 16], block, levels=(1, ))
    with pytest.raises(ValueError, match=r'after_add block at layer3\.5: .*in_channels=128'):
        ContextResNet(depth=50, base_channels=8, norm_cfg=dict(type='BN'),
                      after_add=dict(block=block, indices=[[], [], [-1], []]))
    # the same value is fine
    head = _seg_head(ContextHead, block=dict(block, in_channels=8))
    assert head.gc_block.in_channels == 8


def test_context_neck_names_the_level_whose_channels_differ():
    from mmctx.models.necks import ContextNeck
    neck = ContextNeck([8, 16, 32], dict(type='GlobalContextBlock', ratio=1. / 4),
                       levels=(2, ))
    x = [torch.randn(1, c, 4, 4) for c in (8, 16, 64)]
    with pytest.raises(ValueError, match=r'ContextNeck level 2: in_channels\[2\]=32, but '
                       r'the backbone gives 64 channels .*set in_channels=\[8, 16, 64\]'):
        neck(x)


def test_unknown_upstream_name_inside_an_mmctx_module_says_which_scope_has_it():
    from mmctx.models.blocks._base import build_block
    from mmctx.registry import UnknownTypeError
    with pytest.raises(UnknownTypeError, match=r"'FPN' is registered in .*'mmdet'.*"
                       r"type='mmdet.FPN'"):
        build_block(dict(type='FPN'))
    from mmctx.registry import MODELS
    assert 'GlobalContextBlok' not in MODELS and 'GlobalContextBlock' in MODELS
