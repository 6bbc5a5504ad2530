"""Generate a tiny Kinetics-400 in mmaction2's on-disk layouts (videos or rawframes).

Every clip shows a square moving across a noisy background; its colour and direction
depend on the class, so the labels are learnable. The directory and list-file names are
the ones mmaction2's Kinetics configs read (``tools/data/kinetics``: ``--level 2``, one
folder per class), relative to ``root`` = ``data/kinetics400``.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

#: the first Kinetics-400 classes, with their label ids (folder names use underscores)
KINETICS_CLASSES = ('abseiling', 'air_drumming', 'answering_questions', 'applauding',
                    'applying_cream', 'archery', 'arm_wrestling', 'arranging_flowers')


def _check_args(splits: Optional[Dict[str, int]], num_classes: int, num_frames: int,
                size: Sequence[int]) -> Dict[str, int]:
    splits = dict(train=4, val=2) if splits is None else dict(splits)
    for split, count in splits.items():
        if split not in ('train', 'val', 'test'):
            raise ValueError(f'splits keys must be train, val or test, got {split!r}')
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f'splits[{split!r}] must be an int >= 1, got {count!r}')
    if not isinstance(num_classes, int) or not 1 <= num_classes <= len(KINETICS_CLASSES):
        raise ValueError(f'num_classes must be an int in [1, {len(KINETICS_CLASSES)}], '
                         f'got {num_classes!r}')
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
        raise ValueError(f'num_frames must be an int >= 2, got {num_frames!r}')
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and s >= 16 for s in size)):
        raise ValueError(f'size must be (height, width) ints >= 16, got {size!r}')
    return splits


def _clip(rng: np.random.RandomState, label: int, num_frames: int,
          size: Tuple[int, int]) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 BGR frames: a class-coloured square moving in a
    class-dependent direction over noise."""
    h, w = size
    side = max(4, min(h, w) // 4)
    color = np.array([(60 * label + 80) % 256, (150 - 40 * label) % 256, 200], np.uint8)
    angle = 2 * np.pi * label / len(KINETICS_CLASSES)
    y0, x0 = rng.randint(0, h - side), rng.randint(0, w - side)
    frames = rng.randint(0, 60, (num_frames, h, w, 3)).astype(np.uint8)
    for t in range(num_frames):
        y = int(y0 + 2 * t * np.sin(angle)) % (h - side)
        x = int(x0 + 2 * t * np.cos(angle)) % (w - side)
        frames[t, y:y + side, x:x + side] = color
    return frames


def _samples(splits: Dict[str, int], num_classes: int, seed: int):
    """(split, index, label, class folder, clip name), labels cycling over classes."""
    for split, count in splits.items():
        for i in range(count):
            label = (i + seed) % num_classes
            yield split, i, label, KINETICS_CLASSES[label], f'{split}{i:04d}_000000_000010'


def make_kinetics_videos(root: str, splits: Optional[Dict[str, int]] = None,
                         num_classes: int = 4, num_frames: int = 16,
                         size: Tuple[int, int] = (48, 64), fps: int = 25,
                         seed: int = 0) -> str:
    """Write a tiny Kinetics-400 as mp4 videos (mmaction2's ``VideoDataset`` layout)::

        root/videos_{split}/{class}/{youtube_id}_{start:06d}_{end:06d}.mp4
        root/kinetics400_{split}_list_videos.txt    # "{class}/{name}.mp4 {label}"

    Args:
        root: the ``data/kinetics400`` directory (created).
        splits: clips per split, default ``{'train': 4, 'val': 2}``.
        num_classes: how many of the first Kinetics-400 classes to use (≤ 8).
        num_frames: frames per video.
        size: ``(height, width)``; the width must be a multiple of 32 (decord 0.6
            misreads mp4v videos of some other widths, e.g. 48 or 72).
        fps: frame rate written in the container.
        seed: the same seed writes the same pixels.

    Returns:
        ``root``.
    """
    splits = _check_args(splits, num_classes, num_frames, size)
    if size[1] % 32:
        raise ValueError(f'video width must be a multiple of 32 (decord 0.6 misreads '
                         f'some other widths), got size={tuple(size)}')
    rng = np.random.RandomState(seed)
    lists: Dict[str, List[str]] = {s: [] for s in splits}
    for split, _, label, folder, name in _samples(splits, num_classes, seed):
        rel = f'{folder}/{name}.mp4'
        path = osp.join(root, f'videos_{split}', rel)
        os.makedirs(osp.dirname(path), exist_ok=True)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                                 (size[1], size[0]))
        if not writer.isOpened():
            raise RuntimeError(f'OpenCV cannot write mp4v video {path}')
        for frame in _clip(rng, label, num_frames, size):
            writer.write(frame)
        writer.release()
        lists[split].append(f'{rel} {label}')
    for split, lines in lists.items():
        with open(osp.join(root, f'kinetics400_{split}_list_videos.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return root


def make_kinetics_rawframes(root: str, splits: Optional[Dict[str, int]] = None,
                            num_classes: int = 4, num_frames: int = 16,
                            size: Tuple[int, int] = (48, 64), seed: int = 0) -> str:
    """Write a tiny Kinetics-400 as extracted frames (mmaction2's ``RawframeDataset``
    layout, ``filename_tmpl='img_{:05}.jpg'``, ``start_index=1``)::

        root/rawframes_{split}/{class}/{youtube_id}_{start:06d}_{end:06d}/img_00001.jpg
        root/kinetics400_{split}_list_rawframes.txt  # "{class}/{name} {frames} {label}"

    Args: as :func:`make_kinetics_videos` (any width ≥ 16 works here).

    Returns:
        ``root``.
    """
    splits = _check_args(splits, num_classes, num_frames, size)
    rng = np.random.RandomState(seed)
    lists: Dict[str, List[str]] = {s: [] for s in splits}
    for split, _, label, folder, name in _samples(splits, num_classes, seed):
        rel = f'{folder}/{name}'
        frame_dir = osp.join(root, f'rawframes_{split}', rel)
        os.makedirs(frame_dir, exist_ok=True)
        for t, frame in enumerate(_clip(rng, label, num_frames, size), start=1):
            if not cv2.imwrite(osp.join(frame_dir, f'img_{t:05d}.jpg'), frame):
                raise RuntimeError(f'OpenCV cannot write frames into {frame_dir}')
        lists[split].append(f'{rel} {num_frames} {label}')
    for split, lines in lists.items():
        with open(osp.join(root, f'kinetics400_{split}_list_rawframes.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return root
