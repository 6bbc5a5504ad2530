# R-50-D8 + mmctx.AdaptiveContextHead, mmseg's APCHead wiring: four adaptive context
# modules (pool scales 1, 2, 3, 6; 512 wide, each with its fusion conv) on the res5
# features, 3x3 bottleneck of [x; ACM_1..ACM_6] -> 512 (inside the block), dropout 0.1,
# classifier. mmseg's APCNet base (ResNetV1c-50, output stride 8, FCN aux head).
_base_ = ['mmseg::_base_/models/apcnet_r50-d8.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='mmctx.AdaptiveContextHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        block=dict(
            type='mmctx.AdaptiveContextBlock',
            channels=512,
            pool_scales=(1, 2, 3, 6),
            norm_cfg=norm_cfg),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
