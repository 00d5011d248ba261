"""`mathtune run` (stub: filled in by its owner)."""
