_base_ = './gcnet_tinyconv_1xb12-1000iter_contextshapes-global.py'
# the paired variant: 64x64 images (up to 5 object-cue pairs), same recipe otherwise
data_root = 'data/contextshapes/paired'
model = dict(data_preprocessor=dict(size=(64, 64)))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
