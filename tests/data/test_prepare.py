"""Shared prepare machinery: atomic writes, markers, cv2-compatible resizing, the CLI."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from escnet.cli import main
from escnet.data import prepare as P


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path):
    target = tmp_path / "out.png"

    def crash(tmp):
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.atomic_write(target, crash)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_start_output_removes_stale_temporaries_and_honours_the_marker(tmp_path):
    out = tmp_path / "labels"
    out.mkdir()
    (out / ".a.png.escnet-tmp-123").write_bytes(b"garbage")
    (out / "a.png").write_bytes(b"kept")
    assert P.start_output(out, force=False) is True
    assert sorted(p.name for p in out.iterdir()) == [P.PREPARING, "a.png"]  # in progress until marked
    P.mark_prepared(out, {"dataset": "x"})
    assert not (out / P.PREPARING).exists()
    assert P.start_output(out, force=False) is False
    assert P.start_output(out, force=True) is True and not (out / P.MARKER).exists()


def test_nearest_indices_follow_opencv_not_pixel_centres():
    # cv2.INTER_NEAREST: floor(x * src / dst); PIL's centre rule would give [0, 0, 1, 1, 1].
    np.testing.assert_array_equal(P.nearest_indices(2, 5), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(P.nearest_indices(5, 2), [0, 2])
    # Shrinking by one row keeps rows 0..dst-1, i.e. drops only the last one.
    np.testing.assert_array_equal(P.nearest_indices(513, 512), np.arange(512))


def test_bilinear_matches_the_half_pixel_grid_within_one_level():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    out = P.resize_bilinear_uint8(img, 20, 31)
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].double(), size=(20, 31),
                        mode="bilinear", align_corners=False, antialias=False)[0].permute(1, 2, 0).numpy()
    assert out.shape == (20, 31, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(float) - ref).max() <= 0.5 + 1e-9
    grey = P.resize_bilinear_uint8(img[..., 0], 60, 70)
    assert grey.shape == (60, 70)


def test_short_side_rule():
    assert P.short_side_size(513, 600) == (512, 599)
    assert P.short_side_size(900, 700) == (658, 512)
    assert P.short_side_size(512, 4000) is None
    assert P.short_side_size(300, 200) is None


def test_cli_reports_a_missing_download(tmp_path, capsys):
    assert main(["prepare", "ade150", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ADEChallengeData2016" in err and "not found" in err


def test_open_array_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(P.PrepareError, match="x.png"):
        P.open_array(bad, "annotation")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "ok.png")
    assert P.open_array(tmp_path / "ok.png").shape == (2, 2)


def test_all_goes_on_past_missing_downloads(tmp_path, capsys):
    base = tmp_path / "ADEChallengeData2016" / "annotations" / "validation"
    base.mkdir(parents=True)
    Image.fromarray(np.ones((2, 2), np.uint8)).save(base / "ADE_val_1.png")
    assert main(["prepare", "all", "--root", str(tmp_path), "--workers", "1"]) == 1
    out = capsys.readouterr()
    assert "escnet prepare ade150: {" in out.out
    assert out.err.count("error:") == len(P.DOWNLOADS) - 1
    assert "synthetic" not in out.out + out.err
    assert (tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation" / "ADE_val_1.png").is_file()


# ---------------------------------------------------------------------------------------------
# crash safety: an interrupted prepare is never trusted, its workers stop with it

_PREPARE = """
import sys
from pathlib import Path
from escnet.data.synthetic import prepare_synthetic
prepare_synthetic(Path(sys.argv[1]), workers=2, num_train=int(sys.argv[2]), num_val=4, size=48)
"""


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def test_killed_prepare_is_refused_then_finished(tmp_path, capsys):
    from importlib import resources

    import os
    import signal
    import subprocess
    import sys
    import time

    from escnet.data.datasets import DatasetError
    from escnet.data.synthetic import prepare_synthetic, scene
    from escnet.data.train_dataset import resolve_dataset

    root, n = tmp_path / "datasets", 3000
    images = root / "synthetic" / "images" / "train"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _PREPARE, str(root), str(n)], env=env)
    deadline = time.monotonic() + 120
    while len(_pngs(images)) < 40 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(_pngs(images))
    assert 40 <= written < n, "the run ended before it could be interrupted"
    time.sleep(2.5)  # workers get SIGTERM from the kernel when their parent dies: at most the scene in hand
    settled = len(_pngs(images))
    assert settled <= written + 2, f"worker processes kept writing after their parent was killed ({written} -> {settled})"

    with pytest.raises(DatasetError, match=r"synthetic is incompletely prepared"):
        resolve_dataset("synthetic", root, "train")
    model = str(resources.files("escnet") / "assets" / "models" / "escnet-synthetic-tiny")
    assert main(["evaluate", "--model", model, "--dataset", "synthetic", "--split", "train", "--root", str(root),
                 "--device", "cpu", "--output", str(tmp_path / "eval")]) != 0
    assert "incompletely prepared" in capsys.readouterr().err
    from escnet.training.config import ConfigError, load_config
    from escnet.training.loop import check_config

    with pytest.raises(ConfigError, match="incompletely prepared"):
        check_config(load_config(None, ["dataset=synthetic", f"data_root={root}", "eval_dataset=",
                                        f"output_dir={tmp_path / 'run'}"]))

    prepare_synthetic(root, workers=1, num_train=n, num_val=4, size=48)
    split = resolve_dataset("synthetic", root, "train")
    assert len(split.dataset.items) == n
    assert not list((root / "synthetic").rglob("*escnet-tmp*"))
    for i in (0, settled - 1, n - 1):  # complete files, before, at and after the interruption
        image, label = scene("train", i, 48)
        assert np.array_equal(np.asarray(Image.open(images / f"{i:06d}.png")), image)
