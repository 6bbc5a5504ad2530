# R-50-D8 + mmctx.ContextHead with the HamNet head (Gsunshine/Enjoy-Hamburger
# network.py): 3x3 2048 -> 512 = convs.0, a Hamburger at block_channels=512 (ham_in 1x1 ->
# ReLU -> NMF with 64 bases, 6 train / 7 eval steps, bases redrawn each forward,
# gradients through all steps as mmseg and the official mmseg port -> ham_out 1x1 +
# GN(32) -> ReLU(x + .)), 3x3 512 -> 256 = convs.1, dropout 0.1, classifier; no
# concatenation. Backbone and aux head: mmseg's FCN R-50-D8.
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
ham_norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block_channels=512,
        channels=256,
        concat_input=False,
        block=dict(
            type='mmctx.HamburgerBlock',
            num_bases=64,
            train_steps=6,
            eval_steps=7,
            norm_cfg=ham_norm_cfg)))
