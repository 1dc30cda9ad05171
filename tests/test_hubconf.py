"""hubconf.py: torch.hub's entry points are escnet's named segmenter models."""
from pathlib import Path

import numpy as np
import torch

from escnet.registry import MODELS, SEGMENTER_KINDS

ROOT = Path(__file__).resolve().parents[1]


def test_every_named_segmenter_model_has_an_entry():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # torch.hub.list's rule: the module's public callables are the entry points.
    entries = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    expected = {name.replace("-", "_") for name, entry in MODELS.items() if entry.kind in SEGMENTER_KINDS}
    assert entries == expected


def test_local_entry_loads_the_bundled_model_and_segments():
    segmenter = torch.hub.load(str(ROOT), "escnet_synthetic_tiny", source="local", device="cpu", protocol="single")
    image = np.zeros((40, 56, 3), np.uint8)
    image[:, 28:] = (0, 0, 139)  # dark blue on the right half
    result = segmenter.segment(image, ["background", "dark blue"])
    assert result.labels.shape == (40, 56)
    assert (result.labels[:, 40:] == 1).mean() > 0.5
