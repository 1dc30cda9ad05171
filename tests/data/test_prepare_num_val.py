"""`escnet prepare --num-val N`: a larger val split of a generated benchmark, whose first scenes are the default ones."""
import numpy as np
import pytest

from escnet.data import prepare as prepare_mod
from escnet.data import synthetic_grouping
from escnet.data.datasets import read_image


def test_num_val_reaches_the_generator_and_extends_the_split(tmp_path, monkeypatch):
    real = synthetic_grouping.prepare_synthetic_grouping
    seen = []

    def small(root, workers, force, **sizes):  # the benchmark's own generator, on a small train split
        seen.append(sizes)
        return real(root, workers, force, num_train=2, **sizes)

    monkeypatch.setattr(synthetic_grouping, "prepare_synthetic_grouping", small)
    prepare_mod.prepare("synthetic-grouping", tmp_path, num_val=3)
    first = read_image(tmp_path / "synthetic-grouping" / "images" / "val" / "000002.png")
    prepare_mod.prepare("synthetic-grouping", tmp_path, num_val=5)
    val = sorted((tmp_path / "synthetic-grouping" / "images" / "val").glob("*.png"))
    assert seen == [{"num_val": 3}, {"num_val": 5}] and len(val) == 5
    assert np.array_equal(read_image(val[2]), first)
    prepare_mod.prepare("synthetic-grouping", tmp_path)
    assert seen[-1] == {}  # the default split size


@pytest.mark.parametrize("name,n,message", [("ade150", 10, "--num-val is for the generated benchmarks"),
                                            ("synthetic", 0, "--num-val must be >= 1")])
def test_num_val_refuses_what_it_cannot_mean(tmp_path, name, n, message):
    with pytest.raises(prepare_mod.PrepareError, match=message):
        prepare_mod.prepare(name, tmp_path, num_val=n)
