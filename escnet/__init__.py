"""escnet: ESC-Net and CAT-Seg open-vocabulary semantic segmentation."""

__version__ = "0.1.0"

_EXPORTS = {
    "Segmenter": "escnet.inference.segmenter",
    "SegmentationResult": "escnet.inference.segmenter",
    "create_model": "escnet.models.factory",
    "load_pretrained": "escnet.lifecycle",
    "save_pretrained": "escnet.lifecycle",
    "push_to_hub": "escnet.hub",
}


def __getattr__(name: str):
    # Imported on first use so that `import escnet` (and `escnet --help`) stay light.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'escnet' has no attribute {name!r}")


__all__ = list(_EXPORTS)
