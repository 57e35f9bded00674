"""Rendering: Rich on a terminal, key=value or JSON lines elsewhere. No logic: every figure comes from a result."""
