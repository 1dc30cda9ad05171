"""`escnet benchmark`: ESC-Net vs CAT-Seg side by side in one run.

Sections (pick with --what):
  models  parameters and forward GFLOPs (torch.utils.flop_counter on the meta device: exact and
          machine-independent) for each (size, T, protocol); latency and peak memory for the T in
          --latency-classes, each measured in a fresh subprocess so the peak RSS (CPU) / peak
          allocated (CUDA) belongs to that configuration alone.
  ppg     the batched PPG against a per-class loop of scikit-learn KMeans on the same maps.
  vocab   peak memory and time of exact all-class inference for T=150 vs T=847 with a memory budget.
  train   training steps/s and peak memory of the real training step (text tower + model + CAT-Seg's
          loss + backward + AdamW with the recipe's parameter groups) for ESC-Net and CAT-Seg at
          --train-size with --train-classes names (default ViT-B/16, COCO-Stuff's 171), per-device
          batch --train-batch (the recipe's 4 images over 4 GPUs = 1 per GPU).
Results print as a Markdown table and can be saved as JSON (--json).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time

import torch

VIEWS = {"single": 1, "sliding": 5}


def _peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(arch: str, preset: str, **overrides):
    from escnet.models.factory import create_model

    over = {"class_truncation": None} if arch == "catseg" else {}  # exact all-class scoring for both
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


def _latency_job(arch: str, preset: str, t: int, protocol: str, device: str, repeats: int, warmup: int, q) -> None:
    """Runs in a child process, so the peak memory it reports belongs to this configuration alone.
    `warmup` untimed forward passes come first (0: the first pass is timed)."""
    try:
        torch.manual_seed(0)
        model = _build(arch, preset).to(device)
        crop = model.cfg.crop_size
        views = torch.rand(VIEWS[protocol], 3, crop, crop, device=device) * 255
        text = torch.nn.functional.normalize(torch.randn(t, model.cfg.clip.embed_dim, device=device), dim=-1)
        with torch.inference_mode():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            for _ in range(warmup):
                model(views, text)
            times = []
            for _ in range(repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(views, text)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        q.put({"latency_s": min(times), "peak_mem_MiB": _peak_mib(device)})
    except Exception as e:  # noqa: BLE001 - reported in the table instead of killing the whole run
        q.put({"error": f"{type(e).__name__}: {e}"})


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


def bench_models(presets, classes, protocols, device, repeats, latency_classes=None, warmup: int = 1) -> list[dict]:
    """One row per (size, T, protocol, arch), ESC-Net and CAT-Seg adjacent. Latency and peak memory
    are measured for T in `latency_classes` (default: all of `classes`; empty: none)."""
    from escnet.models.factory import count_parameters

    latency_classes = classes if latency_classes is None else latency_classes
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
                        row.update(_in_subprocess(_latency_job, arch, preset, t, protocol, device, repeats, warmup))
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
        from escnet.engine.inference import Segmenter
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
               "peak_mem_MiB": _peak_mib(device), "class_mode": res.info.get("class_mode"),
               "class_chunk": res.info.get("class_chunk")})
    except Exception as e:  # noqa: BLE001
        q.put({"T": t, "error": f"{type(e).__name__}: {e}"})


def bench_vocab(device: str, budget_mb: int) -> list[dict]:
    rows = [_in_subprocess(_vocab_job, t, budget_mb, device) for t in (150, 847)]
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def saved_for_backward_gib(arch: str, preset: str, t: int, batch: int = 1, checkpointing: bool = False) -> float:
    """GiB of the tensors autograd keeps for the backward pass of one training forward (the
    recipe's trainable set), counted on the meta device: machine-independent, like the FLOPs.
    Each saved tensor object counts once; two views of one storage count twice, so this is an
    upper bound of the activation memory (without the transient peaks of the backward)."""
    from torch.autograd.graph import saved_tensors_hooks

    with torch.device("meta"):
        model = _build(arch, preset, grad_checkpointing=checkpointing).train().requires_grad_(True)
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
        from escnet.engine.config import TrainConfig
        from escnet.engine.train import Objective, make_optimizer

        torch.manual_seed(0)
        model = _build(arch, preset, grad_checkpointing=checkpointing).to(device).train().requires_grad_(True)
        model.set_finetune(model.cfg.clip_finetune)  # the recipe's trainable set: CLIP q/v and all of the rest
        names = benchmark_vocabulary("coco171")
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
               "peak_mem_MiB": _peak_mib(device), "trainable_M": trainable, "loss": loss.item()})
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


def _fmt_models(rows: list[dict]) -> str:
    lines = ["| size | T | protocol | model | params (M) | GFLOPs | latency (s) | peak mem (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['T']} | {r['protocol']} | {r['arch']} | error: {r['error']} | | | |")
            continue
        lat = f"{r['latency_s']:.2f}" if "latency_s" in r else "-"
        mem = f"{r['peak_mem_MiB']:.0f}" if "peak_mem_MiB" in r else "-"
        lines.append(f"| {r['preset']} | {r['T']} | {r['protocol']} | {r['arch']} | {r['params_M']:.1f} | "
                     f"{r['gflops']:.1f} | {lat} | {mem} |")
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


def run(args) -> int:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "date": time.strftime("%Y-%m-%d")}
    what = set(args.what)
    if "ppg" in what:
        out["ppg"] = bench_ppg()
        p = out["ppg"]
        print(f"PPG T={p['T']} (foreground {p['foreground_pixels_mean']:.0f} px on average, max "
              f"{p['foreground_pixels_max']}): batched {p['batched_ms']:.1f} ms, sklearn loop "
              f"{p['sklearn_loop_ms']:.1f} ms, speed-up {p['speedup']:.1f}x", flush=True)
    if "models" in what:
        out["models"] = bench_models(args.sizes, args.classes, args.protocols, device, args.repeats,
                                     args.latency_classes, args.warmup)
        print(_fmt_models(out["models"]))
    if "vocab" in what:
        out["vocab"] = bench_vocab(device, args.memory_budget)
    if "train" in what:
        out["train"] = bench_train(args.train_size, args.train_classes, args.train_batch, args.train_steps,
                                   args.warmup, device, args.train_checkpointing)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("benchmark", help="ESC-Net vs CAT-Seg: parameters, GFLOPs, latency, memory; PPG; vocabularies")
    p.add_argument("--what", nargs="+", default=["ppg", "models", "vocab"],
                   choices=["ppg", "models", "vocab", "train"], help="sections to run (train is opt-in: it is slow on a CPU)")
    p.add_argument("--sizes", nargs="+", default=["vitb16", "vitl14"], choices=["vitb16", "vitl14", "tiny"])
    p.add_argument("--classes", nargs="+", type=int, default=[20, 59, 150, 171])
    p.add_argument("--protocols", nargs="+", default=["single", "sliding"], choices=list(VIEWS))
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=1, help="timed forward passes per configuration (the best is reported)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed passes (forward for models, training steps for train) before timing (default %(default)s)")
    p.add_argument("--train-size", default="vitb16", choices=["vitb16", "vitl14", "tiny"])
    p.add_argument("--train-classes", type=int, default=171, help="class names per training step (default %(default)s)")
    p.add_argument("--train-batch", type=int, default=1, help="images per step and device (default %(default)s)")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (default %(default)s)")
    p.add_argument("--train-checkpointing", action="store_true",
                   help="train with model.grad_checkpointing on (both models): less memory, more compute")
    p.add_argument("--latency-classes", nargs="*", type=int, default=None,
                   help="measure latency and peak memory only for these T (default: every --classes value; "
                        "none: FLOPs and parameters only)")
    p.add_argument("--memory-budget", type=int, default=1024, help="MiB for the exact large-vocabulary inference")
    p.add_argument("--json", help="also write all results to this JSON file")
    p.set_defaults(func=run)
