"""Shrink any mmseg / mmdet / mmaction2 config for a seconds-long run on tiny data.

Read by mmctx's ``tools/train.py`` / ``tools/test.py`` from the config key
``tiny_run`` (so ``--cfg-options tiny_run=True`` tries a released config on the
datasets of :mod:`mmctx.testing` in a few seconds on a CPU)::

    tiny_run = True                               # the defaults below
    tiny_run = dict(factor=8, iters=2, batch_size=2, data_root='data/tiny_cityscapes')
"""
from typing import Any, Dict, List, Optional, Tuple

from .pretrained import pretrained_refs

#: transform keys that hold image sizes in pixels (ints; floats are ratios and stay)
SIZE_KEYS = ('scale', 'scales', 'img_scale', 'crop_size', 'input_size', 'size')
#: keys holding lists of transforms inside a transform (TestTimeAug, RandomChoice, ...)
NESTED_TRANSFORM_KEYS = ('transforms', )
TINY_RUN_KEYS = ('factor', 'iters', 'batch_size', 'data_root')


def _shrink(value: Any, factor: int) -> Any:
    """Divide every pixel size (an int > 1) in ``value`` by ``factor``; keep the rest."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(1, round(value / factor)) if value > 1 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_shrink(v, factor) for v in value)
    return value


def _shrink_pipeline(pipeline: Any, factor: int) -> int:
    count = 0
    for step in pipeline if isinstance(pipeline, (list, tuple)) else []:
        if isinstance(step, (list, tuple)):  # TestTimeAug: a list of lists
            count += _shrink_pipeline(step, factor)
            continue
        if not isinstance(step, dict):
            continue
        for key in SIZE_KEYS:
            if key in step and step[key] is not None:
                new = _shrink(step[key], factor)
                count += new != step[key]
                step[key] = new
        for key in NESTED_TRANSFORM_KEYS:
            if key in step:
                count += _shrink_pipeline(step[key], factor)
    return count


def _datasets(dataset: Any) -> List[dict]:
    """A dataset config and the ones it wraps (RepeatDataset, ConcatDataset, ...)."""
    if not isinstance(dataset, dict):
        return []
    found = [dataset]
    found += _datasets(dataset.get('dataset'))
    for inner in dataset.get('datasets', None) or []:
        found += _datasets(inner)
    return found


def _drop_pretrained(model: Any) -> List[str]:
    """Set every pretrained-weight reference of the model config to None; their keys."""
    keys = []
    for key, _, parent, name in pretrained_refs(model):
        parent[name] = None
        keys.append(key)
    return keys


def check_tiny_run(value: Any) -> Optional[Dict[str, Any]]:
    """The options the ``tiny_run`` key asks for, or None when it is off."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f'tiny_run must be True, False or a dict with keys '
                        f'{list(TINY_RUN_KEYS)}, got {value!r}')
    unknown = sorted(set(value) - set(TINY_RUN_KEYS))
    if unknown:
        raise ValueError(f'tiny_run takes the keys {list(TINY_RUN_KEYS)}, got {unknown}')
    for key in ('factor', 'iters', 'batch_size'):
        v = value.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f'tiny_run.{key} must be an int >= 1, got {v!r}')
    return dict(value)


def _move_paths(dataset: dict, data_root: str) -> None:
    """``ann_file`` / ``data_prefix`` paths under their common folder → ``data_root``."""
    import os.path as osp
    prefix = dataset.get('data_prefix')
    keys = [('ann_file', None)] + ([('data_prefix', k) for k in prefix]
                                   if isinstance(prefix, dict) else [])
    paths = {}
    for key, sub in keys:
        value = dataset.get(key) if sub is None else dataset[key].get(sub)
        if isinstance(value, str) and value:
            paths[(key, sub)] = value
    if not paths:
        return
    values = list(paths.values())
    common = osp.commonpath(values) if len(values) > 1 else osp.dirname(values[0])
    if not common:
        return
    for (key, sub), value in paths.items():
        moved = osp.join(data_root, osp.relpath(value, common))
        if sub is None:
            dataset[key] = moved
        else:
            dataset[key][sub] = moved


def tiny_run(cfg, factor: int = 8, iters: int = 2, batch_size: int = 2,
             data_root: Optional[str] = None) -> Tuple[str, ...]:
    """Rewrite ``cfg`` (an mmengine ``Config``) in place for a tiny CPU run.

    * every pixel size in the dataloaders' pipelines (``scale``, ``scales``,
      ``crop_size``, ``input_size``, ...; TTA and nested transforms included), the
      mmseg data preprocessor's ``size`` and a ``slide`` test's ``crop_size`` /
      ``stride`` are divided by ``factor`` (Cityscapes 2048×1024 → 256×128, crop
      512×1024 → 64×128); ratios and ``-1`` stay;
    * ``iters`` training iterations (iteration-based loops) or 1 epoch (epoch-based:
      with 4 images and batch 2 that is 2 iterations), validation and a checkpoint at
      the end, a log line per iteration;
    * train batch ``batch_size``, val/test batch 1, no dataloader workers;
    * no pretrained weights (``pretrained`` strings and ``Pretrained`` init_cfgs off,
      ``load_from`` off): tiny runs work offline;
    * with ``data_root``, every dataset (and a COCO evaluator's ``ann_file`` under the
      old root) points there; a dataset without a ``data_root`` key (mmaction2's
      Kinetics: ``ann_file`` and ``data_prefix`` paths such as
      ``data/kinetics400/...``) has the folder its paths share replaced by it.

    Model widths stay as configured. Returns the lines to log.
    """
    notes = []
    sizes = 0
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader', None)
        if not isinstance(loader, dict):
            continue
        loader['num_workers'] = 0
        loader['persistent_workers'] = False
        loader['batch_size'] = batch_size if split == 'train' else 1
        for dataset in _datasets(loader.get('dataset')):
            sizes += _shrink_pipeline(dataset.get('pipeline'), factor)
            if data_root is not None and 'data_root' in dataset:
                dataset['data_root'] = data_root
            elif data_root is not None:
                _move_paths(dataset, data_root)
    if isinstance(cfg.get('tta_pipeline', None), list):
        sizes += _shrink_pipeline(cfg.tta_pipeline, factor)
    model = cfg.get('model', {})
    pre = model.get('data_preprocessor', None)
    if isinstance(pre, dict) and pre.get('size') is not None:
        pre['size'] = _shrink(pre['size'], factor)
        sizes += 1
    test_cfg = model.get('test_cfg', None)
    if isinstance(test_cfg, dict) and test_cfg.get('mode') == 'slide':
        for key in ('crop_size', 'stride'):
            if key in test_cfg:
                test_cfg[key] = _shrink(test_cfg[key], factor)
                sizes += 1
    notes.append(f'{sizes} image size(s) divided by {factor}')

    train_cfg = cfg.get('train_cfg', None)
    if isinstance(train_cfg, dict) and 'max_iters' in train_cfg:
        train_cfg.update(max_iters=iters, val_interval=iters)
        interval, by_epoch = iters, False
        notes.append(f'{iters} iterations')
    elif isinstance(train_cfg, dict) and 'max_epochs' in train_cfg:
        train_cfg.update(max_epochs=1, val_begin=1, val_interval=1)
        interval, by_epoch = 1, True
        notes.append('1 epoch')
    else:
        interval = by_epoch = None
    hooks = cfg.get('default_hooks', None)
    if isinstance(hooks, dict):
        if isinstance(hooks.get('logger'), dict):
            hooks['logger']['interval'] = 1
        if isinstance(hooks.get('checkpoint'), dict) and interval is not None:
            hooks['checkpoint'].update(interval=interval, by_epoch=by_epoch)
    notes.append(f'train batch {batch_size}, no workers')

    dropped = _drop_pretrained(model)
    if cfg.get('load_from', None):
        cfg.load_from = None
        dropped.append('load_from')
    if dropped:
        notes.append(f'no pretrained weights ({", ".join(dropped)} = None)')

    if data_root is not None:
        old = cfg.get('data_root', None)
        for key in ('val_evaluator', 'test_evaluator'):
            for ev in _as_list(cfg.get(key, None)):
                ann = ev.get('ann_file') if isinstance(ev, dict) else None
                if isinstance(ann, str) and old and ann.startswith(old):
                    ev['ann_file'] = data_root.rstrip('/') + '/' + ann[len(old):].lstrip('/')
        cfg.data_root = data_root
        notes.append(f'data_root={data_root}')
    return tuple(notes)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
