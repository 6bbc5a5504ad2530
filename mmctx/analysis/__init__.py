"""Analysis helpers behind tools/analysis/."""
from .complexity import ATTENTION_OPS, complexity_report, count_complexity

__all__ = ['ATTENTION_OPS', 'complexity_report', 'count_complexity']
