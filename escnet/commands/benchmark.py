"""`escnet benchmark`: ESC-Net vs CAT-Seg side by side in one run (escnet.benchmarks.benchmark).

Sections (pick with --what):
  roofline  the machine's own matrix-multiply throughput (large square torch.mm, best of a few; fp32
          and bf16), measured in the same run: the ceiling the model forwards are compared with.
  models  parameters and forward GFLOPs (torch.utils.flop_counter on the meta device: exact and
          machine-independent) for each (size, T, protocol); latency, images/s and peak memory for the
          T in --latency-classes, each measured in a fresh subprocess so the peak RSS (CPU) / peak
          allocated and reserved (CUDA) belongs to that configuration alone; achieved GFLOP/s and its
          fraction of the matmul throughput of the same dtype, measured first in the same run.
          --dtype bf16 (autocast) and --compile (torch.compile) also report how many pixels keep
          the eager fp32 label on the same input.
  profile the time of one forward (and of the text encoder over the T names) split by part: CLIP
          image and text encoders, correlation, PPG, SAM blocks, Swin, class attention, decoder,
          resizes; torch.profiler with a range per module, each op's own time counted to the
          innermost range.
  pair    ESC-Net and CAT-Seg in one process, timed in alternating rounds with the matmul ceiling
          measured again in each round (robust to a host whose speed drifts), for each --pair-modes
          mode (eager, compile, compile-freezing); the first --sizes / --classes / --protocols entry;
          --repeats rounds (at least 3), --warmup untimed calls per model first.
  ppg     the batched PPG against a per-class loop of scikit-learn KMeans on the same maps.
  vocab   peak memory and time of exact all-class inference for T=150 vs T=847 with a memory budget.
  text-cache  text features of ADE-847's 847 names at --text-cache-size (random weights): cold (key
          hashed, names encoded, file written; an empty cache folder of its own) vs warm (a new
          Segmenter, as a new process: key hashed, file read), and whether both are bitwise equal.
  batch   images/s of end-to-end Segmenter inference (a list of 480 x 640 photos, `segment(images,
          batch_size=b)`) for each --batch-sizes b, ESC-Net and CAT-Seg, the first --protocols entry;
          each in a fresh process, after --warmup untimed calls.
  train   training steps/s and peak memory of the real training step (text tower + model + CAT-Seg's
          loss + backward + AdamW with the recipe's parameter groups) for ESC-Net and CAT-Seg at
          --train-size with --train-classes names (default ViT-B/16, COCO-Stuff's 171), per-device
          batch --train-batch (the recipe's 4 images over 4 GPUs = 1 per GPU).
Without --what, a quick subset runs (QUICK: FLOPs at ViT-B/16 with T=150, and ppg; seconds) and
the command says how to ask for the full matrix (FULL: ppg, models and vocab at both sizes and four
vocabularies, over 40 minutes and about 11 GB of memory on a CPU).
Results print as a Markdown table and can be saved as JSON (--json). --threads sets the intra-op
threads once (torch.set_num_threads, and OMP_NUM_THREADS / MKL_NUM_THREADS for the subprocesses);
the default is the number of physical cores, so hyper-threads never oversubscribe the cores.
On CUDA every clock read follows torch.cuda.synchronize(), and images/s is the number of timed
images over their summed wall time after the warm-up passes (one image = all its views).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from escnet.commands.policy import fail
from escnet.inference.options import PROTOCOLS

QUICK = {"what": ["flops", "ppg"], "sizes": ["vitb16"], "classes": [150]}
FULL = {"what": ["ppg", "models", "vocab"], "sizes": ["vitb16", "vitl14"], "classes": [20, 59, 150, 171]}
FULL_COMMAND = (f"escnet benchmark --what {' '.join(FULL['what'])} --sizes {' '.join(FULL['sizes'])} "
                f"--classes {' '.join(map(str, FULL['classes']))}")
DTYPES = ("fp32", "bf16")  # escnet.benchmarks.benchmark.DTYPES's names


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: they load torch, which building the parser (`escnet --help`) must not
    import torch

    from escnet.benchmarks import benchmark as bench
    from escnet.runtime import resolve_device, set_threads

    defaults = FULL if args.what else QUICK
    if not args.what:
        print(f"quick benchmark: FLOPs at {QUICK['sizes'][0]} T={QUICK['classes'][0]} and PPG (seconds). The full "
              f"matrix takes over 40 minutes and about 11 GB of memory on a CPU; ask for it with:\n  {FULL_COMMAND}",
              file=sys.stderr, flush=True)
    sizes, classes = args.sizes or defaults["sizes"], args.classes or defaults["classes"]
    try:
        device = str(resolve_device(args.device))
        threads = set_threads(args.threads)
    except ValueError as e:
        fail(e)
    if any(b < 1 for b in args.batch_sizes) or args.batch_images < 1:
        fail(f"--batch-sizes and --batch-images must be >= 1, got {args.batch_sizes} and {args.batch_images}")
    out: dict = {"device": device, "torch": torch.__version__, "threads": threads, "dtype": args.dtype,
                 "compile": args.compile, "date": time.strftime("%Y-%m-%d")}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(device)
    what = set(args.what or defaults["what"])
    if "roofline" in what:
        out["roofline"] = bench.bench_roofline(device, tuple(bench.DTYPES), args.matmul_size)
        for r in out["roofline"]:
            if "error" not in r:
                print(f"matmul {r['dtype']} {r['size']}x{r['size']} on {device}: {r['gflops_per_s']:.1f} GFLOP/s "
                      f"({threads} threads)", flush=True)
    if "ppg" in what:
        out["ppg"] = bench.bench_ppg()
        p = out["ppg"]
        print(f"PPG T={p['T']} (foreground {p['foreground_pixels_mean']:.0f} px on average, max "
              f"{p['foreground_pixels_max']}): batched {p['batched_ms']:.1f} ms, sklearn loop "
              f"{p['sklearn_loop_ms']:.1f} ms, speed-up {p['speedup']:.1f}x", flush=True)
    if "flops" in what:
        out["flops"] = bench.bench_flops(sizes, classes, args.protocols, args.readings)
        print(bench.format_flops(out["flops"]))
    if "models" in what:
        ceiling = next((r for r in out.get("roofline", []) if r["dtype"] == args.dtype and "error" not in r), None)
        out["models"] = bench.bench_models(sizes, classes, args.protocols, device, args.repeats,
                                           args.latency_classes, args.warmup, args.dtype, args.compile, ceiling)
        print(bench.format_models(out["models"]))
    if "pair" in what:
        out["pair"] = bench.bench_pair(sizes[0], classes[0], args.protocols[0], device, args.pair_modes,
                                       max(args.repeats, 3), max(args.warmup, 1))
        print(bench.format_pair(out["pair"]))
    if "profile" in what:
        out["profile"] = bench.bench_profile(sizes, classes, args.protocols, device, args.dtype, args.warmup)
        print(bench.format_profile(out["profile"]))
    if "vocab" in what:
        out["vocab"] = bench.bench_vocab(device, args.memory_budget)
    if "batch" in what:
        out["batch"] = bench.bench_batch(sizes, classes, args.protocols[0], device, args.batch_sizes,
                                         args.batch_images, args.warmup)
        print(bench.format_batch(out["batch"]))
    if "text-cache" in what:
        r = out["text_cache"] = bench.bench_text_cache(args.text_cache_size, device=device)
        print(f"text features, {r['vocabulary']} ({r['T']} names) at {r['size']} on {device}: cold "
              f"{r['cold_s']:.2f} s, warm {r['warm_s']:.3f} s ({r['speedup']:.0f}x; bitwise equal: "
              f"{r['bitwise_equal']}; file {r['file_bytes'] / 2**20:.1f} MiB)", flush=True)
    if "train" in what:
        out["train"] = bench.bench_train(args.train_size, args.train_classes, args.train_batch, args.train_steps,
                                         args.warmup, device, args.train_checkpointing)
    if args.json:
        from escnet.fileio import atomic_write

        text = json.dumps(out, indent=2)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("benchmark", help="ESC-Net vs CAT-Seg: parameters, GFLOPs, latency against the matmul "
                                         "ceiling, per-part profile, memory; PPG; vocabularies")
    p.add_argument("--what", nargs="+", default=None,
                   choices=["flops", "roofline", "ppg", "models", "pair", "profile", "vocab", "text-cache", "train", "batch"],
                   help=f"sections to run (default: a quick {' + '.join(QUICK['what'])}; the full matrix is "
                        f"{' '.join(FULL['what'])}; train is opt-in: it is slow on a CPU)")
    p.add_argument("--sizes", nargs="+", default=None, choices=["vitb16", "vitl14", "tiny"],
                   help=f"model sizes (default: {' '.join(FULL['sizes'])}; {QUICK['sizes'][0]} without --what)")
    p.add_argument("--classes", nargs="+", type=int, default=None,
                   help=f"vocabulary sizes T (default: {' '.join(map(str, FULL['classes']))}; "
                        f"{QUICK['classes'][0]} without --what)")
    p.add_argument("--protocols", nargs="+", default=["single", "sliding"], choices=PROTOCOLS)
    p.add_argument("--readings", nargs="+", default=["paper", "efficient", "legacy"],
                   choices=["paper", "efficient", "legacy"], help="ESC-Net readings in the flops section")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default %(default)s)")
    p.add_argument("--dtype", default="fp32", choices=DTYPES,
                   help="model forwards in fp32 or under bf16 autocast (models, profile; default %(default)s)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="time torch.compile(model, backend=BACKEND) (default backend inductor) instead of eager; "
                        "give --warmup >= 1 so that compiling is not timed")
    p.add_argument("--pair-modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile", "compile-freezing"],
                   help="pair section: the forwards timed side by side (default eager compile)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: $OMP_NUM_THREADS if set, else the physical cores)")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="side of the square matrices of the roofline's torch.mm (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed forward passes per configuration: latency = the best, images/s = passes / their "
                        "summed time (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed passes (forward for models and profile, training steps for train) before timing "
                        "(default %(default)s)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4],
                   help="batch section: images per model call (default %(default)s)")
    p.add_argument("--batch-images", type=int, default=4,
                   help="batch section: photos segmented per timed run (default %(default)s)")
    p.add_argument("--train-size", default="vitb16", choices=["vitb16", "vitl14", "tiny"])
    p.add_argument("--train-classes", type=int, default=171, help="class names per training step (default %(default)s)")
    p.add_argument("--train-batch", type=int, default=1, help="images per step and device (default %(default)s)")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (default %(default)s)")
    p.add_argument("--train-checkpointing", action="store_true",
                   help="train with model.grad_checkpointing on (both models): less memory, more compute")
    p.add_argument("--latency-classes", nargs="*", type=int, default=None,
                   help="measure latency and peak memory only for these T (default: every --classes value; "
                        "none: FLOPs and parameters only)")
    p.add_argument("--text-cache-size", default="vitb16", choices=["vitb16", "vitl14", "tiny"],
                   help="model size of the text-cache section (default %(default)s)")
    p.add_argument("--memory-budget", type=int, default=1024, help="MiB for the exact large-vocabulary inference")
    p.add_argument("--json", help="also write all results to this JSON file")
    p.set_defaults(func=run)
