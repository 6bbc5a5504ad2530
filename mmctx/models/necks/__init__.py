from .context_neck import ContextNeck

__all__ = ['ContextNeck']
