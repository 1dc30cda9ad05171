"""Hostile inputs (issue 24, items 2-7): each ends in one line (or a result) within 60 s under a
4 GiB address-space limit. The files are built small (sparse files, zero-stride tensors, a config
declaring a huge model, a zip bomb, a highly compressible huge PNG) and the CLI or API runs in a
subprocess under ``RLIMIT_AS``, so an unbounded allocation fails the test instead of the machine."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 4 * 2**30
TIMEOUT_S = 60


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def run_limited(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`python ARGS` under the 4 GiB address-space limit and the 60 s timeout, offline, 1 thread."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               ESCNET_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    env.pop("ESCNET_DEBUG", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=env, preexec_fn=_limit, cwd=tmp_path)


def cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    return run_limited(["-m", "escnet", *argv], tmp_path)


def assert_one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The process failed with status 1 and one `escnet...error` line naming `words` (no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) >= 1, proc.stderr
    text = errors[0]
    for word in words:
        assert word in text, (word, proc.stderr[-2000:])
    return text


@pytest.fixture
def photo(tmp_path) -> Path:
    import numpy as np
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


# -- item 2: vocabulary files and class counts -------------------------------------------------


def test_sparse_gigabyte_vocabulary_file_is_refused_by_its_size(tmp_path, photo):
    vocab = tmp_path / "classes.txt"
    with open(vocab, "wb") as f:
        f.truncate(2**30)  # 1 GiB of zeros, no disk blocks
    proc = cli(tmp_path, "segment", str(photo), "--classes", str(vocab), "--out", str(tmp_path / "out"))
    line = assert_one_line(proc, "classes.txt", "ESCNET_MAX_VOCAB_BYTES")
    assert "limit" in line


def test_huge_class_count_is_refused_with_the_bound(tmp_path, photo):
    vocab = tmp_path / "classes.txt"
    vocab.write_text("".join(f"c{i}\n" for i in range(200_000)))
    proc = cli(tmp_path, "segment", str(photo), "--classes", str(vocab), "--out", str(tmp_path / "out"))
    assert_one_line(proc, "200000 classes", "ESCNET_MAX_CLASSES")


# -- items 3 and 4: configs inferred from checkpoints, strides, sizes before memory -------------


def _tiny_catseg_sd():
    import torch

    from escnet.models.catseg import CATSeg, CATSegConfig
    from escnet.weights.catseg import to_catseg_names

    torch.manual_seed(0)
    return to_catseg_names(CATSeg(CATSegConfig.preset("tiny")).state_dict())


TOKENS = "sem_seg_head.predictor.clip_model.token_embedding.weight"


def test_zero_stride_catseg_checkpoint_is_refused(tmp_path, photo):
    import torch

    sd = _tiny_catseg_sd()
    width = sd[TOKENS].shape[1]
    sd[TOKENS] = torch.zeros(1, width).expand(20_000_000, width)  # one row stored, 20 M rows declared
    path = tmp_path / "model.pth"
    torch.save({"model": sd}, path)
    assert path.stat().st_size < 5 * 2**20
    proc = cli(tmp_path, "segment", str(photo), "--classes", "cat", "--model", str(path), "--out", str(tmp_path / "o"))
    assert_one_line(proc, "model.pth", TOKENS, "stride")
    proc = cli(tmp_path, "convert", "--catseg", str(path), "--out", str(tmp_path / "converted"))
    assert_one_line(proc, TOKENS, "stride")
    assert not (tmp_path / "converted").exists()


def test_overlapping_stride_clip_file_is_refused(tmp_path):
    import torch

    from escnet.weights.catseg import PREFIX
    from escnet.weights.clip import clip_state_to_openai

    sd = _tiny_catseg_sd()
    clip = clip_state_to_openai({k[len(PREFIX + "clip_model."):]: v for k, v in sd.items()
                                 if k.startswith(PREFIX + "clip_model.")})
    rows, width = clip["token_embedding.weight"].shape
    clip["token_embedding.weight"] = torch.zeros(rows + width).as_strided((rows, width), (1, 1))  # rows overlap
    path = tmp_path / "clip.pt"
    torch.save(clip, path)
    proc = cli(tmp_path, "convert", "--preset", "tiny", "--clip", str(path), "--random-sam", "--out", str(tmp_path / "o"))
    assert_one_line(proc, "clip.pt", "token_embedding.weight", "overlapping")


def test_inferred_catseg_config_goes_through_config_validation():
    import torch

    from escnet.models.validation import ConfigValidationError
    from escnet.weights.catseg import from_catseg_names, infer_config

    sd = {k: torch.empty(v.shape, device="meta") for k, v in from_catseg_names(_tiny_catseg_sd()).items()}
    width = sd["clip.token_embedding.weight"].shape[1]
    sd["clip.token_embedding.weight"] = torch.empty(20_000_000, width, device="meta")
    with pytest.raises(ConfigValidationError, match="vocab_size = 20000000 is outside the allowed range"):
        infer_config(sd, "x.pth")


def test_inferred_clip_config_goes_through_config_validation():
    import torch

    from escnet.models.validation import ConfigValidationError
    from escnet.weights.catseg import PREFIX
    from escnet.weights.clip import clip_state_to_openai, convert_openai_state_dict

    sd = _tiny_catseg_sd()
    clip = clip_state_to_openai({k[len(PREFIX + "clip_model."):]: torch.empty(v.shape, device="meta")
                                 for k, v in sd.items() if k.startswith(PREFIX + "clip_model.")})
    clip["token_embedding.weight"] = torch.empty(20_000_000, clip["token_embedding.weight"].shape[1], device="meta")
    with pytest.raises(ConfigValidationError, match="vocab_size"):
        convert_openai_state_dict(clip, source="clip.pt")


def test_tiny_config_declaring_a_huge_model_is_checked_against_the_weights_header(tmp_path, photo):
    import torch
    from safetensors.torch import save_file

    from escnet.lifecycle import config_to_dict
    from escnet.models.factory import make_config

    data = config_to_dict(make_config("catseg", "tiny"))
    data["clip"].update(vocab_size=1_000_000, text_width=1536, text_heads=8)  # ~1.6 G parameters, 6 GB
    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(data))
    save_file({"clip.token_embedding.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    proc = cli(tmp_path, "segment", str(photo), "--classes", "cat", "--model", str(folder), "--out", str(tmp_path / "o"))
    assert_one_line(proc, "model.safetensors", "do not match")


def test_sam_file_declaring_a_million_layers_is_refused_before_building(tmp_path):
    import torch

    from escnet.models.validation import ConfigValidationError
    from escnet.weights.sam import load_sam_decoder_weights

    path = tmp_path / "sam.pth"
    torch.save({"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, 128),
                "mask_decoder.transformer.layers.999999.norm1.weight": torch.zeros(256)}, path)
    with pytest.raises(ConfigValidationError, match="sam_depth = 1000000 is outside the allowed range"):
        load_sam_decoder_weights(path)


# -- item 5: TorchScript archive entries --------------------------------------------------------


def _write_zip(path: Path, entries: list[tuple[str, int, int, int, bytes]]) -> None:
    """A zip archive from (name, method, crc, uncompressed size, raw member bytes), written by hand so a
    member can be a deflate stream whose output is far larger than anything built here."""
    import struct

    local, central = bytearray(), bytearray()
    for name, method, crc, size, raw in entries:
        offset = len(local)
        encoded = name.encode()
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(raw), size, len(encoded), 0)
        local += encoded + raw
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(raw), size,
                               len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))


def _stored(name: str, data: bytes):
    import zlib

    return name, 0, zlib.crc32(data), len(data), data


def _zero_bomb(name: str, megabytes: int):
    """A deflate member that inflates to `megabytes` MiB of b" " from ~1 KB per MiB."""
    import zlib

    block = b" " * 2**20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    raw = first + again * (megabytes - 1) + c.flush()
    crc = 0
    for _ in range(megabytes):
        crc = zlib.crc32(block, crc)
    return name, 8, crc, megabytes * 2**20, raw


@pytest.mark.parametrize("member", ["archive/code/__torch__/model.py", "archive/byteorder"])
def test_torchscript_zip_bomb_is_refused_by_declared_size(tmp_path, member):
    path = tmp_path / "clip.pt"
    parts = {"archive/data.pkl": _stored("archive/data.pkl", b"\x80\x02}q\x00."),
             "archive/constants.pkl": _stored("archive/constants.pkl", b"\x80\x02)."),
             "archive/code/__torch__/model.py": _stored("archive/code/__torch__/model.py", b"class M(Module):\n"),
             "archive/byteorder": _stored("archive/byteorder", b"little")}
    parts[member] = _zero_bomb(member, 3900)  # 3.8 GiB declared, ~4 MB on disk
    _write_zip(path, list(parts.values()))
    assert path.stat().st_size < 8 * 2**20
    proc = cli(tmp_path, "convert", "--preset", "tiny", "--clip", str(path), "--random-sam", "--out", str(tmp_path / "o"))
    assert_one_line(proc, "clip.pt", member.split("/", 1)[1], "limit")


# -- item 6: pixel limit from the header ----------------------------------------------------------


@pytest.fixture(scope="module")
def pixel_bomb(tmp_path_factory) -> Path:
    """A 169-megapixel PNG (13,000 x 13,000, under Pillow's own limit of ~179 Mpx) of a few hundred KB."""
    from PIL import Image

    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (13_000, 13_000)).save(path, optimize=True)
    assert path.stat().st_size < 2**20
    return path


def test_pixel_bomb_is_refused_from_its_header_by_segment(tmp_path, pixel_bomb):
    proc = cli(tmp_path, "segment", str(pixel_bomb), "--classes", "cat", "--out", str(tmp_path / "o"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "13000 x 13000" in proc.stderr and "--max-pixels" in proc.stderr, proc.stderr[-2000:]
    assert "DecompressionBombWarning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "13000" in line]
    assert len(errors) == 1, proc.stderr[-2000:]  # one input refused: one line, no repeated summary


def test_pixel_bomb_is_refused_from_its_header_by_the_segmenter(tmp_path, pixel_bomb):
    script = ("import sys\n"
              "from escnet import Segmenter\nfrom escnet.data.images import ImageError\n"
              "s = Segmenter.from_pretrained()\n"
              "try:\n    s.segment(sys.argv[1], 'cat')\nexcept ImageError as e:\n    print('refused:', e)\n")
    proc = run_limited(["-W", "error::PIL.Image.DecompressionBombWarning", "-c", script, str(pixel_bomb)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "max_pixels" in proc.stdout, proc.stdout


# -- item 7: thin and tiny images -----------------------------------------------------------------

THIN = [(1, 1281), (5000, 1), (1, 1), (2, 3000), (1, 40000), (40000, 1)]


def test_shortest_edge_resize_never_gives_a_zero_side():
    from escnet.data.transforms import shortest_edge_size
    from escnet.inference.protocol import mapper_size

    assert shortest_edge_size(1, 1281, 106, 424) == (1, 424)  # detectron2's rule rounds the 0.33 px side to 0
    for height, width in THIN:
        assert min(mapper_size(height, width, 64)) >= 1


def test_thin_images_are_segmented_by_the_cli(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "thin"
    folder.mkdir()
    for height, width in THIN:
        Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(folder / f"{height}x{width}.png")
    proc = cli(tmp_path, "segment", str(folder), "--classes", "cat, dog", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for height, width in THIN:
        labels = np.asarray(Image.open(tmp_path / "out" / f"{height}x{width}_labels.png"))
        assert labels.shape == (height, width)


# -- item 12: file names printed by escnet segment -------------------------------------------------


def test_file_names_are_printed_without_terminal_escapes(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "\x1b]0;owned\x07\x1b[31mred.png")
    (folder / "bad\x1b[2J\nname.png").write_bytes(b"not an image")
    proc = cli(tmp_path, "segment", str(folder), "--classes", "cat", "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    printed = proc.stdout + proc.stderr
    assert "\x1b" not in printed and "\x07" not in printed, printed
    assert "bad\\x1b[2J\\nname.png" in printed  # shown escaped, so the file can still be found
    assert not any(line.startswith("name.png") for line in printed.splitlines())
