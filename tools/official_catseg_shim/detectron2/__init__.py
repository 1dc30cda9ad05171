"""A stand-in for the few detectron2 symbols that CAT-Seg's model code imports (cvlab-kaist/CAT-Seg:
cat_seg/cat_seg_model.py, modeling/heads/cat_seg_head.py, modeling/backbone/swin.py,
modeling/transformer/cat_seg_predictor.py, config.py), enough to build its `CATSeg` from a config and
run its eval-mode forward. Only for tools/time_official_catseg.py, in a separate virtual environment;
not part of escnet and not a detectron2 replacement (no data loading, training, checkpointing).

Each symbol follows detectron2's behaviour on the path CAT-Seg uses (see each docstring); written
from detectron2's documented semantics, not copied.
"""
