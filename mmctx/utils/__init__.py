from .config import SYNCBN_TYPES, syncbn_to_bn
from .launch import init_cpu_distributed, prepare_cfg

__all__ = ['SYNCBN_TYPES', 'syncbn_to_bn', 'init_cpu_distributed', 'prepare_cfg']
