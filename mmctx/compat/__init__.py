"""Work-arounds for known breakages of the pinned upstream stack (STACK.md)."""
