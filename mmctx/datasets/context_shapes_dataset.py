"""The mmseg dataset class of ContextShapes."""
from mmseg.datasets import BaseSegDataset

from ..registry import DATASETS
from .context_shapes import CLASSES, PALETTE


@DATASETS.register_module()
class ContextShapesDataset(BaseSegDataset):
    """ContextShapes (see :mod:`mmctx.datasets.context_shapes`) in mmseg's layout:
    ``img_dir/{split}/*.png`` and ``ann_dir/{split}/*.png`` under ``data_root``
    (``data/contextshapes/global`` or ``.../paired``)."""

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, img_suffix: str = '.png', seg_map_suffix: str = '.png',
                 **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=False, **kwargs)
