"""Every error a user can cause ends in one line on stderr and a non-zero exit; --debug shows the traceback."""
import errno

import pytest

from escnet.cli import main
from escnet.errors import one_line, sanitize


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("escnet") and "error" in err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["convert", "--catseg", "/nonexistent/model.pth", "--out", "OUT"], "does not exist"),
    (["convert", "--catseg", "JUNK", "--out", "OUT"], "could not be read"),
    (["convert", "--catseg", "SAFETENSORS", "--out", "OUT"], "not a model"),
    (["convert", "--clip", "JUNK", "--random-sam", "--out", "OUT"], "could not be read"),
    (["convert", "--clip", "/nonexistent/clip.pt", "--random-sam", "--out", "OUT"], "no such file"),
    (["convert", "--clip", "/nonexistent/clip.pt", "--out", "OUT"], "give --sam FILE, or --random-sam"),
    (["info", "--model", "/nonexistent/model"], "does not exist"),
])
def test_user_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "junk.pth").write_bytes(b"\x00junk" * 10)
    (tmp_path / "w.safetensors").write_bytes(b"")
    swap = {"JUNK": str(tmp_path / "junk.pth"), "OUT": str(tmp_path / "out"), "SAFETENSORS": str(tmp_path / "w.safetensors")}
    for placeholder, value in swap.items():
        argv = [a.replace(placeholder, value) for a in argv]
    assert main(argv) != 0
    assert message in _one_line_error(capsys)


def test_info_resolves_the_bundled_model(capsys):
    assert main(["info", "--model", "default"]) == 0
    assert "total" in capsys.readouterr().out


def test_debug_flag_and_variable_show_the_traceback(tmp_path, monkeypatch):
    argv = ["convert", "--catseg", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o")]
    with pytest.raises(FileNotFoundError):
        main(["--debug", *argv])
    with pytest.raises(FileNotFoundError):
        main([*argv, "--debug"])
    monkeypatch.setenv("ESCNET_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/data/model.safetensors")


def test_disk_full_while_converting(tmp_path, capsys, monkeypatch):
    from importlib import resources

    import escnet.lifecycle as lifecycle

    monkeypatch.setattr(lifecycle, "atomic_write", _disk_full)
    model = str(resources.files("escnet") / "assets" / "models" / "escnet-synthetic-tiny")
    assert main(["convert", "--catseg", model, "--out", str(tmp_path / "o")]) == 1
    assert "no space left on device: /data/model.safetensors" in _one_line_error(capsys)


def test_disk_full_while_preparing_and_training(tmp_path, capsys, monkeypatch):
    import escnet.data.synthetic as synthetic
    import escnet.training.loop as train_mod

    monkeypatch.setattr(synthetic, "atomic_write", _disk_full)
    assert main(["prepare", "synthetic", "--root", str(tmp_path), "--workers", "1"]) == 1
    assert "no space left on device" in _one_line_error(capsys)
    monkeypatch.undo()

    root = tmp_path / "data"
    synthetic.prepare_synthetic(root, workers=1, num_train=4, num_val=2, size=48)
    capsys.readouterr()  # its progress lines
    args = ["train", "preset=tiny", "dataset=synthetic", f"data_root={root}", f"output_dir={tmp_path / 'run'}",
            "max_iters=1", "save_every=1", "eval_dataset=", "num_workers=0", "batch_size=1", "min_size_train=96",
            "threads=1"]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00junk" * 10)
    assert main([*args, f"init_clip={junk}"]) == 1  # a weight-file error while building the model
    assert "could not be read" in _one_line_error(capsys)
    monkeypatch.setattr(train_mod, "save_checkpoint", _disk_full)
    assert main(args) == 1
    assert "no space left on device" in _one_line_error(capsys)


def test_messages_are_sanitised():
    assert sanitize("a\x1b[31mred\x1b[0m\x07 b\nc\x00") == "ared b\nc"
    assert one_line(ValueError("first\n\x1b]0;title\x07second")) == "first; second"
    assert one_line(KeyError("model")) == "KeyError: 'model'"
    assert one_line(OSError(errno.ENOSPC, "x", "/p")) == "no space left on device: /p"
