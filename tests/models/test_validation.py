"""Model configs are validated (types, ranges, size) before anything is allocated (issue 13)."""
from __future__ import annotations

import json
import shutil
from importlib import resources

import pytest

from escnet.cli import main
from escnet.lifecycle import load_pretrained
from escnet.models.factory import make_config
from escnet.models.validation import MAX_PARAMETERS, ConfigValidationError, validate_config

BUNDLED = resources.files("escnet") / "assets" / "models" / "escnet-synthetic-tiny"


@pytest.fixture()
def folder(tmp_path):
    out = tmp_path / "model"
    shutil.copytree(str(BUNDLED), out)
    return out


def _write(folder, **changes):
    data = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            data[outer][inner] = value
        else:
            data[key] = value
    (folder / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize("key, value, message", [
    ("hidden_dim", 1e9, "hidden_dim must be an integer"),
    ("hidden_dim", 10**9, "hidden_dim = 1000000000 is outside"),
    ("sam_mlp_dim", 10**7, "sam_mlp_dim = 10000000 is outside"),
    ("num_blocks", 10**6, "num_blocks = 1000000 is outside"),
    ("heads", 0, "heads = 0 is outside"),
    ("use_sam", "false", "use_sam must be true or false"),
    ("pixel_std", [0, 1, 1], r"pixel_std\[0\] = 0.0 is outside"),
    ("pixel_std", [1, 1], "pixel_std must be a list of 3 values"),
    ("ppg_tau", float("nan"), "ppg_tau must be a finite number"),
    ("crop_size", 0, "crop_size = 0 is outside"),
    ("ppg_regions", 0, "ppg_regions = 0 is outside"),
    ("ppg_regions", [3], "ppg_regions must be an integer"),
    ("hidden_dim", "32", "hidden_dim must be an integer"),
    ("clip.vision_heads", 3, "vision_width 64 is not divisible by vision_heads 3"),
    ("clip.patch_size", True, "patch_size must be an integer"),
    ("clip", [1, 2], "clip must be a table of CLIPConfig fields"),
])
def test_bad_field_is_named_before_building(folder, key, value, message):
    _write(folder, **{key: value})
    with pytest.raises(ConfigValidationError, match=message):
        load_pretrained(folder)


def test_parameter_bound_names_the_field(folder):
    _write(folder, hidden_dim=16000, heads=2)
    with pytest.raises(ConfigValidationError, match=r"G parameters .* hidden_dim = 16000"):
        load_pretrained(folder)
    with pytest.raises(ConfigValidationError, match="sam_mlp_dim = 60000"):
        make_config("escnet", "vitb16", sam_mlp_dim=60000, sam_dim=4096, num_blocks=64)


def test_json_that_is_not_an_object(folder):
    (folder / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ConfigValidationError, match="expected a JSON object"):
        load_pretrained(folder)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigValidationError, match="config.json"):
        load_pretrained(folder)
    nested = '{"x": ' * 50 + "1" + "}" * 50
    (folder / "config.json").write_text('{"arch": "escnet", "clip": ' + nested + "}")
    with pytest.raises(ConfigValidationError, match="unknown field"):
        load_pretrained(folder)


def test_overrides_are_checked_like_files():
    with pytest.raises(ConfigValidationError, match="heads = 0 is outside"):
        make_config("escnet", "tiny", heads=0)
    with pytest.raises(ConfigValidationError, match="use_sam must be true or false"):
        make_config("escnet", "tiny", use_sam="false")
    with pytest.raises(ConfigValidationError, match="pooling_eval"):
        make_config("catseg", "tiny", pooling_eval=(0, 1))
    assert make_config("escnet", "tiny", use_sam=False).use_sam is False


def test_presets_are_valid_and_far_from_the_bound():
    from escnet.models.escnet import ESCNet

    for arch in ("escnet", "catseg"):
        for preset in ("tiny", "vitb16", "vitl14"):
            make_config(arch, preset)
    validate_config(make_config("escnet", "vitl14"), "vitl14", ESCNet)
    assert MAX_PARAMETERS > 4 * 449e6


def test_cli_prints_one_line(folder, capsys):
    _write(folder, heads=0)
    assert main(["info", "--model", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("escnet: error:") and "heads = 0" in err and "\n" not in err
