"""The evaluator with a stub predictor (exact matrices) and end to end with a tiny random model,
single process and 2-process torchrun (gloo, CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from escnet.cli import main
from escnet.data.datasets import DatasetError, SegDataset, load_custom_dataset
from escnet.data.vocab import benchmark_vocabulary
from escnet.evaluation.evaluate import EvaluationError, evaluate
from escnet.evaluation.metrics import compute_metrics

REPO = Path(__file__).resolve().parents[2]
RUN_SPECIFIC = ("world_size", "seconds_rank0")


class StubSegmenter:
    """Class of a pixel = its red value bucketed into the T classes: deterministic per image, so
    neither sharding nor process count can change a prediction."""

    def segment(self, image, classes):
        return SimpleNamespace(labels=(image[..., 0].astype(np.int64) * len(classes)) // 256)


class FixedSegmenter:
    def __init__(self, labels):
        self.labels = labels

    def segment(self, image, classes):
        return SimpleNamespace(labels=self.labels)


def _folder(root, n=5, classes=("sky", "building, edifice", "tree", "road")):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i in range(n):
        h, w = 9 + i, 11
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        lab = rng.integers(0, len(classes), (h, w)).astype(np.uint8)
        lab[rng.random((h, w)) < 0.2] = 255
        if i == 3:
            lab[:] = 255                     # an image with no labelled pixel
        Image.fromarray(lab).save(root / "labels" / f"im{i}.png")
    return root


def _expected_matrix(ds, segmenter):
    t = ds.num_classes
    m = np.zeros((t + 1, t + 1), np.int64)
    for i in range(len(ds)):
        image, gt = ds[i]
        pred = segmenter.segment(image, ds.prompt_classes).labels
        np.add.at(m, (pred.ravel(), np.where(gt == ds.ignore_label, t, gt).ravel()), 1)
    return m


def _numbers(results):
    return {k: v for k, v in results.items() if k not in RUN_SPECIFIC}


def test_evaluate_writes_results_and_matrix(tmp_path):
    ds = load_custom_dataset(_folder(tmp_path / "data"))
    results = evaluate(StubSegmenter(), ds, tmp_path / "out", progress=False)
    expected = _expected_matrix(ds, StubSegmenter())
    saved = np.load(tmp_path / "out" / "confusion_matrix.npy")
    np.testing.assert_array_equal(saved, expected)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    recomputed = compute_metrics(saved, ds.class_names)
    for key in ("mIoU", "mIoU_v0.6", "fwIoU", "mACC", "pACC", "per_class"):
        assert on_disk[key] == recomputed[key]
    assert on_disk["num_images"] == 5 and on_disk["mIoU"] is not None


def test_limit_scores_only_the_first_images(tmp_path):
    ds = load_custom_dataset(_folder(tmp_path / "data"))
    results = evaluate(StubSegmenter(), ds, None, limit=2, progress=False)
    first_two = SegDataset("x", ds.items[:2], ds.class_names, ds.prompt_classes, ds.ignore_label)
    assert results["num_images"] == 2
    assert results["labelled_pixels"] == int(_expected_matrix(first_two, StubSegmenter())[:4, :4].sum())


def _voc20b_dataset(root):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / "a.jpg")
    Image.fromarray(np.array([[20, 20, 0], [20, 4, 255]], np.uint8)).save(root / "labels" / "a.png")
    prompt = benchmark_vocabulary("voc20b")
    return SegDataset("voc20b-mini", [(root / "images" / "a.jpg", root / "labels" / "a.png")],
                      prompt[:20] + ["background"], prompt, 255, background_index=20)


def test_voc20b_predictions_of_background_concepts_count_as_background(tmp_path):
    ds = _voc20b_dataset(tmp_path)
    pred = np.array([[25, 20, 0], [58, 3, 19]])     # 25 and 58 are PASCAL-Context background concepts
    results = evaluate(FixedSegmenter(pred), ds, tmp_path / "out", progress=False)
    m = np.load(tmp_path / "out" / "confusion_matrix.npy")
    assert m.shape == (22, 22)
    assert m[20, 20] == 3 and m[0, 0] == 1 and m[3, 4] == 1 and m[19, 21] == 1 and m.sum() == 6
    assert results["per_class"][20] == {"class": "background", "IoU": 100.0, "ACC": 100.0, "gt_pixels": 3, "pred_pixels": 3}


def test_bad_predictions_and_labels_are_named(tmp_path):
    ds = load_custom_dataset(_folder(tmp_path / "data", n=2))
    with pytest.raises(EvaluationError, match=r"im0\.png has shape \(3, 3\)"):
        evaluate(FixedSegmenter(np.zeros((3, 3), np.int64)), ds, None, progress=False)
    with pytest.raises(EvaluationError, match=r"im0\.png has class ids 9\.\.9, outside 0\.\.3"):
        evaluate(FixedSegmenter(np.full((9, 11), 9)), ds, None, progress=False)
    Image.fromarray(np.full((9, 11), 4, np.uint8)).save(tmp_path / "data" / "labels" / "im0.png")
    with pytest.raises(DatasetError, match=r"labels/im0\.png has values \[4\]"):
        evaluate(StubSegmenter(), ds, None, progress=False)


def _torchrun(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _prepared_voc_miniature(root):
    """Raw VOC 2012 (JPEGImages, SegmentationClassAug, val.txt) for 3 images, then `escnet prepare voc`."""
    base = root / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "JPEGImages").mkdir()
    (base / "SegmentationClassAug").mkdir()
    rng = np.random.default_rng(3)
    stems = ["2007_000033", "2007_000042", "2007_000061"]
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{stem}.jpg")
        lab = rng.integers(0, 21, (24, 32)).astype(np.uint8)
        lab[:2] = 255
        Image.fromarray(lab).save(base / "SegmentationClassAug" / f"{stem}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(stems) + "\n")
    assert main(["prepare", "voc", "--root", str(root), "--workers", "1"]) == 0


def test_cli_end_to_end_with_a_tiny_model_single_and_torchrun(tmp_path):
    from escnet.models import factory
    from escnet import lifecycle
    data = tmp_path / "datasets"
    _prepared_voc_miniature(data)
    model_dir = tmp_path / "tiny"
    import torch

    torch.manual_seed(0)
    lifecycle.save_pretrained(factory.create_model("escnet", "tiny"), model_dir)
    args = ["evaluate", "--model", str(model_dir), "--dataset", "voc20", "--root", str(data),
            "--protocol", "single", "--device", "cpu"]
    # One thread, as in each torchrun worker: float sums in another order could flip an argmax.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--output", str(tmp_path / "single")]) == 0
    finally:
        torch.set_num_threads(threads)
    _torchrun(["-m", "escnet", *args, "--output", str(tmp_path / "multi")], tmp_path)

    single = json.loads((tmp_path / "single" / "results.json").read_text())
    multi = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert single["num_images"] == 3 and single["num_classes"] == 20 and single["protocol"] == "single"
    assert (single["world_size"], multi["world_size"]) == (1, 2)
    assert _numbers(single) == _numbers(multi)
    m = np.load(tmp_path / "single" / "confusion_matrix.npy")
    np.testing.assert_array_equal(m, np.load(tmp_path / "multi" / "confusion_matrix.npy"))
    assert m[:20, :20].sum() == single["labelled_pixels"] > 0


def test_cli_reports_missing_inputs_in_one_line(tmp_path, capsys):
    args = ["evaluate", "--model", str(tmp_path / "no_model"), "--device", "cpu"]
    assert main([*args, "--dataset", "ade150", "--root", str(tmp_path)]) == 1
    assert "escnet prepare ade150" in capsys.readouterr().err
    assert main([*args, "--dataset", str(_folder(tmp_path / "data", n=1))]) == 1
    assert "no_model" in capsys.readouterr().err


def test_evaluate_cli_on_the_synthetic_benchmark_reports_seen_and_unseen(tmp_path, capsys):
    import warnings

    from escnet.data.synthetic import prepare_synthetic, vocabulary

    prepare_synthetic(tmp_path / "datasets", workers=1, num_train=2, num_val=6, size=96)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bundled model's notice is a plain line, not a warning
        assert main(["evaluate", "--model", "default", "--dataset", "synthetic", "--root", str(tmp_path / "datasets"),
                     "--protocol", "single", "--device", "cpu", "--output", str(tmp_path / "eval"),
                     "--threads", "1"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("note: model escnet-synthetic-tiny: demonstration model") == 1
    assert "evaluate val: 6 img done in" in err  # progress reaches a log, not only a terminal
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    n_seen = len(vocabulary().seen)
    per_class = res["per_class"]
    seen = [per_class[i]["IoU"] for i in range(1, n_seen) if per_class[i]["IoU"] is not None]
    unseen = [per_class[i]["IoU"] for i in range(n_seen, len(per_class)) if per_class[i]["IoU"] is not None]
    assert seen and unseen
    assert res["groups"]["seen_mIoU"] == pytest.approx(sum(seen) / len(seen))
    assert res["groups"]["unseen_mIoU"] == pytest.approx(sum(unseen) / len(unseen))
    assert "seen_mIoU:" in captured.out
    # which protocol, resize and large-vocabulary mode ran is on record
    assert (res["protocol"], res["resize"], res["class_mode"], res["classes_truncated"]) == ("single", "official", "exact", False)
    assert "top256" in res["class_mode_note"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", "--model", "default", "--dataset", "synthetic", "--root", str(tmp_path / "datasets"),
                     "--resize", "antialias", "--limit", "1", "--device", "cpu",
                     "--output", str(tmp_path / "eval_aa")]) == 0
    assert json.loads((tmp_path / "eval_aa" / "results.json").read_text())["resize"] == "antialias"
