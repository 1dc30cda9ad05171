"""escnet: ESC-Net and CAT-Seg open-vocabulary semantic segmentation."""

__version__ = "0.1.0"
