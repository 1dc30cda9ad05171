"""escnet/demo.py: the request rules on their own, and a live demo server driven through
gradio_client (concurrent load, readable errors, the server still serving afterwards)."""
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from escnet.cli import build_parser
from escnet.data.vocab import (BENCHMARK_VOCABULARIES, VocabularyError, benchmark_vocabulary, known_benchmarks,
                               parse_vocabulary)
from escnet.demo import DEFAULT_CLASSES, DemoInputError, DemoLimits, example_rows, legend_html, parse_demo_vocabulary, preset_text
from escnet.inference.segmenter import Segmenter
from escnet.lifecycle import save_pretrained
from escnet.models.factory import create_model

# Gradio's queue code calls pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

LIMITS = DemoLimits(max_file_mb=0.2, max_pixels=100_000, max_classes=50, concurrency=2, queue_size=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_image(path: Path, height: int, width: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Rules, without a server


def test_vocabulary_caps_and_no_file_reads(tmp_path):
    assert parse_demo_vocabulary("cat, dog, sky", LIMITS) == ["cat", "dog", "sky"]
    assert parse_demo_vocabulary("building, edifice; sky", LIMITS) == ["building, edifice", "sky"]
    assert parse_demo_vocabulary("voc20", LIMITS) == benchmark_vocabulary("voc20")
    many = ", ".join(f"class{i}" for i in range(51))
    with pytest.raises(DemoInputError, match=r"^the vocabulary has 51 classes; this demo accepts at most 50$"):
        parse_demo_vocabulary(many, LIMITS)
    with pytest.raises(DemoInputError, match=r"^the vocabulary text is 2,001 characters long; this demo accepts at most 2,000$"):
        parse_demo_vocabulary("a" * 2001, LIMITS)
    # A real file on the server: the box must not read it.
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")
    with pytest.raises(DemoInputError, match="does not read vocabulary files"):
        parse_demo_vocabulary(str(secret), LIMITS)
    with pytest.raises(VocabularyError, match="empty class name at class 2"):
        parse_demo_vocabulary("cat, , dog", LIMITS)


@pytest.mark.parametrize("name", BENCHMARK_VOCABULARIES)
def test_presets_round_trip_with_synonyms(name):
    assert parse_demo_vocabulary(preset_text(name), DemoLimits()) == benchmark_vocabulary(name)


def test_legend_orders_by_share_lists_absent_and_escapes():
    names = ["sky", "<b>x</b>", "tree"]
    page = legend_html(names, np.array([0.25, 0.75, 0.0]))
    assert page.index("&lt;b&gt;x&lt;/b&gt;") < page.index(">sky<")  # larger share first
    assert "<b>x</b>" not in page
    assert "75.0%" in page and "25.0%" in page
    assert "Not found: tree" in page


def test_example_rows_read_sidecar_vocabularies(tmp_path):
    write_image(tmp_path / "b_scene.png", 8, 8, seed=0)
    (tmp_path / "b_scene.txt").write_text("building, edifice\nsky\n")
    write_image(tmp_path / "a_plain.jpg", 8, 8, seed=1)
    (tmp_path / "notes.md").write_text("not an example")
    assert example_rows(tmp_path) == [
        [str(tmp_path / "a_plain.jpg"), DEFAULT_CLASSES],
        [str(tmp_path / "b_scene.png"), "building, edifice; sky"],
    ]


def test_bundled_examples_load():
    rows = example_rows()
    if not rows:
        pytest.skip("no bundled example images in escnet/assets/examples yet")
    for image, vocabulary in rows:
        with Image.open(image) as example:
            assert example.size[0] > 0
        assert parse_vocabulary(vocabulary)


def test_cli_defaults_to_localhost():
    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, None)


def test_cli_without_gradio_says_how_to_install():
    # sys.modules[name] = None makes `import gradio` fail, as on an install without the extra.
    script = (
        "import sys; sys.modules['gradio'] = None\n"
        "from escnet.cli import build_parser, main\n"
        "assert 'demo' in build_parser().format_help()\n"
        "sys.exit(main(['demo']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "escnet: error: the demo needs Gradio, which is not installed: pip install 'escnet[demo]'" in done.stderr


# ---------------------------------------------------------------------------------------------
# A live server


class CountingSegmenter:
    """Passes segment() through and records the most calls in flight at once."""

    def __init__(self, inner):
        self.inner = inner
        self.protocol = inner.protocol
        self.active = self.peak = self.calls = 0
        self.fail_next = None  # an exception the next segment() raises, as a broken model would
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def segment(self, *args, **kwargs):
        with self._lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        try:
            if self.fail_next is not None:
                error, self.fail_next = self.fail_next, None
                raise error
            time.sleep(0.05)  # lets queued requests overlap even when the model is very fast
            return self.inner.segment(*args, **kwargs)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio")
    from gradio_client import Client

    from escnet.demo import build_demo, launch_demo

    folder = tmp_path_factory.mktemp("demo_model")
    torch.manual_seed(0)
    save_pretrained(create_model("escnet", "tiny"), folder)
    segmenter = CountingSegmenter(Segmenter.from_pretrained(folder, device="cpu", protocol="single"))
    demo = build_demo(segmenter, LIMITS)
    _, url, _ = launch_demo(demo, LIMITS, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": url, "client": Client(url, verbose=False), "segmenter": segmenter,
               "images": tmp_path_factory.mktemp("demo_images")}
    finally:
        demo.close()


def predict(server, image: Path, vocabulary: str, protocol: str = "single"):
    from gradio_client import handle_file

    return server["client"].predict(handle_file(str(image)), vocabulary, protocol, api_name="/segment")


def check_answer(answer, image: Path, classes: list[str]):
    overlay, legend, files = answer
    height, width = np.asarray(Image.open(image)).shape[:2]
    with Image.open(overlay) as drawn:
        assert drawn.size[0] >= width
    by_suffix = {Path(f).name.replace(image.stem, ""): f for f in files}
    assert set(by_suffix) == {"_labels.png", "_overlay.png", ".json"}
    record = json.loads(Path(by_suffix[".json"]).read_text())
    assert record["size"] == [height, width]
    assert [c["name"] for c in record["classes"]] == classes
    assert np.asarray(Image.open(by_suffix["_labels.png"])).shape == (height, width)
    for name in classes:
        assert name in legend


def test_twenty_requests_five_at_a_time(server):
    vocabularies = ["cat, dog, sky", "road; tree; person", "grass, water", "wall, floor, ceiling, window"]
    jobs = []
    for k in range(20):
        image = write_image(server["images"] / f"load{k}.png", 30 + 3 * k, 70 - k, seed=k)
        jobs.append((image, vocabularies[k % len(vocabularies)]))
    before = server["segmenter"].calls
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(pool.map(lambda job: predict(server, *job), jobs))
    assert len(answers) == 20
    for (image, vocabulary), answer in zip(jobs, answers):
        check_answer(answer, image, [e.split(",")[0].strip() for e in parse_vocabulary(vocabulary)])
    assert server["segmenter"].calls - before == 20
    assert server["segmenter"].peak == LIMITS.concurrency  # the queue ran 2 at once, never more


def test_corrupt_upload_gets_readable_error_and_server_goes_on(server):
    from gradio_client.exceptions import AppError

    corrupt = server["images"] / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder wants")
    with pytest.raises(AppError) as caught:
        predict(server, corrupt, "cat, dog")
    assert str(caught.value) == "corrupt.png: not an image file (format not recognised)"

    good = write_image(server["images"] / "after.png", 40, 50, seed=99)
    check_answer(predict(server, good, "cat, dog"), good, ["cat", "dog"])


@pytest.mark.parametrize("vocabulary, message", [
    ("", "empty vocabulary (the class string): give at least one class name"),
    (", ".join(f"c{i}" for i in range(51)), "the vocabulary has 51 classes; this demo accepts at most 50"),
    ("/etc/hosts.txt", "the demo does not read vocabulary files; type or paste the class names instead"),
    ("ade151", "unknown benchmark vocabulary 'ade151'; known: " + known_benchmarks()),
])
def test_bad_vocabulary_gets_readable_error(server, vocabulary, message):
    from gradio_client.exceptions import AppError

    image = write_image(server["images"] / "vocab.png", 20, 20, seed=1)
    with pytest.raises(AppError) as caught:
        predict(server, image, vocabulary)
    assert str(caught.value) == message


def test_image_caps(server):
    import httpx
    from gradio_client.exceptions import AppError

    # Over the pixel cap but small on disk (a flat PNG compresses to almost nothing).
    wide = server["images"] / "wide.png"
    Image.new("RGB", (400, 400), (10, 200, 30)).save(wide)
    with pytest.raises(AppError) as caught:
        predict(server, wide, "grass")
    assert str(caught.value) == "wide.png: the image has 400 x 400 = 160,000 pixels; this demo accepts at most 100,000"

    # Over the byte cap: the server itself refuses the upload (gradio_client would refuse to send it).
    heavy = write_image(server["images"] / "heavy.png", 300, 300, seed=2)
    assert heavy.stat().st_size > LIMITS.max_file_bytes
    reply = httpx.post(server["url"] + "gradio_api/upload", files={"files": ("heavy.png", heavy.read_bytes(), "image/png")})
    assert reply.status_code == 413

    small = write_image(server["images"] / "small.png", 24, 32, seed=3)
    check_answer(predict(server, small, "sky", protocol="sliding"), small, ["sky"])


@pytest.mark.parametrize("error, message", [
    (RuntimeError("shape mismatch deep inside the model"), "internal error (RuntimeError); the server log has the details"),
    (torch.OutOfMemoryError("CUDA out of memory"), "out of memory: try fewer classes, a smaller image or the single view"),
])
def test_model_failure_gets_short_message_and_server_goes_on(server, error, message):
    from gradio_client.exceptions import AppError

    image = write_image(server["images"] / "fail.png", 20, 30, seed=4)
    server["segmenter"].fail_next = error
    with pytest.raises(AppError) as caught:
        predict(server, image, "sky, sea")
    assert str(caught.value) == message
    check_answer(predict(server, image, "sky, sea"), image, ["sky", "sea"])


def test_page_states_the_model_purpose_and_prefills_the_example_vocabulary():
    from escnet.demo import build_demo, example_rows
    from escnet.inference.segmenter import Segmenter

    pytest.importorskip("gradio")
    segmenter = Segmenter.from_pretrained(None, device="cpu")
    demo = build_demo(segmenter)
    blocks = list(demo.blocks.values())
    vocabulary = next(b for b in blocks if getattr(b, "elem_id", None) == "vocabulary")
    assert vocabulary.value == example_rows()[0][1]
    assert "dark red" in vocabulary.value and "sky" not in vocabulary.value
    text = " ".join(str(getattr(b, "value", "")) for b in blocks if type(b).__name__ == "Markdown")
    assert "What this model is for:" in text and "knows nothing about real photos" in text


# ---------------------------------------------------------------------------------------------
# The API opens only what was uploaded


def test_upload_gate_allows_only_files_inside_its_roots(tmp_path):
    from escnet.demo import NOT_UPLOADED, UploadGate

    uploads, outside = tmp_path / "uploads", tmp_path / "outside"
    (uploads / "abc").mkdir(parents=True)
    outside.mkdir()
    inside = write_image(uploads / "abc" / "photo.png", 8, 8, seed=0)
    secret = write_image(outside / "secret.png", 8, 8, seed=1)
    example = write_image(outside / "example.png", 8, 8, seed=2)
    (uploads / "link.png").symlink_to(secret)
    gate = UploadGate([uploads], (str(example),))

    assert gate.check(str(inside)) == str(inside.resolve())
    assert gate.check(str(example)) == str(example.resolve())
    for hostile in [str(secret), str(outside / "missing.png"), str(uploads / "abc" / ".." / ".." / "outside" / "secret.png"),
                    str(uploads / "link.png"), str(uploads), "/etc/passwd", "relative.png", "bad\0name", 12345]:
        with pytest.raises(DemoInputError) as caught:
            gate.check(hostile)
        assert str(caught.value) == NOT_UPLOADED  # one message: says nothing of whether the file exists


def _raw_call(server, payload):
    """POST the segment API with a hand-made file payload (no upload), as any HTTP client can;
    returns the event stream's text."""
    import httpx

    start = httpx.post(server["url"] + "gradio_api/call/segment", json={"data": [payload, "cat, dog", "single"]}, timeout=60)
    assert start.status_code == 200, start.text
    event = start.json()["event_id"]
    return httpx.get(server["url"] + f"gradio_api/call/segment/{event}", timeout=120).text


def test_api_refuses_server_paths_that_were_not_uploaded(server, tmp_path):
    from escnet.demo import NOT_UPLOADED

    secret = write_image(tmp_path / "secret.png", 24, 24, seed=5)  # a real image: on old code it was segmented
    before = server["segmenter"].calls
    for path in [str(secret), str(tmp_path / "no_such.png"), "/etc/hostname"]:
        # A bare {"path": ...} reaches the handler untouched (preprocess=False): the gate must refuse it.
        stream = _raw_call(server, {"path": path, "orig_name": "x.png"})
        assert "event: error" in stream and NOT_UPLOADED in stream, stream
        assert "secret" not in stream.split("event: error", 1)[1]
        # Marked as Gradio file data, Gradio refuses it before the handler; either way no file is read.
        stream = _raw_call(server, {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"})
        assert "event: error" in stream and "event: complete" not in stream, stream
    assert server["segmenter"].calls == before  # nothing reached the model

    # An upload through the page still works.
    good = write_image(server["images"] / "uploaded.png", 24, 24, seed=6)
    check_answer(predict(server, good, "cat, dog"), good, ["cat", "dog"])
