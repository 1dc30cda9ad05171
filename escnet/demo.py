"""The web demo (`escnet demo`, escnet/commands/demo.py): a web page over `Segmenter`, built with Gradio (optional extra: escnet[demo]).

    escnet demo                                  # bundled model, http://127.0.0.1:7860
    escnet demo --model ckpt/ --port 8080        # any checkpoint escnet loads

The page takes an image (upload, clipboard or one of the bundled examples), a vocabulary (free
text: "cat, dog, sky", or "building, edifice; sky" where ";" separates classes and commas give
synonyms; presets fill in the benchmark vocabularies) and a protocol (single view or CAT-Seg's
sliding window). It shows the overlay, a legend of the classes present with their pixel share,
and offers the label PNG (pixel value = class id), the overlay with its legend and the JSON.

Serving it to others: requests wait in a queue (--queue-size) and at most --concurrency run at
once; uploads are capped in bytes (--max-file-mb, enforced by Gradio before the file lands) and
in pixels (--max-pixels, read from the header before decoding); vocabularies are capped in
classes (--max-classes) and characters. A bad upload or vocabulary comes back as a readable
message in the page and the server carries on. The server binds to 127.0.0.1 unless --host says
otherwise; --share asks Gradio for a public link (that needs internet access). Everything the
page loads is served by the demo itself (fonts included), so it works offline.
"""
from __future__ import annotations

import html
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from escnet.data.images import ImageError, load_image
from escnet.data.vocab import BENCHMARK_VOCABULARIES, VocabularyError, benchmark_vocabulary, parse_vocabulary
from escnet.inference.visualize import palette_for, shorten
from escnet.errors import EscnetError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'escnet[demo]'"
PROTOCOL_CHOICES = (("single view", "single"), ("sliding window", "sliding"))
DEFAULT_CLASSES = "sky, tree, grass, building, road, person, car"
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
LEGEND_ROWS = 40
_KEEP_RESULT_DIRS = 64  # finished requests whose download files are kept on disk (Gradio copies them first)


@dataclass(frozen=True)
class DemoLimits:
    """What one shared demo accepts. max_file_mb: upload size; max_pixels: decoded image size;
    max_classes: vocabulary length (the characters cap follows from it); concurrency: requests
    segmented at once; queue_size: requests allowed to wait."""

    max_file_mb: float = 10.0
    max_pixels: int = 40_000_000
    max_classes: int = 1000
    concurrency: int = 1
    queue_size: int = 32

    @property
    def max_vocabulary_chars(self) -> int:
        # ADE-847, the longest benchmark, averages 15 characters per class with its separators.
        return 40 * self.max_classes

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)


class DemoInputError(EscnetError, ValueError):
    """A request the demo refuses; the message is shown to the user as it is."""


# ---------------------------------------------------------------------------------------------
# Request handling (no Gradio needed, so it is testable on its own)


def parse_demo_vocabulary(text: Optional[str], limits: DemoLimits) -> list[str]:
    """The vocabulary box's text -> checked entries. Same rules as `escnet segment --classes`,
    benchmark names included, except that file paths are refused: the box must never make the
    server read its own files."""
    text = text or ""
    if len(text) > limits.max_vocabulary_chars:
        raise DemoInputError(
            f"the vocabulary text is {len(text):,} characters long; this demo accepts at most {limits.max_vocabulary_chars:,}"
        )
    if text.strip().lower().endswith((".txt", ".json")):
        raise DemoInputError("the demo does not read vocabulary files; type or paste the class names instead")
    entries = parse_vocabulary(text)
    if len(entries) > limits.max_classes:
        raise DemoInputError(f"the vocabulary has {len(entries)} classes; this demo accepts at most {limits.max_classes}")
    return entries


def preset_text(name: str) -> str:
    """A benchmark vocabulary as the vocabulary box shows it: entries joined by "; ", so that
    synonyms ("building, edifice") survive `parse_demo_vocabulary`."""
    return "; ".join(benchmark_vocabulary(name))


def read_upload(path: str, display_name: str, max_pixels: int) -> np.ndarray:
    """Decode an uploaded file into (H, W, 3) uint8. Errors name the file as the user called it,
    not by its server-side path."""
    try:
        with Image.open(path) as header:  # reads the header only: a pixel bomb is refused undecoded
            width, height = header.size
    except Exception:  # unreadable files get load_image's precise message below
        width = height = 0
    if width * height > max_pixels:
        raise DemoInputError(
            f"{display_name}: the image has {width} x {height} = {width * height:,} pixels; "
            f"this demo accepts at most {max_pixels:,}"
        )
    try:
        return load_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        raise DemoInputError(str(exc).replace(str(path), display_name)) from None


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("._")[:64]
    return stem or "image"


def legend_html(names: list[str], fractions: np.ndarray) -> str:
    """The classes present, largest share first, each with its overlay colour; then the classes
    that got no pixel. Names are user text, so they are escaped."""
    colours = palette_for(names)
    order = [int(i) for i in np.argsort(-fractions, kind="stable") if fractions[i] > 0]
    rows = []
    for i in order[:LEGEND_ROWS]:
        r, g, b = (int(c) for c in colours[i])
        share = 100 * fractions[i]
        rows.append(
            f'<tr class="escnet-legend-row">'
            f'<td><span style="display:inline-block;width:1em;height:1em;border:1px solid #000;'
            f'background:rgb({r},{g},{b})"></span></td>'
            f'<td class="escnet-legend-name">{html.escape(shorten(names[i]))}</td>'
            f'<td style="text-align:right">{share:.1f}%</td></tr>'
        )
    parts = ['<div id="escnet-legend"><p><b>Classes present</b> (share of the pixels)</p><table>', *rows, "</table>"]
    if len(order) > LEGEND_ROWS:
        rest = 100 * fractions[order[LEGEND_ROWS:]].sum()
        parts.append(f"<p>+ {len(order) - LEGEND_ROWS} more classes ({rest:.1f}%), listed in the JSON</p>")
    absent = [names[i] for i in range(len(names)) if fractions[i] == 0]
    if absent:
        parts.append(f"<p>Not found: {html.escape(', '.join(absent))}</p>")
    parts.append("</div>")
    return "".join(parts)


def example_rows(folder: Optional[Path] = None) -> list[list[str]]:
    """[image path, vocabulary] for each example image in folder (default: the bundled
    escnet/assets/examples). An example's vocabulary is the sibling <stem>.txt (one class per
    line, as `escnet segment --classes` reads it), else DEFAULT_CLASSES."""
    folder = Path(str(resources.files("escnet") / "assets" / "examples")) if folder is None else Path(folder)
    if not folder.is_dir():
        return []
    rows = []
    for path in sorted(folder.iterdir()):
        if not path.name.lower().endswith(EXAMPLE_SUFFIXES):
            continue
        sidecar = path.with_suffix(".txt")
        text = "; ".join(parse_vocabulary(sidecar)) if sidecar.is_file() else DEFAULT_CLASSES
        rows.append([str(path), text])
    return rows


NOT_UPLOADED = "the image must be uploaded through this page"


class UploadGate:
    """Which server files a request may name: files inside the demo's upload folder and the bundled
    example images, judged on the resolved path (so neither `..` nor a symlink leads out). A payload
    naming anything else is refused with one message that does not say whether the file exists, so
    the API can neither read nor probe the server's files."""

    def __init__(self, roots: list, files: tuple = ()):
        self.roots = [Path(os.path.realpath(root)) for root in roots]
        self.files = {Path(os.path.realpath(f)) for f in files}

    def check(self, path: Any) -> str:
        """The resolved path of an allowed file, else DemoInputError(NOT_UPLOADED)."""
        try:
            resolved = Path(os.path.realpath(os.fspath(path)))
        except (TypeError, ValueError, OSError):
            raise DemoInputError(NOT_UPLOADED) from None
        inside = any(resolved != root and resolved.is_relative_to(root) for root in self.roots)
        if not (inside or resolved in self.files):
            raise DemoInputError(NOT_UPLOADED)
        return str(resolved)


class _ResultFolders:
    """Per-request output folders under one temporary root, keeping only the newest few: Gradio
    copies returned files into its own cache, so older folders are no longer needed."""

    def __init__(self, keep: int = _KEEP_RESULT_DIRS):
        self.root = Path(tempfile.mkdtemp(prefix="escnet-demo-"))
        weakref.finalize(self, shutil.rmtree, self.root, True)
        self.keep = keep
        self._lock = threading.Lock()
        self._folders: list[Path] = []

    def new(self) -> Path:
        folder = Path(tempfile.mkdtemp(dir=self.root))
        with self._lock:
            self._folders.append(folder)
            stale, self._folders = self._folders[:-self.keep], self._folders[-self.keep:]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return folder


def segment_request(segmenter, upload: Any, vocabulary: Optional[str], protocol: Optional[str],
                    limits: DemoLimits, folders: _ResultFolders, gate: UploadGate):
    """One page request -> (overlay image, legend HTML, [label PNG, overlay PNG, JSON] paths).

    upload: Gradio's file payload ({"path": ..., "orig_name": ...}) or a plain path; the path is a
    client's claim, so only what `gate` allows is opened. User mistakes raise DemoInputError /
    VocabularyError with a readable message."""
    if isinstance(upload, dict):
        path, display = upload.get("path"), upload.get("orig_name")
    else:
        path, display = upload, None
    if not path:
        raise DemoInputError("no image: upload an image or pick an example")
    path = gate.check(path)
    display = Path(str(display or path)).name
    valid = [value for _, value in PROTOCOL_CHOICES]
    if protocol not in valid:
        raise DemoInputError(f"unknown protocol {protocol!r}; choose one of {', '.join(valid)}")
    entries = parse_demo_vocabulary(vocabulary, limits)
    image = read_upload(path, display, limits.max_pixels)

    result = segmenter.segment(image, entries, protocol=protocol)
    files = result.save(folders.new(), name=_safe_stem(display))
    legend = legend_html(result.names, result.fractions())
    return result.overlay(legend=False), legend, [str(files["labels"]), str(files["overlay"]), str(files["json"])]


# ---------------------------------------------------------------------------------------------
# The page


def import_gradio():
    """Gradio, with telemetry off, or an ImportError that says how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ImportError(f"the demo needs Gradio, which is not installed: {INSTALL_HINT}") from None
    return gradio


def _describe(segmenter, limits: DemoLimits) -> str:
    model = getattr(segmenter, "model", None)
    arch = getattr(getattr(model, "cfg", None), "arch", type(model).__name__)
    source = Path(segmenter.checkpoint).name if getattr(segmenter, "checkpoint", None) else "in-memory model"
    description = getattr(segmenter, "description", None)
    purpose = (f'\n\n<p id="model-description"><b>What this model is for:</b> {html.escape(description)}</p>\n\n'
               if description else "\n\n")
    return (
        f"Model: **{arch}** ({html.escape(source)}) on {getattr(segmenter, 'device', 'cpu')}.{purpose}"
        f"Images up to {limits.max_file_mb:g} MB and {limits.max_pixels / 1e6:g} megapixels; "
        f"up to {limits.max_classes} classes."
    )


def build_demo(segmenter, limits: DemoLimits = DemoLimits(), title: str = "escnet demo",
               examples: Optional[list[list[str]]] = None):
    """The demo page over `segmenter` (an escnet.inference.segmenter.Segmenter or anything with its
    `segment(image, classes, protocol=...)`), queued with the limits' concurrency and size.
    examples: [image path, vocabulary] rows (default: the bundled ones, `example_rows()`).
    Launch it with `launch_demo`."""
    import torch  # here, not at the top: building the parser (`escnet --help`) must not load torch

    gr = import_gradio()
    folders = _ResultFolders()
    sizes = {name: len(benchmark_vocabulary(name)) for name in BENCHMARK_VOCABULARIES}
    presets = [(f"{name} ({size} classes)", name) for name, size in sizes.items() if size <= limits.max_classes]
    default_protocol = getattr(segmenter, "protocol", "sliding")
    examples = example_rows() if examples is None else examples
    # Gradio stores uploads (and copies of the examples it serves) in its upload folder.
    gate = UploadGate([gr.utils.get_upload_folder()], tuple(row[0] for row in examples))

    def segment(upload, vocabulary, protocol):
        try:
            return segment_request(segmenter, upload, vocabulary, protocol, limits, folders, gate)
        except (DemoInputError, VocabularyError, ImageError) as exc:
            raise gr.Error(html.escape(str(exc), quote=False), print_exception=False) from None
        except (torch.OutOfMemoryError, MemoryError):
            log.exception("escnet demo: out of memory")
            raise gr.Error("out of memory: try fewer classes, a smaller image or the single view",
                           print_exception=False) from None
        except Exception as exc:
            # The page gets a short readable line; the traceback stays in the server log.
            log.exception("escnet demo: segmentation failed")
            raise gr.Error(f"internal error ({type(exc).__name__}); the server log has the details",
                           print_exception=False) from None

    def fill_preset(name):
        return preset_text(name) if name else gr.skip()

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {html.escape(title)}\nOpen-vocabulary semantic segmentation. {_describe(segmenter, limits)}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="image-input")
                vocabulary = gr.Textbox(
                    # the first example's vocabulary: the bundled model knows only its synthetic classes
                    label="Classes", value=examples[0][1] if examples else DEFAULT_CLASSES, lines=3, max_lines=8, elem_id="vocabulary",
                    max_length=limits.max_vocabulary_chars,
                    info='Comma-separated ("cat, dog, sky"); with ";" between classes, commas give synonyms '
                         '("building, edifice; sky"). A benchmark name (ade150) also works.',
                )
                preset = gr.Dropdown(choices=presets, value=None, label="Preset vocabulary", elem_id="preset")
                protocol = gr.Radio(choices=list(PROTOCOL_CHOICES), value=default_protocol, label="Protocol",
                                    elem_id="protocol")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                if examples:
                    gr.Examples(examples=examples, inputs=[image, vocabulary], cache_examples=False)
            with gr.Column():
                overlay = gr.Image(type="pil", format="png", label="Overlay", interactive=False, elem_id="overlay",
                                   buttons=["download", "fullscreen"])
                legend = gr.HTML(label="Legend", elem_id="legend")
                downloads = gr.File(label="Downloads: label PNG (pixel value = class id), overlay, JSON",
                                    file_count="multiple", interactive=False, elem_id="downloads")
        preset.change(fill_preset, inputs=preset, outputs=vocabulary, queue=False, api_visibility="private")
        # preprocess=False: the handler decodes the upload itself, so a corrupt file gets a
        # readable message instead of failing inside Gradio's image preprocessing.
        button.click(segment, inputs=[image, vocabulary, protocol], outputs=[overlay, legend, downloads],
                     api_name="segment", preprocess=False)
    return demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)


def launch_demo(demo, limits: DemoLimits = DemoLimits(), host: str = "127.0.0.1", port: Optional[int] = 7860,
                share: bool = False, **options):
    """Serve a `build_demo` page; returns Gradio's (app, local_url, share_url). options go to
    Blocks.launch (e.g. prevent_thread_lock=True, quiet=True)."""
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=limits.max_file_bytes,
                       show_error=False, **options)
