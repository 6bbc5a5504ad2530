# SegNeXt-T (MSCAN-T) with mmctx.ContextHead reproducing mmseg's LightHamHead with the
# same weights: stages 2-4 resized to stage 2 and concatenated (input_transform
# 'resize_concat'), squeeze (1x1 + GN(32) + ReLU -> ham_channels) = convs.0, the
# Hamburger = HamburgerBlock (ham_in, NMF with MD_R=16 bases, 6 / 7 steps, rand_init,
# gradients through all steps as mmseg; ham_out + GN(32); ReLU(x + .)), align (1x1 +
# GN(32) + ReLU -> channels) = convs.1, dropout 0.1, classifier. Everything else is
# mmseg's SegNeXt config (AdamW lr 6e-5, head lr x10, 160k iterations, batch 16).
_base_ = ['mmseg::segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512.py', '../_base_/mmctx.py']
ham_norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='mmctx.ContextHead',
        in_channels=[128, 320, 512],
        in_index=[1, 2, 3],
        input_transform='resize_concat',
        channels=512,
        block_channels=512,
        num_convs=2,
        kernel_size=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=ham_norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        block=dict(
            type='mmctx.HamburgerBlock',
            num_bases=16,
            train_steps=6,
            eval_steps=7,
            rand_init=True,
            norm_cfg=ham_norm_cfg)))
