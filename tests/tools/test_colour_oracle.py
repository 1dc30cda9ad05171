import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "tools" / "colour_oracle.py"
_spec = importlib.util.spec_from_file_location("colour_oracle", _PATH)
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)


def _image(colours):
    """colours: (H, W) indices into a palette of 3 well-separated RGB colours -> (H, W, 3) uint8."""
    palette = np.array([[10, 10, 10], [250, 10, 10], [10, 10, 250]], dtype=np.uint8)
    return palette[np.asarray(colours)]


def test_majority_per_colour_cell_in_sample_and_held_out():
    # colour 1 is class 1 in three of four pixels, class 2 in one; colour 2 is always class 2
    pairs = [(_image([[0, 1], [1, 2]]), np.array([[0, 1], [1, 2]])),
             (_image([[0, 1], [1, 2]]), np.array([[0, 2], [255, 2]]))]  # one ignored pixel
    m = oracle.oracle_confusion(pairs, num_classes=3, ignore_label=255, bins=4, fit="in-sample")
    # rows = prediction, columns = ground truth; colour 1 -> class 1 (2 of its 3 labelled pixels)
    assert m[:3, :3].tolist() == [[2, 0, 0], [0, 2, 1], [0, 0, 2]] and m.sum() == 7
    # held out: image 0 is predicted from image 1's cells (colour 1 -> 2: its two class-1 pixels
    # wrong) and image 1 from image 0's (colour 1 -> 1: its class-2 pixel wrong)
    h = oracle.oracle_confusion(pairs, num_classes=3, ignore_label=255, bins=4, fit="held-out")
    assert h[:3, :3].tolist() == [[2, 0, 0], [0, 0, 1], [0, 2, 2]]
    with pytest.raises(ValueError, match="held-out or in-sample"):
        oracle.oracle_confusion(pairs, 3, 255, 4, fit="both")


def test_colour_decides_the_colour_benchmark_but_not_the_grouping_one(tmp_path):
    """On small generated copies of both benchmarks (their real on-disk layouts): a held-out
    colour-only classifier scores high on the colour benchmark and near zero on the seen classes of
    the grouping benchmark, whose classes are pairs of hues."""
    from escnet.data.synthetic import prepare_synthetic
    from escnet.data.synthetic_grouping import prepare_synthetic_grouping

    prepare_synthetic(tmp_path, workers=1, num_train=1, num_val=80, size=64)
    prepare_synthetic_grouping(tmp_path, workers=1, num_train=1, num_val=80, size=64)
    colour = {r["fit"]: r for r in oracle.run("synthetic", str(tmp_path), "val", [8])}
    grouping = {r["fit"]: r for r in oracle.run("synthetic-grouping", str(tmp_path), "val", [8])}
    assert colour["held-out"]["seen_mIoU"] > 60, colour
    assert grouping["held-out"]["seen_mIoU"] < 10, grouping
    assert grouping["in-sample"]["images"] == 80
