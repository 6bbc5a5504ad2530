# R-50-D8 + mmctx.AsymmetricNonLocalHead: mmseg's ANNHead (inputs layer3 + layer4) with
# its AFNB / APNB replaced by mmctx AsymmetricNonLocalBlocks under the same names:
# fusion = AFNB(keys/values from layer3 (1024), queries from layer4 (2048)) -> dropout
# -> 3x3 bottleneck 2048 -> 512 -> context = APNB(512) -> dropout 0.1 -> classifier;
# project_channels 256, key_pool_scales (1, 3, 6, 8), query_scales (1, ). Backbone and
# FCN aux head: mmseg's ann_r50-d8.py (its checkpoints load without key changes).
_base_ = ['mmseg::_base_/models/ann_r50-d8.py']
model = dict(decode_head=dict(type='mmctx.AsymmetricNonLocalHead'))
