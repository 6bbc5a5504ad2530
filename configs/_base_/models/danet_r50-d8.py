# R-50-D8 + mmctx.DualAttentionHead: mmseg's DAHead (two branches, pam_in_conv -> PAM ->
# pam_out_conv and cam_in_conv -> CAM -> cam_out_conv, a classifier per branch and one on
# their sum, a loss on each) with its PAM / CAM run by one mmctx.DualAttentionBlock
# (memory-efficient position attention; pam_channels 64). mmseg's DANet base otherwise
# (ResNetV1c-50, output stride 8, FCN aux head).
_base_ = ['mmseg::_base_/models/danet_r50-d8.py']
model = dict(decode_head=dict(type='mmctx.DualAttentionHead'))
