from .config import SYNCBN_TYPES, syncbn_to_bn
from .launch import (add_launch_args, init_cpu_distributed, parse_launch_args,
                     prepare_cfg, shutdown_distributed)
from .tiny_run import tiny_run

__all__ = [
    'SYNCBN_TYPES', 'syncbn_to_bn', 'add_launch_args', 'parse_launch_args',
    'init_cpu_distributed', 'prepare_cfg', 'shutdown_distributed', 'tiny_run'
]
