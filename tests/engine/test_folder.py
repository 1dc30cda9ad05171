"""Folder-scale inference (escnet.inference.folder): sharding over torchrun processes (gloo, CPU),
resuming, the one manifest."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from escnet.cli import main
from escnet.inference.folder import (MANIFEST, FolderRun, ResumeError, expected_outputs, is_complete, segment_folder,
                                     shard)

REPO = Path(__file__).resolve().parents[2]
CLASSES = "red; green; blue, navy; grey"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    factory = pytest.importorskip("escnet.models.factory")
    from escnet import lifecycle
    torch.manual_seed(0)
    return lifecycle.save_pretrained(factory.create_model("escnet", "tiny"), tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 28, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_shard_takes_every_job_once():
    jobs = list(range(11))
    parts = [shard(jobs, r, 3) for r in range(3)]
    assert parts[1] == [1, 4, 7, 10]
    assert sorted(sum(parts, [])) == jobs
    with pytest.raises(ValueError, match="rank 3 outside a world of 3"):
        shard(jobs, 3, 3)


def test_complete_means_every_format_file(tmp_path):
    names = [p.name for p in expected_outputs(tmp_path, "a", ["png", "masks", "coco"])]
    assert names == ["a_overlay.png", "a_labels.png", "a.json", "a_masks.json", "a_coco.json"]
    for name in names[:-1]:
        (tmp_path / name).write_text("x")
    assert is_complete(tmp_path, "a", ["png", "masks"]) and not is_complete(tmp_path, "a", ["png", "coco"])


def _torchrun(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "escnet", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_processes_segment_each_image_once_and_resume(model_dir, images, tmp_path, restore_threads):
    out = tmp_path / "out"
    args = ["segment", str(images), "--classes", CLASSES, "--model", str(model_dir), "--out", str(out),
            "--protocol", "single", "--device", "cpu", "--format", "png,masks", "--resume"]
    _torchrun(args, tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    records = manifest["images"]
    assert [r["name"] for r in records] == [f"im{i}" for i in range(5)]
    assert [r["status"] for r in records] == ["done"] * 5
    assert [r["rank"] for r in records] == [0, 1, 0, 1, 0]  # sorted inputs, i % world == rank
    assert manifest["world_size"] == 2 and manifest["this_run"] == {"jobs": 5, "done": 5, "skipped": 0, "failed": 0}
    assert not list((out / "escnet-run").glob("rank*.jsonl"))  # parts merged and removed

    # outputs equal what one process gets for each image
    from escnet.inference.segmenter import Segmenter
    torch.set_num_threads(1)
    segmenter = Segmenter.from_pretrained(model_dir, device="cpu", protocol="single")
    for i in range(5):
        expected = segmenter.segment(images / f"im{i}.png", CLASSES).labels
        with Image.open(out / f"im{i}_labels.png") as labels:
            np.testing.assert_array_equal(np.asarray(labels), expected)
        assert is_complete(out, f"im{i}", ["png", "masks"])

    # rerun: finished images are skipped, the one whose output was deleted is done again
    (out / "im3_labels.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    _torchrun(args, tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["this_run"] == {"jobs": 5, "done": 1, "skipped": 4, "failed": 0}
    status = {r["name"]: (r["status"], r["rank"]) for r in manifest["images"]}
    assert status["im3"] == ("done", 1)  # redone by the rank that owns it
    assert [status[f"im{i}"][0] for i in (0, 1, 2, 4)] == ["done"] * 4  # the first run's records are kept
    assert (out / "im3_labels.png").is_file()
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert all(after[name] == mtime for name, mtime in before.items() if not name.startswith("im3"))


def test_python_api_resumes_and_refuses_other_settings(model_dir, images, tmp_path):
    from escnet.inference.segmenter import Segmenter
    segmenter = Segmenter.from_pretrained(model_dir, device="cpu", protocol="single")
    out = tmp_path / "out"
    first = segment_folder(segmenter, images, CLASSES, out, show_progress=False)
    assert first["this_run"] == {"jobs": 5, "done": 5, "skipped": 0, "failed": 0}
    second = segment_folder(segmenter, [images / "im1.png", images], CLASSES, out, resume=True, show_progress=False)
    # im1.png listed twice: the second copy is another job (im1_2), segmented; the rest skipped
    assert second["this_run"] == {"jobs": 6, "done": 1, "skipped": 5, "failed": 0}
    assert sorted(r["name"] for r in second["images"]) == ["im0", "im1", "im1_2", "im2", "im3", "im4"]
    with pytest.raises(ResumeError, match=r"other settings \(classes\)"):
        segment_folder(segmenter, images, "cat, dog", out, resume=True, show_progress=False)


def test_cli_resume_with_other_settings_is_one_line(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["segment", str(images / "im0.png"), "--model", str(model_dir), "--out", str(out),
            "--protocol", "single", "--device", "cpu"]
    assert main([*base, "--classes", CLASSES]) == 0
    assert main([*base, "--classes", CLASSES, "--resume"]) == 0
    assert "skipped 1 image(s) whose outputs exist" in capsys.readouterr().err
    assert main([*base, "--classes", "cat; dog", "--resume"]) == 1  # a user error: status 1 (escnet.commands.policy)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with other settings (classes)" in err[0]
