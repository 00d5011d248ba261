"""`mathtune report` (stub: filled in by its owner)."""
