"""mmctx's registries: children of mmengine's root registries, scope ``mmctx``.

Because they hang below mmengine's roots, ``type='mmctx.X'`` resolves from any
downstream scope (mmseg, mmdet, mmaction, mmcv's ``build_plugin_layer``): on seeing
the ``mmctx.`` prefix mmengine imports ``mmctx.registry``, and ``locations`` make the
registry import the modules that fill it on first use. ``custom_imports=dict(
imports=['mmctx'])`` works too.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='mmctx', locations=['mmctx.models'])
DATASETS = Registry(
    'dataset', parent=MMENGINE_DATASETS, scope='mmctx', locations=['mmctx.datasets'])

#: every registry mmctx defines, by name (the collision test walks these)
ALL_REGISTRIES = dict(models=MODELS, datasets=DATASETS)
