"""Folder-scale inference: many images over one or many processes (torchrun), resumable, with one
manifest of what was done.

    torchrun --nproc_per_node 2 -m escnet segment photos/ --classes "cat, dog, sky" --out results/ --resume

    from escnet.inference.folder import segment_folder
    summary = segment_folder(segmenter, "photos/", "cat, dog, sky", "results/", resume=True)

Sharding: the jobs (image, output name) are in one deterministic order, the same in every process
(the command line's order; a folder's files sorted by name); the process of rank r takes the jobs
i with i % world_size == r, so every image is segmented by exactly one process. Output names are
made before sharding, so they do not depend on the process count.

Resuming (`resume=True`, `--resume`): a job whose outputs in the output folder are all complete is
skipped. Every output is written by an atomic rename (escnet.fileio), so a file that exists is
complete; a job counts as done only when every file its formats write exists (the png trio,
<name>_masks.json for masks, written after the mask PNGs, <name>_coco.json for coco). An image
whose outputs were deleted, or a run interrupted mid-image, is segmented again. A resumed run must
use the settings of the run it continues (vocabulary, model, protocol, formats...): the manifest
records them and a resume with other settings stops with one line saying so.

Manifest: each process appends one JSON line per job to <out>/escnet-run/rank<r>.jsonl as it goes
(flushed line by line: a killed run leaves a record of what it finished); at the end all processes
meet at a barrier, and rank 0 merges the parts with the previous manifest (a resumed run keeps the
records of the images it skipped) into <out>/escnet-run/manifest.json, written atomically, and removes the
parts. Multi-node runs need --out on storage every node sees (the outputs, the parts and the
resume check all live there).

Process group: `escnet.runtime.setup_runtime` (gloo on CPU, nccl on CUDA, device cuda:LOCAL_RANK);
a single process needs no torchrun and no process group.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from escnet.fileio import atomic_write

# In a folder of their own: no output file can take these names (outputs are <name>.json, <name>_*.png, ...)
RUN_DIR = "escnet-run"
MANIFEST = f"{RUN_DIR}/manifest.json"
PART = RUN_DIR + "/rank{rank}.jsonl"


class ResumeError(ValueError):
    """A resume whose settings differ from the run it would continue."""


def expected_outputs(out_dir: Union[str, os.PathLike], name: str, formats: Sequence[str]) -> list[Path]:
    """The files whose presence makes the job `name` complete for these formats (see the module
    docstring; the per-class mask PNGs are covered by <name>_masks.json, written after them)."""
    out_dir = Path(out_dir)
    files = []
    if "png" in formats:
        files += [out_dir / f"{name}_overlay.png", out_dir / f"{name}_labels.png", out_dir / f"{name}.json"]
    if "masks" in formats:
        files.append(out_dir / f"{name}_masks.json")
    if "coco" in formats:
        files.append(out_dir / f"{name}_coco.json")
    return files


def is_complete(out_dir: Union[str, os.PathLike], name: str, formats: Sequence[str]) -> bool:
    return all(path.is_file() for path in expected_outputs(out_dir, name, formats))


def shard(jobs: Sequence, rank: int, world_size: int) -> list:
    """The jobs of process `rank`: every world_size-th from index rank (i % world_size == rank)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size} process(es)")
    return list(jobs[rank::world_size])


def _dist():
    """torch.distributed when a process group is up, else None (torch imported only here)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


@dataclass
class FolderRun:
    """One process's part of a (possibly multi-process) folder run. `todo` is this process's shard
    less the jobs already complete (resume); call `done` / `failed` per job, then `finish`."""

    out_dir: Path
    formats: list[str]
    settings: dict[str, Any]
    rank: int = 0
    world_size: int = 1
    todo: list[tuple[Path, str]] = field(default_factory=list)
    total: int = 0
    _part: Any = None
    _counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "skipped": 0, "failed": 0})

    @classmethod
    def start(cls, out_dir: Union[str, os.PathLike], jobs: Sequence[tuple[Path, str]], formats: Sequence[str],
              settings: dict[str, Any], resume: bool = False) -> "FolderRun":
        """jobs: (input path, output name) in the same order in every process. settings: what makes
        outputs comparable (vocabulary, model, protocol, formats, ...); recorded in the manifest and,
        on resume, compared with the previous manifest's (ResumeError when they differ)."""
        dist = _dist()
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
        out_dir = Path(out_dir)
        (out_dir / RUN_DIR).mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings, default=str))  # as the manifest will read back
        if resume:
            previous = _read_manifest(out_dir)
            if previous is not None and previous.get("settings") != settings:
                changed = sorted(k for k in set(settings) | set(previous.get("settings", {}))
                                 if settings.get(k) != previous.get("settings", {}).get(k))
                raise ResumeError(f"--resume: {out_dir / MANIFEST} was made with other settings "
                                  f"({', '.join(changed)}); use another --out, or run without --resume to redo it")
        run = cls(out_dir, list(formats), settings, rank, world, total=len(jobs))
        for path, name in shard(list(jobs), rank, world):
            if resume and is_complete(out_dir, name, run.formats):
                run._write({"input": str(path), "name": name, "status": "skipped", "reason": "outputs exist"})
            else:
                run.todo.append((Path(path), name))
        return run

    def _write(self, record: dict[str, Any]) -> None:
        if self._part is None:
            self._part = open(self.out_dir / PART.format(rank=self.rank), "w", encoding="utf-8")
        record = {**record, "rank": self.rank}
        self._counts[record["status"]] += 1
        self._part.write(json.dumps(record) + "\n")
        self._part.flush()

    def done(self, path: Path, name: str, written: Iterable[Path] = ()) -> None:
        self._write({"input": str(path), "name": name, "status": "done",
                     "outputs": sorted(Path(p).name for p in written)})

    def failed(self, path: Path, name: str, message: str) -> None:
        self._write({"input": str(path), "name": name, "status": "failed", "error": message})

    @property
    def counts(self) -> dict[str, int]:
        """This process's counts: done, skipped, failed."""
        return dict(self._counts)

    def finish(self) -> Optional[dict[str, Any]]:
        """Wait for every process (barrier), then on rank 0 merge the parts into manifest.json and
        return the manifest (other ranks: None)."""
        if self._part is None:
            self._part = open(self.out_dir / PART.format(rank=self.rank), "w", encoding="utf-8")
        self._part.close()
        dist = _dist()
        if dist is not None:
            dist.barrier()
        if self.rank != 0:
            return None
        records: dict[str, dict[str, Any]] = {}
        previous = _read_manifest(self.out_dir)
        if previous is not None and previous.get("settings") == self.settings:
            records = {r["name"]: r for r in previous.get("images", [])}
        this_run: dict[str, dict[str, Any]] = {}
        for rank in range(self.world_size):
            part = self.out_dir / PART.format(rank=rank)
            for line in part.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                this_run[record["name"]] = record
        for name, record in this_run.items():
            if record["status"] == "skipped" and name in records and records[name]["status"] == "done":
                continue  # keep the run that made it
            records[name] = record
        counts = {status: sum(r["status"] == status for r in this_run.values()) for status in ("done", "skipped", "failed")}
        manifest = {
            "settings": self.settings,
            "world_size": self.world_size,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "this_run": {"jobs": self.total, **counts},
            "images": sorted(records.values(), key=lambda r: r["name"]),
        }
        text = json.dumps(manifest, indent=2) + "\n"
        atomic_write(self.out_dir / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        for part in self.out_dir.glob(PART.format(rank="*")):
            part.unlink(missing_ok=True)
        return manifest


def _read_manifest(out_dir: Path) -> Optional[dict[str, Any]]:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def image_files(folder: Union[str, os.PathLike], exclude: Optional[Union[str, os.PathLike]] = None) -> list[Path]:
    """The image files of a folder (non-recursive, extensions Pillow knows), sorted by name; exclude:
    a folder whose files are left out (an output folder inside the input folder)."""
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}
    skip = Path(exclude).resolve() if exclude is not None else None
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in extensions and (skip is None or p.resolve().parent != skip))


def unique_names(files: Sequence[Path]) -> list[str]:
    """Output base names, unique case-insensitively: the stem, else the first free stem_2, stem_3, ..."""
    used: set[str] = set()
    names = []
    for path in files:
        name, count = Path(path).stem, 1
        while name.casefold() in used:
            count += 1
            name = f"{Path(path).stem}_{count}"
        used.add(name.casefold())
        names.append(name)
    return names


def run_jobs(segmenter, run: FolderRun, vocabulary, batch_size: int = 1,
             on_error: Optional[Callable[[Path, Exception], str]] = None, show_progress: bool = True) -> None:
    """Segment `run.todo` batch_size images at a time and write their outputs; one bad image is
    recorded as failed and the run goes on. on_error(path, exc) -> the message to record (and may
    print it); default: "<path>: <type>: <message>"."""
    from escnet.data.images import load_image
    from escnet.inference.outputs import save_outputs
    from escnet.progress import progress

    def report(path: Path, name: str, exc: Exception) -> None:
        message = on_error(path, exc) if on_error else f"{path}: {type(exc).__name__}: {exc}"
        run.failed(path, name, message)

    jobs = run.todo
    batches = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    bar = progress(batches, desc=f"segment[{run.rank}]" if run.world_size > 1 else "segment", unit="batch") \
        if show_progress else batches
    for batch in bar:
        loaded = []
        for path, name in batch:
            try:
                loaded.append((path, name, load_image(path, getattr(segmenter, "max_pixels", None))))
            except Exception as exc:
                report(path, name, exc)
        if not loaded:
            continue
        try:
            results = segmenter.segment([image for _, _, image in loaded], vocabulary, batch_size=len(loaded))
        except Exception as exc:
            for path, name, _ in loaded:
                report(path, name, exc)
            continue
        for (path, name, _), result in zip(loaded, results):
            try:
                written = save_outputs(result, run.out_dir, name, run.formats, file_name=path.name)
                run.done(path, name, written)
            except Exception as exc:
                report(path, name, exc)
    compiled = getattr(segmenter, "backend_info", {})
    if "first_call_s" in compiled:  # escnet.inference.backends: what the first image's compile cost
        from escnet.progress import note

        note(f"compile: first model call {compiled['first_call_s']:.1f} s (compile + run; "
             f"cached in {compiled['cache_dir']} for later runs)")


def run_settings(segmenter, vocabulary: list[str], formats: Sequence[str]) -> dict[str, Any]:
    """What makes two runs' outputs comparable: the vocabulary, the model and how it is run, the formats."""
    return {
        "classes": list(vocabulary),
        "checkpoint": segmenter.checkpoint,
        "protocol": segmenter.protocol,
        "resize": segmenter.resize,
        "class_mode": segmenter.class_mode,
        "half": segmenter.half,
        "max_side": segmenter.max_side,
        "formats": list(formats),
    }


def segment_folder(segmenter, inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], classes,
                   out_dir: Union[str, os.PathLike], formats: Sequence[str] = ("png",), batch_size: int = 1,
                   resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Segment a folder (or a list of image files and folders) into out_dir, sharded over the
    processes of a torchrun process group when one is up (see the module docstring). Returns, on
    rank 0, the merged manifest; on other ranks {"rank": r, **this process's counts}."""
    from escnet.data.vocab import parse_vocabulary

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(image_files(path))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    vocabulary = parse_vocabulary(classes)
    formats = list(formats)
    run = FolderRun.start(out_dir, list(zip(files, unique_names(files))), formats,
                          run_settings(segmenter, vocabulary, formats), resume=resume)
    run_jobs(segmenter, run, vocabulary, batch_size=batch_size, show_progress=show_progress)
    manifest = run.finish()
    return manifest if manifest is not None else {"rank": run.rank, **run.counts}
