"""ESC-Net under the Segmenter's class modes: "top256" applies CAT-Seg's truncation to ESC-Net too
(escnet.models.escnet.ESCNet.forward class_truncation; docs/ppg.md)."""
import numpy as np
import torch

from escnet.inference import segmenter as inference
from escnet.inference.segmenter import Segmenter
from escnet.models.factory import create_model


def test_escnet_top256_truncates_like_catseg(monkeypatch):
    torch.manual_seed(0)
    segmenter = Segmenter(create_model("escnet", "tiny"), device="cpu", protocol="single", text_cache=False)
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    classes = "cat, grass, sky, road, car"
    exact = segmenter.segment(image, classes, return_probs=True)
    assert exact.info["model"] == "escnet" and exact.info["truncated"] is False
    assert exact.probs.min() > 1e-6  # every class was scored
    monkeypatch.setattr(inference, "TOP_K", 2)  # truncate a 5-class vocabulary to see the mechanism work
    top = segmenter.segment(image, classes, class_mode="top256", return_probs=True)
    assert top.info["class_mode"] == "top256" and top.info["truncated"] is True
    scored = (top.probs > 1e-6).any(axis=(1, 2))
    assert scored.sum() == 2 and set(np.unique(top.labels)) <= set(np.flatnonzero(scored))
    assert segmenter.model.cfg.class_truncation is None  # a per-call argument: the config is never written
