# c4 + every res5 block ("c4 + c5_all": stage_with_nlgcb=[[], [], [-2], [-2, -1, 0]]).
_base_ = './mask-rcnn_r50-syncbn-emanet-c4_fpn-4conv1fc_16xb4-1x_coco.py'
model = dict(backbone=dict(after_add=dict(indices=[[], [], [-2], [-2, -1, 0]])))
