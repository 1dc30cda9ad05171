"""Training: the config (config.py), the loop, losses and run (loop.py), optimiser and schedule
(optim.py), checkpoints (checkpoint.py), tiny-SAM pretraining (pretrain_sam.py). Map:
docs/package-map.md."""
