"""Evaluation: the evaluator over a dataset (evaluate.py) and the confusion-matrix metrics
(metrics.py). Map: docs/package-map.md."""
