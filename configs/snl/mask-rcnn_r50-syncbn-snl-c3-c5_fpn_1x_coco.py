# SyncBN variant, as mmdet's gcnet/*-syncbn-* configs: trained BN statistics.
_base_ = './mask-rcnn_r50-snl-c3-c5_fpn_1x_coco.py'
model = dict(
    backbone=dict(norm_cfg=dict(type='SyncBN', requires_grad=True), norm_eval=False))
