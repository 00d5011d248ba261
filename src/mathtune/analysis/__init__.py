"""Analysis of run artifacts: statistics, learning curves, error categories, cost."""
