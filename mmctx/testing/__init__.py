"""Tiny datasets in the real on-disk layouts, for tests and smoke runs."""
from .tiny_coco import make_coco
from .tiny_data import make_ade20k, make_cityscapes
from .tiny_imagenet import make_imagenet
from .tiny_video import make_kinetics_rawframes, make_kinetics_videos

__all__ = ["make_ade20k", "make_cityscapes"]
__all__ += ["make_kinetics_rawframes", "make_kinetics_videos"]
__all__ += ["make_coco", "make_imagenet"]
