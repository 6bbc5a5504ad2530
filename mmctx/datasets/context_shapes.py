"""ContextShapes: a synthetic segmentation dataset on which context provably matters.

Every image shows square *objects* on a noisy grey background and small *cues*
elsewhere in the image. The class of an object (``red``, ``green`` or ``blue``) is
never visible on or near the object: it is written in a cue at least ``GAP`` pixels
away from every object.

* ``global`` — one cue per image; its colour is the class of **every** object (all
  objects are white). One image-level fact: query-independent context (GC, SNL,
  unary-only) suffices.
* ``paired`` — one cue per object, 3 to 5 objects in a 64-px image. An object is
  painted in a *key* hue drawn from the continuous hue circle (at least
  ``MIN_HUE_GAP`` from the other keys of its image); its partner cue is a square of the
  same hue whose 4×4 centre is a class *grey* (dark, mid or light: no hue, so a key can
  never be mistaken for a class). Objects of one image almost always differ in class,
  so each object must find *its* cue: query-specific (pairwise) context. A
  query-independent block sees one summary of the image for all its objects; with
  continuous keys and several objects there are no key×class conjunctions to memorise
  in a few channels (the discrete keys of the first version allowed exactly that).

Why a context-free model cannot beat chance on the object class: the prediction of
the demo's context-free baseline at a pixel depends on the input within
``BASELINE_REACH`` = 9 px (the backbone's 15×15 receptive field, radius 7, plus 2 px
from bilinearly upsampling its stride-2 logits). Every cue is at Chebyshev distance
≥ ``GAP`` = 12 px from every object pixel, and the object's own appearance (white, or a
key hue drawn independently of the class) carries no information about its class,
which is drawn uniformly from 3. So for a context-free model the object class is
independent of everything it sees: its expected object-pixel accuracy is 1/3, and its
mIoU over {background, red, green, blue} stays far below that of a model that reads
the cue (see ``tests/test_context_shapes.py`` for the checks of this label logic).

Layout written by :func:`generate_context_shapes` (mmseg's standard custom layout)::

    root/{variant}/img_dir/{train,val}/{index:05d}.png
    root/{variant}/ann_dir/{train,val}/{index:05d}.png   # 0 background, 1..3 classes
    root/{variant}/meta.json
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

CLASSES = ('background', 'red', 'green', 'blue')
PALETTE = [[0, 0, 0], [220, 40, 40], [40, 190, 40], [40, 80, 230]]
VARIANTS = ('global', 'paired')
#: colours of the classes as painted in cues (index = class id)
CLASS_COLORS = {1: (220, 40, 40), 2: (40, 190, 40), 3: (40, 80, 230)}
#: paired variant: the class written in a cue's centre, as a grey level (index = class)
CLASS_GREYS = {1: 20, 2: 170, 3: 250}
#: paired variant: saturation and value of the key hues, and their minimal distance on
#: the hue circle [0, 1) within one image
KEY_SATURATION, KEY_VALUE, MIN_HUE_GAP = 0.8, 0.9, 0.12
#: paired variant: fewest and most objects (each with its cue) per image
PAIRED_OBJECTS = (3, 5)
#: default image side per variant (paired needs room for up to 5 object-cue pairs)
SIZES = {'global': 48, 'paired': 64}
OBJECT_COLOR = (235, 235, 235)
BACKGROUND = 110
NOISE = 12
#: minimal Chebyshev distance between any object pixel and any cue pixel
GAP = 12
#: how far the demo's context-free baseline sees (receptive-field radius + upsampling)
BASELINE_REACH = 9
CUE = 6
#: generator version, in meta.json: a copy written by another version is rewritten
VERSION = 2
#: paired variant: side of a cue (its centre of class grey is CUE_PAIRED - 4)
CUE_PAIRED = 8


def hue_to_rgb(hue: float, saturation: float = KEY_SATURATION,
               value: float = KEY_VALUE) -> Tuple[float, float, float]:
    """HSV → RGB in [0, 255] (the standard hexcone model, as ``colorsys``)."""
    import colorsys
    return tuple(255. * c for c in colorsys.hsv_to_rgb(hue % 1., saturation, value))


def hue_distance(a: float, b: float) -> float:
    """Distance of two hues on the circle [0, 1)."""
    d = abs(a - b) % 1.
    return min(d, 1. - d)


def _hues(rng, n: int, tries: int = 1000) -> List[float]:
    """``n`` hues uniform on the circle, pairwise at least ``MIN_HUE_GAP`` apart."""
    for _ in range(tries):
        hues = [float(h) for h in rng.uniform(0., 1., n)]
        if all(hue_distance(a, b) >= MIN_HUE_GAP for i, a in enumerate(hues)
               for b in hues[i + 1:]):
            return hues
    raise RuntimeError(f'could not draw {n} hues {MIN_HUE_GAP} apart')


def _gap(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> int:
    """Chebyshev distance between two boxes (y0, x0, y1, x1), end exclusive."""
    dy = max(b[0] - a[2] + 1, a[0] - b[2] + 1, 0)
    dx = max(b[1] - a[3] + 1, a[1] - b[3] + 1, 0)
    return max(dy, dx)


def _place(rng, size: int, boxes_wanted: List[Tuple[str, int]], tries: int = 500):
    """Random non-overlapping boxes: objects ≥ 2 px apart, cues ≥ GAP from objects."""
    for _ in range(tries):
        placed = []
        ok = True
        for kind, side in boxes_wanted:
            for _ in range(100):
                y, x = rng.randint(1, size - side - 1, 2)
                box = (y, x, y + side, x + side)
                if all(_gap(box, other) >= (GAP if kind != okind else 2)
                       for okind, other in placed):
                    placed.append((kind, box))
                    break
            else:
                ok = False
                break
        if ok:
            return placed
    raise RuntimeError(f'could not place {boxes_wanted} in a {size}px image')


def make_sample(variant: str, rng: np.random.RandomState, size: Optional[int] = None
                ) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """One image ``(size, size, 3)`` uint8, its label map, and what was drawn.

    ``size`` defaults to the variant's ``SIZES`` entry (48 global, 64 paired)."""
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {variant!r}')
    size = SIZES[variant] if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or size < SIZES[variant]:
        raise ValueError(f'size must be an int >= {SIZES[variant]} for {variant!r} (room '
                         f'for objects and cues {GAP} px apart), got {size!r}')
    img = np.full((size, size, 3), BACKGROUND, np.float32)
    label = np.zeros((size, size), np.uint8)
    if variant == 'global':
        num_objects = rng.randint(1, 4)
        sides = [int(s) for s in rng.randint(7, 12, num_objects)]
        wanted = [('object', s) for s in sides] + [('cue', CUE)]
    else:
        num_objects = rng.randint(PAIRED_OBJECTS[0], PAIRED_OBJECTS[1] + 1)
        sides = [int(s) for s in rng.randint(6, 11, num_objects)]
        wanted = [('object', s) for s in sides] + [('cue', CUE_PAIRED)] * num_objects
    placed = _place(rng, size, wanted)
    objects = [b for k, b in placed if k == 'object']
    cues = [b for k, b in placed if k == 'cue']
    info = dict(objects=[], cues=[])
    if variant == 'global':
        cls = int(rng.randint(1, 4))
        classes, keys = [cls] * num_objects, [None] * num_objects
    else:
        classes = [int(c) for c in rng.randint(1, 4, num_objects)]
        keys = _hues(rng, num_objects)
    for i, (y0, x0, y1, x1) in enumerate(objects):
        img[y0:y1, x0:x1] = OBJECT_COLOR if keys[i] is None else hue_to_rgb(keys[i])
        label[y0:y1, x0:x1] = classes[i]
        info['objects'].append(dict(box=[y0, x0, y1, x1], cls=classes[i], key=keys[i]))
    for i, (y0, x0, y1, x1) in enumerate(cues):
        if variant == 'global':
            img[y0:y1, x0:x1] = CLASS_COLORS[classes[0]]
        else:
            img[y0:y1, x0:x1] = hue_to_rgb(keys[i])
            img[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = CLASS_GREYS[classes[i]]
        info['cues'].append(dict(box=[y0, x0, y1, x1],
                                 cls=classes[0] if variant == 'global' else classes[i],
                                 key=None if variant == 'global' else keys[i]))
    img += rng.normal(0, NOISE, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label, info


def generate_context_shapes(root: str, variant: str, num_train: int = 512,
                            num_val: int = 128, size: Optional[int] = None, seed: int = 0,
                            progress: bool = False) -> str:
    """Write one variant to ``root/variant`` (deterministic in ``seed``); return its dir.

    Image ``i`` of a split depends only on (seed, split, i), so changing the counts
    keeps the images that both runs share (images beyond a smaller count are removed).
    An existing complete copy with the same parameters is left untouched.
    """
    for name, value in (('num_train', num_train), ('num_val', num_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be an int >= 1, got {value!r}')
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {variant!r}')
    size = SIZES[variant] if size is None else size
    out = osp.join(root, variant)
    params = dict(variant=variant, num_train=num_train, num_val=num_val, size=size,
                  seed=seed, gap=GAP, classes=list(CLASSES), version=VERSION)
    meta_path = osp.join(out, 'meta.json')
    if osp.isfile(meta_path):
        with open(meta_path) as f:
            if json.load(f) == params:
                return out
    for split, count, offset in (('train', num_train, 0), ('val', num_val, 1)):
        img_dir, ann_dir = osp.join(out, 'img_dir', split), osp.join(out, 'ann_dir', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for d in (img_dir, ann_dir):  # a previous copy with more images: drop the extra
            for name in os.listdir(d):
                stem, ext = osp.splitext(name)
                if ext == '.png' and stem.isdigit() and int(stem) >= count:
                    os.remove(osp.join(d, name))
        for i in range(count):
            rng = np.random.RandomState([seed, offset, i, VARIANTS.index(variant)])
            img, label, _ = make_sample(variant, rng, size)
            Image.fromarray(img).save(osp.join(img_dir, f'{i:05d}.png'))
            Image.fromarray(label).save(osp.join(ann_dir, f'{i:05d}.png'))
        if progress:
            print(f'  ContextShapes-{variant}: {count} {split} images in {out}', flush=True)
    with open(meta_path, 'w') as f:  # written last: marks a complete copy
        json.dump(params, f, indent=1)
    return out
