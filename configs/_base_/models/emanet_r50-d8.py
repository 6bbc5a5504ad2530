# R-50-D8 + mmctx.ContextHead reproducing mmseg's EMAHead with the same weights:
# ema_in_conv (3x3, 2048 -> 512) = convs.0; the EMA unit at block_channels=512 =
# EMABlock(preset='mmseg': ema_mid_conv frozen, 64 bases, 3 EM stages, momentum 0.1
# = mmseg's, the bases' batch mean averaged over ranks; ema_out_conv + SyncBN;
# ReLU(identity + .)); bottleneck (3x3, 512 -> 256) = convs.1; concat input, dropout 0.1,
# classifier. Backbone and FCN aux head: mmseg's emanet_r50-d8.py.
_base_ = ['mmseg::_base_/models/emanet_r50-d8.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='mmctx.ContextHead',
        in_channels=2048,
        in_index=3,
        channels=256,
        block_channels=512,
        num_convs=2,
        concat_input=True,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        block=dict(
            type='mmctx.EMABlock',
            preset='mmseg',
            num_bases=64,
            num_stages=3,
            momentum=0.1,
            norm_cfg=norm_cfg)))
