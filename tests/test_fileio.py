"""escnet.fileio: the one atomic-write helper behind models, checkpoints and prepared datasets."""
import os
import stat

import pytest

from escnet.fileio import TMP_TAG, atomic_write, remove_stale_tmp


@pytest.mark.parametrize("durable", [False, True])
def test_replaces_the_file_and_keeps_it_on_failure(tmp_path, durable):
    target = tmp_path / "model.safetensors"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"version 1"), durable=durable)
    assert target.read_bytes() == b"version 1"

    def crash(tmp):
        tmp.write_bytes(b"half of version 2")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash, durable=durable)
    assert target.read_bytes() == b"version 1"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "config.json", lambda tmp: tmp.write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / f".a.png{TMP_TAG}123-0").write_bytes(b"partial")
    (tmp_path / "a.png").write_bytes(b"done")
    (tmp_path / ".hidden").write_bytes(b"user file")
    assert remove_stale_tmp(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "a.png"]


def test_saved_model_is_readable_as_the_umask_allows(tmp_path):
    from escnet.models.factory import create_model, save_pretrained

    old = os.umask(0o027)
    try:
        folder = save_pretrained(create_model("catseg", "tiny"), tmp_path / "a")
        assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    folder = save_pretrained(create_model("catseg", "tiny"), tmp_path / "b")
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o666 & ~old
