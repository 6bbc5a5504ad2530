# The official DNL detection recipe (Howal/DNL-Object-Detection, REFERENCE.md §2.1) on
# mmdet 3.3's Mask R-CNN R-50 FPN 1x: SyncBN in the backbone (statistics trained,
# norm_eval=False), the FPN and the RoI heads; a 4conv1fc box head; 16 GPUs x 4 images,
# SGD lr 0.08, linear warm-up over 500 iterations from 1/3, steps at epochs 8 and 11.
# The backbone is mmctx.ContextResNet (mmdet's ResNet plus blocks after the residual
# add); the configs in configs/{nonlocal,gcnet,snl,dnl}/ that inherit this file set
# `after_add`. Without `after_add` it is the recipe's baseline.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../mmctx.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(type='mmctx.ContextResNet', norm_cfg=norm_cfg, norm_eval=False),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(optimizer=dict(lr=0.08))
param_scheduler = [
    dict(type='LinearLR', start_factor=1. / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11],
         gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=64)
