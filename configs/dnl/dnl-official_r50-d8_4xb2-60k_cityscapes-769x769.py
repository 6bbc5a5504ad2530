# The DNL paper recipe (see the R-101 config) with R-50-D8.
_base_ = './dnl-official_r101-d8_4xb2-60k_cityscapes-769x769.py'
model = dict(pretrained='open-mmlab://resnet50_v1c', backbone=dict(depth=50))
