"""Disk full (issue 24 item 11): every writer says "no space left on device: <path>", on a real full
file system: a 256 KiB tmpfs mounted in a private user and mount namespace (`unshare -rm`), skipped
where the platform does not allow one."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp && true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(sys.platform != "linux" or not _can_unshare(),
                                reason="needs unshare -rm to mount a small tmpfs")


def on_full_disk(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    """Run `script` with FULL (a 256 KiB tmpfs) as its first argument."""
    full = tmp_path / "full"
    full.mkdir()
    code = tmp_path / "script.py"
    code.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", ESCNET_CACHE=str(tmp_path / "cache"))
    shell = f'mount -t tmpfs -o size=256k tmpfs "{full}" && exec "{sys.executable}" "{code}" "{full}"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=300,
                          env=env)


def test_every_writer_says_no_space_left_with_the_path(tmp_path):
    proc = on_full_disk(tmp_path, """
        import sys
        from pathlib import Path
        import numpy as np
        import torch
        from escnet.errors import one_line
        full = Path(sys.argv[1])
        big = {"w": torch.randn(200_000)}  # 800 KB: more than the file system holds

        def attempt(name, fn):
            try:
                fn()
                print(name, "wrote nothing?!")
            except Exception as exc:
                print(name, "|", one_line(exc), "|", sorted(p.name for p in full.rglob("*")))

        from escnet.training.checkpoint import save_checkpoint
        attempt("checkpoint", lambda: save_checkpoint(full / "run", 10, {"model": big}))
        from escnet.lifecycle import save_pretrained
        from escnet.models.factory import create_model
        attempt("model", lambda: save_pretrained(create_model("catseg", "tiny"), full / "model"))
        from escnet.fileio import atomic_write
        attempt("text", lambda: atomic_write(full / "notes.txt", lambda p: p.write_text("x" * 400_000)))
        from escnet.inference.segmenter import SegmentationResult
        r = SegmentationResult(labels=np.zeros((600, 600), np.int32), classes=["a"],
                               image=np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8))
        attempt("outputs", lambda: r.save(full / "out", name="photo"))
        from escnet.inference.export import export_onnx
        tiny = create_model("catseg", "tiny").eval()
        text = torch.nn.functional.normalize(torch.randn(3, tiny.cfg.clip.embed_dim), dim=-1)
        attempt("onnx", lambda: export_onnx(tiny, text, full / "model.onnx"))
        from escnet.training.loop import MetricsLog
        (full / "train").mkdir(exist_ok=True)
        log = MetricsLog(full / "train", None)
        attempt("metrics", lambda: log.write({"step": 1, "note": "x" * 400_000}))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {}
    for line in proc.stdout.splitlines():
        name, message, left = line.split(" | ")
        lines[name] = (message, left)
    assert set(lines) == {"checkpoint", "model", "text", "outputs", "onnx", "metrics"}, proc.stdout
    expected = {"checkpoint": "run/checkpoint_00000010.pt", "model": "model/model.safetensors", "text": "notes.txt",
                "outputs": "out/photo_overlay.png", "onnx": "model.onnx", "metrics": "train/metrics.jsonl"}
    for name, (message, left) in lines.items():
        assert message.startswith("no space left on device: "), (name, message)
        assert message.endswith(expected[name]), (name, message)
        assert ".escnet-tmp-" not in left, (name, left)  # nothing half-written is left behind
