from .global_context import GlobalContextBlock

__all__ = ['GlobalContextBlock']
