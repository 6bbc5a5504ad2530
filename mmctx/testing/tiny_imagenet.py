"""A tiny ImageNet-1k in mmpretrain's on-disk layout."""
import os
import os.path as osp
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

#: the first ImageNet-1k synsets, in the class order of mmpretrain's ``ImageNet``
SYNSETS = ('n01440764', 'n01443537', 'n01484850', 'n01491361', 'n01494475', 'n01496331',
           'n01498041', 'n01514668')


def make_imagenet(root: str, splits: Optional[Dict[str, int]] = None, num_classes: int = 4,
                  size: Tuple[int, int] = (64, 64), seed: int = 0) -> str:
    """Write a tiny ImageNet in mmpretrain's layout and return ``root``::

        root/meta/{train,val}.txt     # "n01440764/n01440764_00000.JPEG 0" / "ILSVRC..._00000001.JPEG 2"
        root/train/{synset}/{synset}_{i:05d}.JPEG
        root/val/ILSVRC2012_val_{i:08d}.JPEG

    Each class is a colour and a stripe orientation on noise, so a model can fit it.

    Args:
        root: the ``data/imagenet`` directory (created).
        splits: images per split, default ``{'train': 8, 'val': 4}``.
        num_classes: how many of the first ImageNet classes to use (<= 8); labels are
            their ImageNet indices ``0..num_classes-1``.
        size: ``(height, width)`` of every image.
        seed: the same seed writes the same files.
    """
    splits = dict(train=8, val=4) if splits is None else dict(splits)
    unknown = set(splits) - {'train', 'val'}
    if unknown:
        raise ValueError(f'splits takes the keys train and val, got {sorted(unknown)}')
    if not 1 <= num_classes <= len(SYNSETS):
        raise ValueError(f'num_classes must be in 1..{len(SYNSETS)}, got {num_classes}')
    h, w = size
    rng = np.random.RandomState(seed)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    yy, xx = np.mgrid[:h, :w]
    for split, count in splits.items():
        lines = []
        for i in range(count):
            label = i % num_classes
            colour = np.array([(label * 97) % 256, (label * 53 + 80) % 256, 200 - 40 * label])
            stripes = ((xx if label % 2 else yy) // 4) % 2
            img = rng.randint(0, 60, (h, w, 3)) + stripes[..., None] * colour[None, None]
            img = np.clip(img, 0, 255).astype(np.uint8)
            if split == 'train':
                rel = f'{SYNSETS[label]}/{SYNSETS[label]}_{i:05d}.JPEG'
            else:
                rel = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
            path = osp.join(root, split, rel)
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray(img).save(path, format='JPEG', quality=95)
            lines.append(f'{rel} {label}')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return root
