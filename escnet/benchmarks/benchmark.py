"""ESC-Net vs CAT-Seg side by side: the sections of `escnet benchmark` (bench_flops, bench_models,
bench_profile, bench_ppg, bench_vocab, bench_text_cache, bench_train, bench_roofline) and their tables.
What each section measures and how is described with the command (escnet/commands/benchmark.py,
or `escnet benchmark --help`).
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import re
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from escnet.runtime import peak_memory

VIEWS = {"single": 1, "sliding": 5}
# what a bare `escnet benchmark` runs, and the matrix it used to start without warning
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: str) -> None:
    """Wait for queued device work, so that the clock read next sees it finished (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mib(device: str) -> dict:
    """The benchmark's memory columns: PyTorch's allocator peak on CUDA, else the resident peak."""
    peak = peak_memory(device)
    if "peak_cuda_MiB" in peak:
        return {"peak_mem_MiB": peak["peak_cuda_MiB"], "peak_reserved_MiB": peak["peak_cuda_reserved_MiB"]}
    return {"peak_mem_MiB": peak["peak_rss_MiB"]}


def _build(arch: str, preset: str, reading: str = "paper", **overrides):
    """A model to measure: ESC-Net in a named reading (escnet.models.escnet.READINGS), CAT-Seg with
    exact all-class scoring (as ESC-Net scores)."""
    from escnet.models.factory import create_model

    over = {"class_truncation": None} if arch == "catseg" else {"reading": reading}
    return create_model(arch, preset, **over, **overrides).eval().requires_grad_(False)


def count_gflops(arch: str, preset: str, t: int, views: int) -> float:
    """Forward GFLOPs (matmul, convolution, attention; torch.utils.flop_counter) on the meta device:
    shapes only, so it is exact, machine-independent and takes seconds even at ViT-L, 5 views."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = _build(arch, preset)
        crop = model.cfg.crop_size
        images = torch.empty(views, 3, crop, crop)
        text = torch.empty(t, model.cfg.clip.embed_dim)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(images, text)
    return counter.get_total_flops() / 1e9


def matmul_throughput(device: str, dtype: str = "fp32", size: int | None = None, repeats: int = 5) -> dict:
    """The machine's own ceiling: GFLOP/s (2 n^3 per product) of the best of `repeats` n x n torch.mm
    after one untimed product. n defaults to 2048 on a CPU (a product takes about 0.1-1 s there)
    and 8192 on a GPU."""
    n = size or (8192 if device.startswith("cuda") else 2048)
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=gen).to(DTYPES[dtype]) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=DTYPES[dtype])
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"device": device, "dtype": dtype, "size": n, "seconds": best, "gflops_per_s": 2 * n**3 / best / 1e9}


def bench_roofline(device: str, dtypes=("fp32", "bf16"), size: int | None = None) -> list[dict]:
    """matmul_throughput for each dtype; a dtype the device cannot multiply gives an error row."""
    rows = []
    for dtype in dtypes:
        try:
            rows.append(matmul_throughput(device, dtype, size))
        except RuntimeError as e:
            rows.append({"device": device, "dtype": dtype, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def make_forward(model, device: str, dtype: str = "fp32", compile_backend: str | None = None):
    """model's forward as it will be timed: under bf16 autocast for dtype "bf16", through
    torch.compile(backend=compile_backend) when one is given; otherwise the eager fp32 model."""
    fn = torch.compile(model, backend=compile_backend) if compile_backend else model
    if dtype == "fp32":
        return fn

    def forward(*args):
        with _autocast(device, dtype):
            return fn(*args)

    return forward


def _autocast(device: str, dtype: str):
    """bf16 autocast on the device's type for dtype "bf16"; nothing for "fp32"."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


def label_agreement(logits: torch.Tensor, reference: torch.Tensor, margin: float = 0.1) -> dict:
    """logits and reference (B, T, H, W) -> the fraction of pixels with the same argmax class; the same
    over the "confident" pixels, where the reference's top probability leads the second by at least
    `margin` (near-ties may flip under any rounding; random-weight models have many), and their
    fraction; the largest difference of the softmax probabilities over classes."""
    prob, ref = (torch.softmax(x.float(), dim=1) for x in (logits, reference))
    same = prob.argmax(1) == ref.argmax(1)
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    confident = (top2[:, 0] - top2[:, -1] >= margin) if ref.shape[1] > 1 else torch.ones_like(same)
    return {"label_agreement": same.float().mean().item(),
            "confident_label_agreement": same[confident].float().mean().item() if confident.any() else None,
            "confident_fraction": confident.float().mean().item(), "max_prob_diff": (prob - ref).abs().max().item()}


def _model_inputs(model, t: int, views: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random views (views, 3, crop, crop) in 0..255 and L2-normalised text features (T, D), seed 0."""
    gen = torch.Generator().manual_seed(0)
    crop = model.cfg.crop_size
    images = torch.rand(views, 3, crop, crop, generator=gen) * 255
    text = torch.nn.functional.normalize(torch.randn(t, model.cfg.clip.embed_dim, generator=gen), dim=-1)
    return images.to(device), text.to(device)


def _latency_job(arch: str, preset: str, t: int, protocol: str, device: str, repeats: int, warmup: int,
                 dtype: str, compile_backend: str | None, q) -> None:
    """Runs in a child process, so the peak memory it reports belongs to this configuration alone.
    `warmup` untimed forward passes come first (0: the first pass is timed; with --compile the first
    pass also compiles). Each timed pass is synchronised on both ends; images/s = passes / their
    summed time. A bf16 or compiled forward is then compared with one eager fp32 forward."""
    try:
        torch.manual_seed(0)
        model = _build(arch, preset).to(device)
        views, text = _model_inputs(model, t, VIEWS[protocol], device)
        forward = make_forward(model, device, dtype, compile_backend)
        row = {"dtype": dtype, "compile": compile_backend, "threads": torch.get_num_threads()}
        if device.startswith("cuda"):
            row["gpu"] = torch.cuda.get_device_name()
            row["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        with torch.inference_mode():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            for i in range(warmup):
                _sync(device)
                t0 = time.perf_counter()
                forward(views, text)
                _sync(device)
                if i == 0:
                    row["first_pass_s"] = time.perf_counter() - t0
            times = []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                out = forward(views, text)
                _sync(device)
                times.append(time.perf_counter() - t0)
            row.update(_peak_mib(device))
            if dtype != "fp32" or compile_backend:
                row.update(label_agreement(out, model(views, text)))
        row.update({"latency_s": min(times), "latency_mean_s": sum(times) / len(times),
                    "images_per_s": len(times) / sum(times), "timed_passes": len(times)})
        q.put(row)
    except Exception as e:  # noqa: BLE001 - reported in the table instead of killing the whole run
        q.put({"error": f"{type(e).__name__}: {e}"})


PAIR_MODES = ("eager", "compile", "compile-freezing")


def _pair_forward(model, mode: str):
    """model's forward for one bench_pair mode: eager, torch.compile (inductor), or inductor with
    freezing (weights folded in as constants and pre-packed for the CPU matmul kernels; inference only)."""
    if mode == "eager":
        return model
    if mode == "compile":
        return torch.compile(model, backend="inductor")
    if mode == "compile-freezing":
        return torch.compile(model, backend="inductor", options={"freezing": True})
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(PAIR_MODES)}")


def bench_pair(preset: str, t: int, protocol: str, device: str, modes=("compile",), rounds: int = 5,
               warmup: int = 2, log=print) -> dict:
    """ESC-Net and CAT-Seg in ONE process, timed in alternating rounds, so that a host whose speed
    drifts (a shared virtual machine: its matmul ceiling can move by a third between minutes) slows
    both alike. Each round measures the fp32 matmul ceiling (best of 3), then one forward of every
    (mode, model), the models' order reversed every other round. Per (mode, model): every round's
    latency and its share of that round's ceiling (GFLOPs / latency / ceiling); per mode: the
    median over rounds of the ESC/CAT latency ratio, and the label agreement with eager fp32.
    `warmup` untimed forwards per callable first (the first one compiles; its seconds are kept)."""
    models = {arch: _build(arch, preset).to(device) for arch in ("escnet", "catseg")}
    gflops = {arch: count_gflops(arch, preset, t, VIEWS[protocol]) for arch in models}
    inputs = {arch: _model_inputs(m, t, VIEWS[protocol], device) for arch, m in models.items()}
    out = {"preset": preset, "T": t, "protocol": protocol, "device": device, "threads": torch.get_num_threads(),
           "rounds": rounds, "gflops": gflops, "modes": {}}
    calls = {}
    with torch.inference_mode():
        reference = {arch: m(*inputs[arch]) for arch, m in models.items()}
        for mode in modes:
            for arch, m in models.items():
                fn = _pair_forward(m, mode)
                first = None
                for i in range(warmup):
                    _sync(device)
                    t0 = time.perf_counter()
                    result = fn(*inputs[arch])
                    _sync(device)
                    first = first if first is not None else time.perf_counter() - t0
                calls[mode, arch] = fn
                out["modes"].setdefault(mode, {})[arch] = {"first_call_s": first, "latency_s": [], "ceiling_share": [],
                                                           **label_agreement(result, reference[arch])}
                log(f"pair: {mode} {arch} ready (first call {first:.1f} s)")
        ceilings = []
        for r in range(rounds):
            ceiling = matmul_throughput(device, "fp32", repeats=3)["gflops_per_s"]
            ceilings.append(ceiling)
            order = list(calls) if r % 2 == 0 else list(reversed(calls))
            for mode, arch in order:
                _sync(device)
                t0 = time.perf_counter()
                calls[mode, arch](*inputs[arch])
                _sync(device)
                dt = time.perf_counter() - t0
                row = out["modes"][mode][arch]
                row["latency_s"].append(dt)
                row["ceiling_share"].append(gflops[arch] / dt / ceiling)
            log(f"pair: round {r + 1}/{rounds}: ceiling {ceiling:.0f} GFLOP/s; " + ", ".join(
                f"{m} {a} {out['modes'][m][a]['latency_s'][-1]:.2f} s" for m, a in calls))
    out["ceiling_gflops_per_s"] = ceilings
    for mode, rows in out["modes"].items():
        ratios = [e / c for e, c in zip(rows["escnet"]["latency_s"], rows["catseg"]["latency_s"])]
        rows["esc_cat_ratio"] = ratios
        rows["esc_cat_ratio_median"] = float(np.median(ratios))
        for arch in models:
            rows[arch]["latency_median_s"] = float(np.median(rows[arch]["latency_s"]))
            rows[arch]["ceiling_share_median"] = float(np.median(rows[arch]["ceiling_share"]))
    return out


def format_pair(r: dict) -> str:
    lines = [f"ESC-Net and CAT-Seg in one process, {r['preset']}, T = {r['T']}, {r['protocol']}, {r['device']}, "
             f"{r['threads']} threads, {r['rounds']} alternating rounds (medians; fp32 matmul ceiling "
             f"{min(r['ceiling_gflops_per_s']):.0f}-{max(r['ceiling_gflops_per_s']):.0f} GFLOP/s over the rounds)", "",
             "| mode | ESC-Net latency (s) | CAT-Seg latency (s) | ESC/CAT (median of rounds) | ESC-Net share of matmul "
             "| CAT-Seg share of matmul | first call ESC / CAT (s) | labels as eager fp32 ESC / CAT |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, rows in r["modes"].items():
        e, c = rows["escnet"], rows["catseg"]
        lines.append(f"| {mode} | {e['latency_median_s']:.3f} | {c['latency_median_s']:.3f} | "
                     f"{rows['esc_cat_ratio_median']:.3f} | {e['ceiling_share_median']:.3f} | "
                     f"{c['ceiling_share_median']:.3f} | {e['first_call_s']:.1f} / {c['first_call_s']:.1f} | "
                     f"{100 * e['label_agreement']:.2f} % / {100 * c['label_agreement']:.2f} % |")
    return "\n".join(lines)


def _in_subprocess(target, *args) -> dict:
    """Run target(*args, queue) in a fresh process and return what it put on the queue; a process
    that dies without answering (e.g. killed for memory) gives an error row instead of a hang."""
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:
        try:
            res = q.get(timeout=2.0)
            break
        except queue_mod.Empty:
            if not p.is_alive():
                code = p.exitcode
                why = " (killed: SIGKILL, usually the out-of-memory killer)" if code == -9 else ""
                res = {"error": f"the benchmark process died with exit code {code}{why}"}
                break
    p.join()
    return res


def bench_flops(presets, classes, protocols, readings=("paper", "efficient", "legacy")) -> list[dict]:
    """Forward cost side by side, on the meta device: ESC-Net in each reading, CAT-Seg as escnet runs
    it, and CAT-Seg as its official code runs it (paper unit only); torch FLOPs and the paper's unit
    (escnet.benchmarks.flops: fvcore-convention multiply-adds, the unit of both papers' tables)."""
    from escnet.benchmarks.flops import catseg_reference_gmacs, count_costs

    rows = []
    for preset in presets:
        for t in classes:
            for protocol in protocols:
                views = VIEWS[protocol]
                cat = count_costs("catseg", preset, t, views)
                ref = catseg_reference_gmacs(preset, t, views)
                base = {"preset": preset, "T": t, "protocol": protocol}
                rows.append({**base, "model": "CAT-Seg (official code)", "paper_gmacs": ref})
                rows.append({**base, "model": "CAT-Seg (escnet)", "torch_gflops": cat["torch_gflops"],
                             "paper_gmacs": cat["paper_gmacs"], "torch_vs_catseg": 1.0})
                for reading in readings:
                    esc = count_costs("escnet", preset, t, views, reading=reading)
                    rows.append({**base, "model": f"ESC-Net ({reading})", "torch_gflops": esc["torch_gflops"],
                                 "paper_gmacs": esc["paper_gmacs"],
                                 "torch_vs_catseg": esc["torch_gflops"] / cat["torch_gflops"]})
                for row in rows[-2 - len(readings):]:
                    row["paper_vs_catseg_official"] = row["paper_gmacs"] / ref
                for row in rows[-2 - len(readings):]:  # this group's rows: official, escnet, one per reading
                    print(json.dumps(row), flush=True)
    return rows


def format_flops(rows: list[dict]) -> str:
    lines = ["| size | T | protocol | model | torch GFLOPs | x CAT-Seg (escnet) | paper unit G | x CAT-Seg (official) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        torch_g = f"{r['torch_gflops']:,.1f}" if "torch_gflops" in r else "-"
        ratio = f"{r['torch_vs_catseg']:.3f}" if "torch_vs_catseg" in r else "-"
        paper_ratio = f"{r['paper_vs_catseg_official']:.3f}" if "paper_vs_catseg_official" in r else "1.000"
        lines.append(f"| {r['preset']} | {r['T']} | {r['protocol']} | {r['model']} | {torch_g} | {ratio} | "
                     f"{r['paper_gmacs']:,.1f} | {paper_ratio} |")
    return "\n".join(lines)


def bench_models(presets, classes, protocols, device, repeats, latency_classes=None, warmup: int = 1,
                 dtype: str = "fp32", compile_backend: str | None = None, ceiling: dict | None = None) -> list[dict]:
    """One row per (size, T, protocol, arch), ESC-Net and CAT-Seg adjacent. Latency and peak memory
    are measured for T in `latency_classes` (default: all of `classes`; empty: none), and each timed
    forward is set against `ceiling` (a matmul_throughput row of the same dtype; measured here first
    when None and something is timed)."""
    from escnet.models.factory import count_parameters

    latency_classes = classes if latency_classes is None else latency_classes
    if ceiling is None and any(t in latency_classes for t in classes):
        ceiling = matmul_throughput(device, dtype)
        print(json.dumps({"matmul_ceiling": ceiling}), flush=True)
    rows = []
    for preset in presets:
        params = {}
        for arch in ("escnet", "catseg"):
            with torch.device("meta"):
                params[arch] = count_parameters(_build(arch, preset))["total"] / 1e6
        for t in classes:
            for protocol in protocols:
                for arch in ("escnet", "catseg"):
                    row = {"arch": arch, "preset": preset, "T": t, "protocol": protocol, "device": device,
                           "params_M": params[arch], "gflops": count_gflops(arch, preset, t, VIEWS[protocol])}
                    if t in latency_classes:
                        row.update(_in_subprocess(_latency_job, arch, preset, t, protocol, device, repeats, warmup,
                                                  dtype, compile_backend))
                        if "latency_s" in row:
                            row["gflops_per_s"] = row["gflops"] / row["latency_s"]
                            row["matmul_gflops_per_s"] = ceiling["gflops_per_s"]
                            row["ceiling_fraction"] = row["gflops_per_s"] / ceiling["gflops_per_s"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def bench_ppg(t: int = 150, grid: int = 24, regions: int = 5, iters: int = 10, repeats: int = 10) -> dict:
    """Batched PPG vs a per-class scikit-learn KMeans loop on the same maps (same threshold, same k)."""
    import numpy as np
    from sklearn.cluster import KMeans

    from escnet.models.ppg import generate_pseudo_prompts

    torch.manual_seed(0)
    # smooth random fields (a 6x6 grid upsampled), on the scale of CLIP cosine maps: blob-shaped
    # foregrounds of tens of pixels, like real correlation maps
    coarse = torch.randn(t, 1, 6, 6) * 0.03
    maps = torch.nn.functional.interpolate(coarse, size=(grid, grid), mode="bicubic", align_corners=False)[:, 0]
    generate_pseudo_prompts(maps, num_regions=regions, iters=iters)
    ours = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate_pseudo_prompts(maps, num_regions=regions, iters=iters)
        ours.append(time.perf_counter() - t0)
    prob = torch.softmax(100 * maps.reshape(t, -1), -1).numpy()
    ys, xs = np.mgrid[:grid, :grid]
    coords = np.stack([ys.ravel(), xs.ravel()], 1).astype(np.float32)
    t0 = time.perf_counter()
    for c in range(t):  # the baseline is deliberately the per-class loop the batched PPG replaces
        fg = prob[c] > 0.5 * prob[c].max()
        pts = coords[fg]
        k = min(regions, len(pts))
        km = KMeans(n_clusters=k, n_init=1, max_iter=iters, random_state=0).fit(pts)
        for r in range(k):
            sel = km.labels_ == r
            pts[sel][prob[c][fg][sel].argmax()]
    loop = time.perf_counter() - t0
    fg_pixels = (prob > 0.5 * prob.max(1, keepdims=True)).sum(1)
    return {"T": t, "grid": grid, "batched_ms": min(ours) * 1e3, "sklearn_loop_ms": loop * 1e3,
            "speedup": loop / min(ours), "foreground_pixels_mean": float(fg_pixels.mean()),
            "foreground_pixels_max": int(fg_pixels.max())}


def _vocab_job(t: int, budget_mb: int, device: str, q) -> None:
    try:
        from escnet.inference.segmenter import Segmenter
        from escnet.models.factory import create_model

        torch.manual_seed(0)
        model = create_model("escnet", "vitb16").eval()
        # single view: the class axis is what this measures; 5 views would only multiply the time
        seg = Segmenter(model, device=device, memory_budget_mb=budget_mb, protocol="single")
        names = [f"class {i}" for i in range(t)]
        image = (torch.rand(480, 640, 3) * 255).to(torch.uint8).numpy()
        text_t0 = time.perf_counter()
        seg.text_features(names)
        text_s = time.perf_counter() - text_t0
        t0 = time.perf_counter()
        res = seg.segment(image, names)
        q.put({"T": t, "budget_MiB": budget_mb, "seconds": time.perf_counter() - t0, "text_s": text_s,
               **_peak_mib(device), "class_mode": res.info.get("class_mode"),
               "class_chunk": res.info.get("class_chunk")})
    except Exception as e:  # noqa: BLE001
        q.put({"T": t, "error": f"{type(e).__name__}: {e}"})


def _batch_job(arch: str, preset: str, t: int, protocol: str, device: str, batch: int, images: int,
               warmup: int, q) -> None:
    """Runs in a child process (its peak memory is this batch size's alone): a Segmenter (random
    weights, seed 0) segments `images` random 480 x 640 photos with T names through
    `Segmenter.segment(list, batch_size=batch)`, end to end (decode, views, model, resize to the
    photo, argmax, scores), after `warmup` untimed calls of one batch (which also encode the names)."""
    try:
        import numpy as np

        from escnet.inference.segmenter import Segmenter

        torch.manual_seed(0)
        model = _build(arch, preset)
        segmenter = Segmenter(model, device=device, protocol=protocol, text_cache=False)
        rng = np.random.default_rng(0)
        photos = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(images)]
        names = [f"class {i}" for i in range(t)]
        for _ in range(warmup):
            segmenter.segment(photos[:batch], names, batch_size=batch)
        _sync(device)
        t0 = time.perf_counter()
        segmenter.segment(photos, names, batch_size=batch)
        _sync(device)
        seconds = time.perf_counter() - t0
        q.put({"seconds": seconds, "images_per_s": images / seconds, **_peak_mib(device)})
    except Exception as e:  # noqa: BLE001 - reported in the table instead of killing the whole run
        q.put({"error": f"{type(e).__name__}: {e}"})


def bench_batch(presets, classes, protocol: str, device: str, batch_sizes, images: int, warmup: int) -> list[dict]:
    """Images/s of end-to-end Segmenter inference vs batch size, ESC-Net and CAT-Seg side by side;
    each (size, T, model, batch size) in a fresh process."""
    rows = []
    for preset in presets:
        for t in classes:
            for arch in ("escnet", "catseg"):
                for b in batch_sizes:
                    row = {"preset": preset, "T": t, "protocol": protocol, "arch": arch, "batch": b, "images": images,
                           **_in_subprocess(_batch_job, arch, preset, t, protocol, device, b, images, warmup)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def format_batch(rows: list[dict]) -> str:
    lines = ["| size | T | protocol | model | batch | images/s | x batch 1 | peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['T']} | {r['protocol']} | {r['arch']} | {r['batch']} | {r['error']} | | |")
            continue
        one = next((o for o in rows if o["batch"] == 1 and "error" not in o
                    and (o["preset"], o["T"], o["arch"]) == (r["preset"], r["T"], r["arch"])), None)
        gain = f"{r['images_per_s'] / one['images_per_s']:.2f}" if one else "-"
        lines.append(f"| {r['preset']} | {r['T']} | {r['protocol']} | {r['arch']} | {r['batch']} | "
                     f"{r['images_per_s']:.3f} | {gain} | {r['peak_mem_MiB']:.0f} |")
    return "\n".join(lines)


def bench_vocab(device: str, budget_mb: int) -> list[dict]:
    rows = [_in_subprocess(_vocab_job, t, budget_mb, device) for t in (150, 847)]
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def bench_text_cache(preset: str = "vitb16", vocabulary: str = "ade847", device: str = "cpu") -> dict:
    """Cold vs warm Segmenter.text_features through the disk cache, in a temporary cache folder."""
    import tempfile

    from escnet.data.vocab import benchmark_vocabulary
    from escnet.inference.segmenter import Segmenter
    from escnet.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("escnet", preset).eval()
    names = benchmark_vocabulary(vocabulary)
    with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, {"ESCNET_CACHE": folder}):
        seconds, feats = [], []
        for _ in ("cold", "warm"):
            segmenter = Segmenter(model, device=device, text_cache=True)
            _sync(device)
            t0 = time.perf_counter()
            feats.append(segmenter.text_features(names))
            _sync(device)
            seconds.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in Path(folder).rglob("*.safetensors"))
    return {"size": preset, "vocabulary": vocabulary, "T": len(names), "cold_s": seconds[0], "warm_s": seconds[1],
            "speedup": seconds[0] / seconds[1], "bitwise_equal": bool(torch.equal(*feats)), "file_bytes": size}


def saved_for_backward_gib(arch: str, preset: str, t: int, batch: int = 1, checkpointing: bool = False,
                           reading: str = "paper") -> float:
    """GiB of the tensors autograd keeps for the backward pass of one training forward (the
    recipe's trainable set), counted on the meta device: machine-independent, like the FLOPs.
    Each saved tensor object counts once; two views of one storage count twice, so this is an
    upper bound of the activation memory (without the transient peaks of the backward)."""
    from torch.autograd.graph import saved_tensors_hooks

    with torch.device("meta"):
        model = _build(arch, preset, reading, grad_checkpointing=checkpointing).train().requires_grad_(True)
        model.set_finetune(model.cfg.clip_finetune)
        crop = model.cfg.crop_size
        images = torch.empty(batch, 3, crop, crop)
        text = torch.empty(t, model.cfg.clip.embed_dim)
    kept: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(x):
        kept[id(x)] = (x, x.numel() * x.element_size())  # holding x keeps its id unique
        return x

    with saved_tensors_hooks(pack, lambda x: x):
        model(images, text)
    return sum(n for _, n in kept.values()) / 2**30


def _train_job(arch: str, preset: str, t: int, batch: int, steps: int, warmup: int, device: str,
               checkpointing: bool, q) -> None:
    """One configuration of the training benchmark, in a child process (its own peak memory)."""
    try:
        from escnet.data.vocab import benchmark_vocabulary
        from escnet.training.config import TrainConfig
        from escnet.training.loop import Objective, make_optimizer

        torch.manual_seed(0)
        model = _build(arch, preset, grad_checkpointing=checkpointing).to(device).train().requires_grad_(True)
        model.set_finetune(model.cfg.clip_finetune)  # the recipe's trainable set: CLIP q/v and all of the rest
        names = benchmark_vocabulary("coco-stuff")
        names = (names * (t // len(names) + 1))[:t] if t > len(names) else names[:t]
        objective = Objective(model, names, ignore_label=255)
        optimizer, _ = make_optimizer(model, TrainConfig())
        params = [p for g in optimizer.param_groups for p in g["params"]]
        crop = model.cfg.crop_size
        images = (torch.rand(batch, 3, crop, crop, device=device) * 255).to(torch.uint8)
        labels = torch.randint(0, t, (batch, crop, crop), device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(warmup + steps):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = objective(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.01)
            optimizer.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        trainable = sum(p.numel() for p in params) / 1e6
        q.put({"arch": arch, "preset": preset, "T": t, "batch": batch, "device": device, "steps": steps,
               "warmup": warmup, "step_s": sum(times) / len(times), "steps_per_s": len(times) / sum(times),
               **_peak_mib(device), "trainable_M": trainable, "loss": loss.item()})
    except Exception as e:  # noqa: BLE001
        q.put({"error": f"{type(e).__name__}: {e}"})


def bench_train(preset: str, t: int, batch: int, steps: int, warmup: int, device: str,
                checkpointing: bool = False) -> list[dict]:
    """ESC-Net then CAT-Seg, each in a fresh process, same inputs and recipe."""
    rows = []
    for arch in ("escnet", "catseg"):
        saved = {f"saved_for_backward_GiB{'_checkpointed' if c else ''}": saved_for_backward_gib(arch, preset, t, batch, c)
                 for c in (False, True)}
        rows.append({"arch": arch, "preset": preset, "T": t, "batch": batch, "device": device,
                     "grad_checkpointing": checkpointing, **saved,
                     **_in_subprocess(_train_job, arch, preset, t, batch, steps, warmup, device, checkpointing)})
        print(json.dumps(rows[-1]), flush=True)
    if all("error" not in r for r in rows):
        e, c = rows
        print(f"training, {preset}, T={t}, batch {batch}/device, {device}: ESC-Net {e['steps_per_s']:.4f} steps/s "
              f"({e['peak_mem_MiB']:.0f} MiB peak), CAT-Seg {c['steps_per_s']:.4f} steps/s ({c['peak_mem_MiB']:.0f} MiB); "
              f"ESC/CAT step time {e['step_s'] / c['step_s']:.2f}, peak memory {e['peak_mem_MiB'] / c['peak_mem_MiB']:.2f}",
              flush=True)
    e, c = rows
    print(f"saved for backward (meta device, GiB): ESC-Net {e['saved_for_backward_GiB']:.2f} "
          f"({e['saved_for_backward_GiB_checkpointed']:.2f} checkpointed), CAT-Seg {c['saved_for_backward_GiB']:.2f} "
          f"({c['saved_for_backward_GiB_checkpointed']:.2f} checkpointed)", flush=True)
    return rows


# Parts of a forward for the profile: (full match on a module's qualified name, part), first match
# wins; a module that matches none belongs to its parent's part, and the model itself to ROOT_PART.
# Names of both models: ESC-Net (sam.*, vlf.*, decoder, skips, stem) and CAT-Seg (transformer.*).
PARTS = (
    (r"clip\.visual(\..*)?", "CLIP image encoder"),
    (r"clip(\..*)?", "CLIP text encoder"),
    (r"sam\.\d+\.ppg", "PPG"),
    (r"sam\.\d+\.prompt_encoder(\..*)?", "SAM prompt encoder"),
    (r"sam\.\d+\.transformer(\..*)?", "SAM two-way transformer"),
    (r"sam\.\d+", "SAM projections, prompt assembly"),
    (r"vlf\.\d+\.spatial(\..*)?|transformer\.layers\.\d+\.swin_block(\..*)?", "Swin (spatial)"),
    (r"vlf\.\d+\.classes(\..*)?|transformer\.layers\.\d+\.attention(\..*)?", "class attention"),
    (r"vlf\.\d+|transformer\.layers\.\d+", "VLF / aggregator layout"),
    (r"transformer\.(text_)?guidance_projection(\..*)?", "guidance projections"),
    (r"(decoder|skips|upsample\d)(\..*)?|transformer\.(decoder\w*|head)(\..*)?", "decoder"),
    (r"stem|transformer(\.conv1)?", "correlation, stem, top-level ops"),
)
ROOT_PART = "correlation, stem, top-level ops"
RESIZES = "resizes (every interpolation)"
OUTSIDE = "other (outside any range)"
PART_ORDER = ("CLIP image encoder", "CLIP text encoder", ROOT_PART, "PPG", "SAM prompt encoder",
              "SAM projections, prompt assembly", "SAM two-way transformer", "Swin (spatial)", "class attention",
              "VLF / aggregator layout", "guidance projections", "decoder", RESIZES, OUTSIDE)


def _part_of(name: str, parent_part: str) -> str:
    return next((part for pattern, part in PARTS if re.fullmatch(pattern, name)), parent_part)


def _ranged(fn, part: str):
    """fn wrapped in a profiler range named after its part."""
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(f"part:{part}"):
            return fn(*args, **kwargs)

    return wrapper


def _attach_ranges(model: torch.nn.Module, stack: contextlib.ExitStack) -> None:
    """A profiler range named after its part around every module call (a module's own ops, and
    the methods of it that its parent calls directly, count to its part; PPG is the module
    `sam.N.ppg`), and around model.encode_image; undone by `stack`."""
    parts, handles = {}, []
    for name, module in model.named_modules():
        part = _part_of(name, parts[name.rpartition(".")[0]]) if name else ROOT_PART
        parts[name] = part
        opened: list = []

        def enter(_module, _args, _part=part, _opened=opened):
            rf = torch.profiler.record_function(f"part:{_part}")
            rf.__enter__()
            _opened.append(rf)

        def leave(_module, _args, _out, _opened=opened):
            _opened.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    stack.callback(lambda: [h.remove() for h in handles])
    stack.enter_context(mock.patch.object(model, "encode_image", _ranged(model.encode_image, "CLIP image encoder")))


def split_by_part(events, device_time: bool = False) -> dict[str, float]:
    """Milliseconds per part: each host op's own time (or, with device_time, its kernels' time) goes
    to its innermost part range; interpolation ops and everything under them go to RESIZES."""
    totals: dict[str, float] = {}
    for ev in events:
        if ev.device_type != torch.autograd.DeviceType.CPU:
            continue  # kernels are counted through the host op that launched them
        own = ev.self_device_time_total if device_time else ev.self_cpu_time_total
        if not own:
            continue
        part, node = OUTSIDE, ev
        while node is not None:
            if "upsample" in node.name:
                part = RESIZES
                break
            if node.name.startswith("part:"):
                part = node.name[len("part:"):]
                break
            node = node.cpu_parent
        totals[part] = totals.get(part, 0.0) + own / 1e3
    return totals


def _profile_job(arch: str, preset: str, t: int, protocol: str, device: str, dtype: str, warmup: int, q) -> None:
    """One profiled pass of the text encoder over T names and of the model forward, after `warmup`
    unprofiled forwards, in a child process."""
    try:
        from torch.profiler import ProfilerActivity, profile

        torch.manual_seed(0)
        model = _build(arch, preset).to(device)
        views, text = _model_inputs(model, t, VIEWS[protocol], device)
        names = [f"class {i}" for i in range(t)]
        forward = make_forward(model, device, dtype)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with torch.inference_mode():
            for _ in range(warmup):
                model.encode_text(names)  # the first call also loads the tokenizer's vocabulary
                forward(views, text)
            with contextlib.ExitStack() as stack:
                _attach_ranges(model, stack)
                with profile(activities=activities) as prof:
                    _sync(device)
                    t0 = time.perf_counter()
                    with _autocast(device, dtype), torch.profiler.record_function("part:CLIP text encoder"):
                        model.encode_text(names)
                    _sync(device)
                    t1 = time.perf_counter()
                    forward(views, text)
                    _sync(device)
                    t2 = time.perf_counter()
        device_time = device.startswith("cuda")
        q.put({"arch": arch, "preset": preset, "T": t, "protocol": protocol, "device": device, "dtype": dtype,
               "threads": torch.get_num_threads(), "time": "device (kernels)" if device_time else "host",
               "text_wall_ms": (t1 - t0) * 1e3, "forward_wall_ms": (t2 - t1) * 1e3,
               "parts_ms": split_by_part(prof.events(), device_time)})
    except Exception as e:  # noqa: BLE001
        q.put({"arch": arch, "preset": preset, "T": t, "protocol": protocol, "error": f"{type(e).__name__}: {e}"})


def bench_profile(presets, classes, protocols, device: str, dtype: str = "fp32", warmup: int = 1) -> list[dict]:
    """_profile_job for ESC-Net and CAT-Seg at every (size, T, protocol), each in a fresh process."""
    rows = []
    for preset in presets:
        for t in classes:
            for protocol in protocols:
                for arch in ("escnet", "catseg"):
                    rows.append(_in_subprocess(_profile_job, arch, preset, t, protocol, device, dtype, warmup))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def format_profile(rows: list[dict]) -> str:
    """One table per (size, T, protocol): ms and share of the profiled time per part, both models."""
    out = []
    for e, c in zip(rows[0::2], rows[1::2]):
        head = f"{e['preset']}, T = {e['T']}, {e['protocol']}"
        if "error" in e or "error" in c:
            out.append(f"profile {head}: error: {e.get('error') or c.get('error')}")
            continue
        totals = {r["arch"]: sum(r["parts_ms"].values()) for r in (e, c)}
        out += ["", f"Profile, {head}, {e['dtype']}, {e['device']} ({e['time']} time; text encoder over the T names "
                    f"+ one forward):", "",
                "| part | ESC-Net ms | ESC-Net % | CAT-Seg ms | CAT-Seg % |", "|---|---|---|---|---|"]
        for part in PART_ORDER:
            cells = []
            for r in (e, c):
                ms = r["parts_ms"].get(part)
                cells += ["-", "-"] if ms is None else [f"{ms:.1f}", f"{100 * ms / totals[r['arch']]:.1f}"]
            if cells != ["-"] * 4:
                out.append(f"| {part} | " + " | ".join(cells) + " |")
        out.append(f"| total | {totals['escnet']:.1f} | 100 | {totals['catseg']:.1f} | 100 |")
    return "\n".join(out)


def format_models(rows: list[dict]) -> str:
    lines = ["| size | T | protocol | model | params (M) | GFLOPs | latency (s) | images/s | GFLOP/s | % of matmul "
             "| peak mem (MiB) | same label as eager fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['T']} | {r['protocol']} | {r['arch']} | error: {r['error']} |"
                         + " |" * 7)
            continue
        timed = "latency_s" in r
        cells = [f"{r['latency_s']:.3f}", f"{r['images_per_s']:.3g}", f"{r['gflops_per_s']:.1f}",
                 f"{100 * r['ceiling_fraction']:.1f}", f"{r['peak_mem_MiB']:.0f}"] if timed else ["-"] * 5
        if "label_agreement" in r:
            conf = r["confident_label_agreement"]
            cells.append(f"{100 * r['label_agreement']:.2f} % (confident pixels: "
                         + ("none" if conf is None else f"{100 * conf:.2f} %") + ")")
        else:
            cells.append("-")
        lines.append(f"| {r['preset']} | {r['T']} | {r['protocol']} | {r['arch']} | {r['params_M']:.1f} | "
                     f"{r['gflops']:.4g} | " + " | ".join(cells) + " |")
    ratios = ["", "| size | T | protocol | ESC/CAT params | ESC/CAT GFLOPs | ESC/CAT latency | ESC/CAT peak mem |",
              "|---|---|---|---|---|---|---|"]
    for e, c in zip(rows[0::2], rows[1::2]):
        if "error" in e or "error" in c:
            continue
        timed = "latency_s" in e and "latency_s" in c
        lat = f"{e['latency_s'] / c['latency_s']:.2f}" if timed else "-"
        mem = f"{e['peak_mem_MiB'] / c['peak_mem_MiB']:.2f}" if timed else "-"
        ratios.append(f"| {e['preset']} | {e['T']} | {e['protocol']} | {e['params_M'] / c['params_M']:.3f} | "
                      f"{e['gflops'] / c['gflops']:.3f} | {lat} | {mem} |")
    return "\n".join(lines + ratios)
