"""A tiny COCO instance-segmentation dataset in the real on-disk layout.

mmdet's ``CocoDataset`` and ``CocoMetric`` read it unchanged (through pycocotools), so
a test can train and evaluate a detector end to end on a few generated images.
"""
import json
import os
import os.path as osp
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

#: the classes drawn; the annotation files list all 80 COCO classes (by mmdet's
#: ``CocoDataset`` names, ids 1..80), so an 80-class model's predictions of any class
#: can be written and evaluated by ``CocoMetric``
DRAWN = ('person', 'car', 'dog')


def _polygon(rng: np.random.RandomState, size: Tuple[int, int]) -> np.ndarray:
    """A random convex-ish polygon ``(K, 2)`` in ``(x, y)``, at least ~16 px across."""
    h, w = size
    cx, cy = rng.uniform(0.25 * w, 0.75 * w), rng.uniform(0.25 * h, 0.75 * h)
    radius = rng.uniform(0.15, 0.3) * min(h, w)
    k = rng.randint(3, 7)
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    return np.clip(pts, 0, [w - 1, h - 1])


def _image_and_objects(rng: np.random.RandomState, size: Tuple[int, int],
                       colors: np.ndarray, num_objects: int, cat_ids: Sequence[int]):
    h, w = size
    img = Image.fromarray(rng.randint(0, 60, (h, w, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    objects = []
    for _ in range(num_objects):
        cat = rng.randint(len(cat_ids))
        pts = _polygon(rng, size)
        draw.polygon([tuple(p) for p in pts], fill=tuple(int(c) for c in colors[cat]))
        mask = Image.new('L', (w, h))
        ImageDraw.Draw(mask).polygon([tuple(p) for p in pts], fill=1)
        area = float(np.asarray(mask).sum())
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        objects.append(dict(category_id=cat_ids[cat],
                            segmentation=[[round(float(v), 2) for v in pts.reshape(-1)]],
                            bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                            area=area, iscrowd=0))
    return img, objects


def make_coco(root: str, splits: Dict[str, int] = None, size: Tuple[int, int] = (96, 128),
              objects: Sequence[int] = (1, 3), seed: int = 0) -> str:
    """Write a tiny COCO 2017 instance dataset in mmdet's layout and return ``root``.

    Layout (mmdet's ``configs/_base_/datasets/coco_instance.py``)::

        root/annotations/instances_{split}2017.json
        root/{split}2017/{id:012d}.jpg

    Every image holds between ``objects[0]`` and ``objects[1]`` filled polygons of
    the classes in ``DRAWN`` (one colour per class) on a dark noisy background;
    each has a polygon segmentation, its bounding box and mask area.

    Args:
        root: output directory (created).
        splits: images per split, default ``{'train': 4, 'val': 2}``.
        size: ``(height, width)`` of every image (>= 32: mmdet's train filter).
        objects: inclusive range of the number of objects per image.
        seed: the same seed writes the same files.
    """
    splits = dict(train=4, val=2) if splits is None else splits
    if min(size) < 32:
        raise ValueError(f'size must be at least 32x32 (mmdet drops smaller training '
                         f'images), got {size}')
    if not 1 <= objects[0] <= objects[1]:
        raise ValueError(f'objects must be an inclusive range (lo, hi) with 1 <= lo <= '
                         f'hi, got {objects}')
    from mmdet.datasets import CocoDataset
    names = CocoDataset.METAINFO['classes']
    categories = [dict(id=i + 1, name=n, supercategory='thing') for i, n in enumerate(names)]
    cat_ids = [names.index(n) + 1 for n in DRAWN]
    rng = np.random.RandomState(seed)
    colors = np.random.RandomState(seed + 1).randint(100, 256, (len(DRAWN), 3))
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    image_id = ann_id = 0
    for split, count in splits.items():
        folder = f'{split}2017'
        os.makedirs(osp.join(root, folder), exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            img, objs = _image_and_objects(rng, size, colors,
                                           rng.randint(objects[0], objects[1] + 1), cat_ids)
            name = f'{image_id:012d}.jpg'
            img.save(osp.join(root, folder, name), quality=95)
            images.append(dict(id=image_id, file_name=name, height=size[0], width=size[1]))
            for obj in objs:
                ann_id += 1
                annotations.append(dict(obj, id=ann_id, image_id=image_id))
        with open(osp.join(root, 'annotations', f'instances_{folder}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return root
