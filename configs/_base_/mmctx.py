# Mixin for every mmctx config: import mmctx (fails loudly if it cannot), and the CPU
# switch read by mmctx's tools/train.py and tools/test.py:
#   syncbn_to_bn = None   -> SyncBN becomes BN only when CUDA is not available
#   syncbn_to_bn = True   -> always BN;  'BN3d' / any norm type -> that type
#   syncbn_to_bn = False  -> keep SyncBN
custom_imports = dict(imports=['mmctx'], allow_failed_imports=False)
syncbn_to_bn = None
