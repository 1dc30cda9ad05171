"""Inference: the Segmenter (segmenter.py), CAT-Seg's evaluation protocol (protocol.py), what a
result writes (outputs.py) and draws (visualize.py), the on-disk text-feature cache
(text_cache.py), ONNX export (export.py), and the options' names and defaults (options.py,
torch-free). Map: docs/package-map.md."""
