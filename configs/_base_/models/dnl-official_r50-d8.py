# The DNL paper's segmentation recipe (yinmh17/DNL-Semantic-Segmentation,
# NLnowd_ln_fcn_*_seg.conf; REFERENCE.md §2.1, §3.2 c): R-50-D8 (deep stem) +
# conv 3x3 (2048->512) -> DNL block (official_seg preset: one scalar whitening mean,
# no scaling or temperature, full-width value without bias, zero-init gamma on the
# pairwise term, learned unary mask) -> conv -> concat with the backbone feature ->
# conv, dropout 0.1, classifier; DSN aux head on res4 with 512 channels, weight 0.4;
# OHEM cross-entropy (thresh 0.7, min_kept 100000) on the decode head.
# Differences from the official code: mmseg's ResNetV1c stem and ImageNet weights;
# the official loss also weights classes (weights not reproduced here).
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.DisentangledNonLocalBlock', preset='official_seg'),
        sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=100000)),
    auxiliary_head=dict(channels=512))
# The official "nowd" (no weight decay on query/key weights and biases) is an
# optimizer setting: each dnl-official config sets
# optim_wrapper.paramwise_cfg.custom_keys = {theta, phi: wd_mult=0}.
