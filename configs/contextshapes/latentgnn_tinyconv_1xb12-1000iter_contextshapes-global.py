_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# LatentGNN: 16 latent nodes, 32/4 = 8 visible channels, in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.LatentGNNBlock', latent_dims=16)))
