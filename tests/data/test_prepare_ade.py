"""ADE-150 and ADE-847 from miniatures of their raw downloads (real folder names and formats)."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from escnet.cli import main
from escnet.data import prepare as P
from escnet.data import prepare_ade
from escnet.data.datasets import get_dataset


def _ade150_raw(root, n=3, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "annotations" / "validation").mkdir(parents=True)
    raws = {}
    for i in range(1, n + 1):
        stem = f"ADE_val_{i:08d}"
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(base / "images" / "validation" / f"{stem}.jpg")
        lab = rng.integers(0, 151, (12, 16)).astype(np.uint8)
        lab[0, :3] = [0, 1, 150]
        Image.fromarray(lab).save(base / "annotations" / "validation" / f"{stem}.png")
        raws[stem] = lab
    return base, raws


def test_ade150_labels_vocabulary_and_counts(tmp_path):
    base, raws = _ade150_raw(tmp_path)
    assert main(["prepare", "ade150", "--root", str(tmp_path), "--workers", "1"]) == 0
    out = base / "annotations_detectron2" / "validation"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{s}.png" for s in raws)
    for stem, raw in raws.items():
        got = np.array(Image.open(out / f"{stem}.png"))
        assert got.dtype == np.uint8
        expected = np.where(raw == 0, 255, raw.astype(int) - 1)
        np.testing.assert_array_equal(got, expected)
        assert got[0, :3].tolist() == [255, 0, 149]
    ds = get_dataset("ade150", tmp_path)
    assert len(ds) == 3 and ds.num_classes == 150 and ds.ignore_label == 255
    assert ds.class_names[0] == "wall" and ds.class_names[149] == "flag"


def test_ade150_rerun_is_idempotent_and_resumes_after_an_interruption(tmp_path, monkeypatch):
    base, raws = _ade150_raw(tmp_path, n=4)
    out = base / "annotations_detectron2" / "validation"

    # Interrupted run: the third write dies. Finished files are complete, nothing else is left.
    real_save, calls = P.save_array, []

    def crash_midway(tmp):
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    def dying_save(arr, path, fmt, **kw):
        calls.append(path)
        if len(calls) == 3:
            P.atomic_write(path, crash_midway)
        real_save(arr, path, fmt, **kw)

    monkeypatch.setattr(prepare_ade, "save_array", dying_save)
    with pytest.raises(KeyboardInterrupt):
        P.prepare("ade150", tmp_path, workers=1)
    assert not (out / P.MARKER).exists()
    assert len(list(out.glob("*.png"))) == 2 and not [p for p in out.iterdir() if "tmp" in p.name]
    # A hard kill can leave a temporary behind; the next run must not trust or keep it.
    (out / ".ADE_val_00000003.png.escnet-tmp-99").write_bytes(b"partial")
    monkeypatch.setattr(prepare_ade, "save_array", real_save)
    summary = P.prepare("ade150", tmp_path, workers=1)
    assert summary["existing"] == 2 and summary["written"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{s}.png" for s in raws), P.MARKER])

    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert P.prepare("ade150", tmp_path, workers=1)["status"] == "already prepared"
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    # --force rewrites every file, with the same content.
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert P.prepare("ade150", tmp_path, workers=2, force=True)["written"] == 4
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before


def test_ade150_rejects_values_above_150(tmp_path, capsys):
    base, _ = _ade150_raw(tmp_path, n=1)
    Image.fromarray(np.full((4, 4), 151, np.uint8)).save(base / "annotations" / "validation" / "ADE_val_00000001.png")
    assert main(["prepare", "ade150", "--root", str(tmp_path), "--workers", "1"]) == 1
    assert "ADE_val_00000001.png" in capsys.readouterr().err


def _seg_png(class_ids: np.ndarray) -> np.ndarray:
    """ADE20K encoding: class = R // 10 * 256 + G; R carries an arbitrary last digit (instance bits)."""
    rgb = np.zeros(class_ids.shape + (3,), np.uint8)
    rgb[..., 0] = (class_ids // 256) * 10 + 7
    rgb[..., 1] = class_ids % 256
    rgb[..., 2] = 200
    return rgb


def _ade847_raw(root):
    base = root / "ADE20K_2021_17_01"
    ids = prepare_ade.ADE847_CLASS_IDS
    files = {
        # (folder relative to the datasets root, as in the real index) -> (file, class ids)
        "ADE_val_00000001.jpg": ("ADE20K_2021_17_01/images/ADE/validation/cultural/apse__indoor",
                                 np.array([[ids[0], ids[846], 0, 5], [ids[1], ids[1], ids[500], 3200]] * 3)),
        "ADE_val_00000002.jpg": ("ADE20K_2021_17_01/images/ADE/validation/urban/street",
                                 np.tile(np.array([ids[10], ids[11], 0]), (513, 200))),
        "ADE_train_00000001.jpg": ("ADE20K_2021_17_01/images/ADE/training/urban/street",
                                   np.full((4, 4), ids[2])),
    }
    rng = np.random.default_rng(0)
    for name, (folder, cls) in files.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, cls.shape + (3,), dtype=np.uint8)).save(d / name, quality=95)
        Image.fromarray(_seg_png(cls)).save(d / name.replace(".jpg", "_seg.png"))
    index = {
        "folder": np.array([f for f, _ in files.values()], dtype=object),
        "filename": list(files),
        "objectnames": ["-"] * 3688,
        "objectPresence": np.zeros((3688, 3), dtype=np.uint16),
    }
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    return base, {n: c for n, (_, c) in files.items()}


def test_ade847_from_index_pickle(tmp_path):
    base, classes = _ade847_raw(tmp_path)
    assert 5 not in prepare_ade.ADE847_CLASS_IDS and 3200 not in prepare_ade.ADE847_CLASS_IDS
    assert main(["prepare", "ade847", "--root", str(tmp_path), "--workers", "1"]) == 0
    lab_dir = base / "annotations_detectron2" / "validation"
    img_dir = base / "images_detectron2" / "validation"
    assert sorted(p.name for p in lab_dir.glob("*.tif")) == ["ADE_val_00000001.tif", "ADE_val_00000002.tif"]
    assert sorted(p.name for p in img_dir.glob("*.jpg")) == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]

    small = np.array(Image.open(lab_dir / "ADE_val_00000001.tif"))
    assert small.dtype == np.uint16
    np.testing.assert_array_equal(small[:2], [[0, 846, 65535, 65535], [1, 1, 500, 65535]])

    # 513 x 600 has a short side above 512: it becomes 512 x 599, rows/columns picked like cv2's
    # nearest neighbour, which for a shrink by one keeps the first 512 rows and 599 columns.
    big = np.array(Image.open(lab_dir / "ADE_val_00000002.tif"))
    assert big.shape == (512, 599)
    expected = np.tile(np.array([10, 11, 65535], dtype=np.uint16), (513, 200))[:512, :599]
    np.testing.assert_array_equal(big, expected)
    with Image.open(img_dir / "ADE_val_00000002.jpg") as image:
        assert image.size == (599, 512)

    ds = get_dataset("ade847", tmp_path)
    assert len(ds) == 2 and ds.num_classes == 847 and ds.ignore_label == 65535
    image, label = ds[1]
    assert image.shape == (512, 599, 3) and label.max() == 65535


def test_ade847_refuses_a_pickle_that_runs_code(tmp_path):
    base = tmp_path / "ADE20K_2021_17_01"
    base.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": [Evil()], "filename": ["ADE_val_00000001.jpg"]}, f)
    with pytest.raises(P.PrepareError, match="refusing to unpickle"):
        P.prepare("ade847", tmp_path)
