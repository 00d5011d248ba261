"""`mathtune train` (stub: filled in by its owner)."""
