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
    from escnet.lifecycle import save_pretrained
    from escnet.models.factory import create_model

    old = os.umask(0o027)
    try:
        folder = save_pretrained(create_model("catseg", "tiny"), tmp_path / "a")
        assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    folder = save_pretrained(create_model("catseg", "tiny"), tmp_path / "b")
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o666 & ~old
def test_a_symlink_at_the_destination_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.json").symlink_to(victim)
    atomic_write(out / "model.json", lambda tmp: tmp.write_text("new"))
    assert victim.read_text() == "precious"
    assert not (out / "model.json").is_symlink() and (out / "model.json").read_text() == "new"


def test_temporaries_are_exclusive_and_private(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    # symlinks planted at every name the old scheme (.<name>.escnet-tmp-<pid>-<n>) would have used
    for n in range(50):
        (tmp_path / f".x.png{TMP_TAG}{os.getpid()}-{n}").symlink_to(victim)
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert stat.S_IMODE(tmp.parent.stat().st_mode) == 0o700 and tmp.parent.parent == tmp_path
        assert not tmp.exists()
        tmp.write_text("ok")

    atomic_write(tmp_path / "x.png", write)
    atomic_write(tmp_path / "x.png", write)
    assert victim.read_text() == "precious" and (tmp_path / "x.png").read_text() == "ok"
    assert seen[0].parent != seen[1].parent and not seen[0].parent.exists()
    assert remove_stale_tmp(tmp_path) == 50 and victim.exists()


def test_several_files_appear_together_or_not_at_all(tmp_path):
    from escnet.fileio import atomic_write_all

    (tmp_path / "a.png").write_text("old a")

    def fail(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_all({tmp_path / "a.png": lambda t: t.write_text("new a"), tmp_path / "a.json": fail})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"] and (tmp_path / "a.png").read_text() == "old a"
    atomic_write_all({tmp_path / "a.png": lambda t: t.write_text("new a"), tmp_path / "a.json": lambda t: t.write_text("{}")})
    assert (tmp_path / "a.png").read_text() == "new a" and (tmp_path / "a.json").read_text() == "{}"
