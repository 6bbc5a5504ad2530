"""Generate tiny datasets in the real upstream on-disk layouts.

Nothing can be downloaded here, so tests and smoke runs write a few images in the
exact layout the upstream dataset classes expect and read them back through the
real mmseg / mmdet / mmaction2 pipelines.
"""
import os
import os.path as osp
from typing import Dict, Tuple

import numpy as np
from PIL import Image

#: Cityscapes has 19 train ids; 255 is ignored
CITYSCAPES_NUM_CLASSES = 19


def _class_colors(num_classes: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (num_classes, 3), dtype=np.uint8)


def _scene(rng: np.random.RandomState, size: Tuple[int, int], colors: np.ndarray,
           num_classes: int, ignore_index: int) -> Tuple[np.ndarray, np.ndarray]:
    """An image of class-coloured rectangles (plus noise) and its label map."""
    h, w = size
    label = np.full((h, w), rng.randint(num_classes), dtype=np.uint8)
    for _ in range(rng.randint(3, 7)):
        cls = rng.randint(num_classes)
        y0, x0 = rng.randint(0, h - 4), rng.randint(0, w - 4)
        y1, x1 = y0 + rng.randint(4, h // 2 + 5), x0 + rng.randint(4, w // 2 + 5)
        label[y0:y1, x0:x1] = cls
    label[rng.rand(h, w) < 0.01] = ignore_index  # a few unlabeled pixels
    img = colors[np.minimum(label, num_classes - 1)].astype(np.int16)
    img += rng.randint(-20, 21, img.shape).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_cityscapes(root: str, splits: Dict[str, int] = None,
                    size: Tuple[int, int] = (128, 256), seed: int = 0) -> str:
    """Write a tiny Cityscapes in mmseg's layout and return ``root``.

    Layout (as after mmseg's ``tools/dataset_converters/cityscapes.py``)::

        root/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
        root/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelTrainIds.png

    Args:
        root: output directory (created).
        splits: images per split, default ``{'train': 4, 'val': 2}``.
        size: ``(height, width)`` of every image.
        seed: the same seed writes the same files.
    """
    splits = dict(train=4, val=2) if splits is None else splits
    colors = _class_colors(CITYSCAPES_NUM_CLASSES, seed)
    rng = np.random.RandomState(seed)
    cities = dict(train=('aachen', 'bochum'), val=('frankfurt', 'lindau'),
                  test=('berlin', 'bielefeld'))
    for split, count in splits.items():
        for i in range(count):
            city = cities.get(split, (split, ))[i % 2 if split in cities else 0]
            stem = f'{city}_{i:06d}_000019'
            img, label = _scene(rng, size, colors, CITYSCAPES_NUM_CLASSES, 255)
            img_dir = osp.join(root, 'leftImg8bit', split, city)
            ann_dir = osp.join(root, 'gtFine', split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(ann_dir, exist_ok=True)
            Image.fromarray(img).save(osp.join(img_dir, f'{stem}_leftImg8bit.png'))
            Image.fromarray(label).save(
                osp.join(ann_dir, f'{stem}_gtFine_labelTrainIds.png'))
    return root


#: ADE20K has 150 classes; label 0 is "other" and ignored (reduce_zero_label)
ADE20K_NUM_CLASSES = 150


def make_ade20k(root: str, splits: Dict[str, int] = None,
                size: Tuple[int, int] = (96, 128), seed: int = 0) -> str:
    """Write a tiny ADE20K (``ADEChallengeData2016``) in mmseg's layout; return ``root``.

    Layout::

        root/images/{training,validation}/ADE_{train,val}_{i:08d}.jpg
        root/annotations/{training,validation}/ADE_{train,val}_{i:08d}.png

    Labels are 0..150 with 0 = "other" (mmseg's ``reduce_zero_label`` maps it to 255).

    Args:
        root: output directory (created).
        splits: images per split, default ``{'training': 4, 'validation': 2}``.
        size: ``(height, width)``.
        seed: the same seed writes the same files.
    """
    splits = dict(training=4, validation=2) if splits is None else splits
    colors = _class_colors(ADE20K_NUM_CLASSES + 1, seed)
    rng = np.random.RandomState(seed)
    for split, count in splits.items():
        tag = 'train' if split == 'training' else 'val'
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            img, label = _scene(rng, size, colors, ADE20K_NUM_CLASSES + 1, 0)
            stem = f'ADE_{tag}_{i + 1:08d}'
            Image.fromarray(img).save(osp.join(img_dir, stem + '.jpg'), quality=95)
            Image.fromarray(label).save(osp.join(ann_dir, stem + '.png'))
    return root
