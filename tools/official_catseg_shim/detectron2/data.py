"""detectron2.data: only `MetadataCatalog`, imported (not used on the model path) by cat_seg_model.py."""
from __future__ import annotations

from types import SimpleNamespace


class _Catalog(dict):
    def get(self, name):  # detectron2 creates an empty metadata record on first access
        return self.setdefault(name, SimpleNamespace(name=name))


MetadataCatalog = _Catalog()
