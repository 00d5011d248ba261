"""`mathtune eval` (stub: filled in by its owner)."""
