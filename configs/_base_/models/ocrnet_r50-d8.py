# R-50-D8 OCRNet in mmseg's R-D8 cascade form (mmseg's ocrnet_r101-d8 configs, a
# CascadeEncoderDecoder): mmseg's FCNHead on res4 predicts the coarse object regions
# (loss weight 0.4), then mmctx.ObjectContextHead on res5: 3x3 bottleneck 2048 -> 512,
# ObjectContextBlock (256-wide queries/keys/values, regions = the FCNHead's logits),
# dropout 0.1, classifier. mmseg's OCR base (ResNetV1c-50, output stride 8, no aux head).
_base_ = ['mmseg::_base_/models/ocrnet_r50-d8.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(decode_head=[
    dict(
        type='FCNHead',
        in_channels=1024,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    dict(
        type='mmctx.ObjectContextHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        block=dict(type='mmctx.ObjectContextBlock', channels=256, norm_cfg=norm_cfg),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
])
