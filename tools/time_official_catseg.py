"""escnet's CAT-Seg vs the official CAT-Seg code (cvlab-kaist/CAT-Seg): same random weights, one
384 x 384 view, CPU forward time, and a logits parity check first. Setup and how to read the result:
docs/benchmarks/official_catseg.md.

Runs in its own virtual environment (the official code's imports: einops, timm, ftfy, regex, fvcore,
open_clip_torch), with escnet installed there too so both run under the same torch; detectron2 is
replaced by the small shim in tools/official_catseg_shim/ (only what the model path imports).

    OMP_NUM_THREADS=2 /work/catseg_venv/bin/python tools/time_official_catseg.py \
        --ref /work/catseg_ref --threads 2 --out output/official_catseg
    ... --smoke      # 1 warm-up + 1 timed pair per T: proves the harness runs, not a measurement

What happens:
1. A random CLIP ViT-B/16 checkpoint in OpenAI's TorchScript layout (the file `clip.load` reads) is
   written to the work folder; the official `clip.load("ViT-B/16")` loads it (its download function
   is pointed at that file, nothing else of `clip.load` is changed).
2. The official CATSeg is built from configs/vitb_384.yaml through its own config code
   (`add_cat_seg_config`, `merge_from_file`, the registries), with eval.sh's POOLING_SIZES [1, 1] and
   TEST.SLIDING_WINDOW False (one view). Every aggregator parameter that its default init leaves
   constant (zero padding tokens, norm weights 1 / biases 0) gets small seeded noise, so no part of
   it is an identity by construction. Its state_dict is saved as CAT-Seg saves it ({"model": sd}).
3. escnet loads that .pth through its real loader (escnet.lifecycle.load_pretrained ->
   escnet.weights.catseg.load_catseg_checkpoint); its inferred config must equal the vitb16 preset.
4. Parity per T: text features (each model's own tokenizer and text tower), the aggregator's logits
   at 96 x 96 (official: sem_seg_head's output, captured by a hook; escnet: forward(upsample=False))
   and the final 384 x 384 probabilities, on one random image. Reported as max abs differences.
5. Timing per T: text features are computed once before timing (the official predictor caches its
   text embeddings after the first eval forward; escnet gets them from encode_text once), so only
   the image forward is timed, the same steps on both sides. Official: `model([{"image", "height",
   "width"}])` in eval mode (CLIP normalisation, ImageList padding to 32, resize to 384, CLIP dense
   features, head -> 96 x 96 logits, sigmoid, sem_seg_postprocess to 384 x 384). escnet: its
   single-view protocol on the view (escnet.inference.protocol.predict_single: padding to 32,
   normalisation, CLIP, aggregator -> 96 x 96 logits, sigmoid) and `resize_probs` to 384 x 384.
   Both under torch.no_grad(), fp32, batch 1, one thread count. After `--warmup` calls of each,
   `--repeats` pairs are timed alternately (official, escnet, official, escnet ...); median seconds
   and the ratio escnet / official are reported, with each call's FLOPs (torch.utils.flop_counter)
   as a machine-independent reference.

The official predictor calls `.cuda()` on its tokens and text embeddings unconditionally; on a CPU
machine `torch.Tensor.cuda` is made a no-op only while the model is built and while its text cache
is filled (never during a timed call: there the cache answers and `.cuda()` is not reached).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
SHIM = HERE / "official_catseg_shim"
SIDE = 384  # the view: INPUT.CROP.SIZE and CLIP's input for ViT-B/16 in CAT-Seg
# OpenAI CLIP ViT-B/16 (what clip.load("ViT-B/16") reads): tower widths and depths, 224 pretraining input
VIT_B16 = dict(embed_dim=512, vision_width=768, vision_layers=12, patch=16, grid=14, context_length=77,
               vocab_size=49408, text_width=512, text_layers=12)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, type=Path, help="the official CAT-Seg source tree (with cat_seg/ and configs/)")
    p.add_argument("--ref-commit", default="6d3a188", help="its commit, recorded in the result (default: %(default)s)")
    p.add_argument("--config", default="configs/vitb_384.yaml", help="config inside --ref (default: %(default)s)")
    p.add_argument("--classes", default="7,150", help="comma-separated T values; names are ADE-150's first T (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each model per T (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed (official, escnet) pairs per T (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atol", type=float, default=1e-3, help="parity tolerance on the 96 x 96 logits (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the two ~600 MB checkpoints go (default: a temporary folder, removed afterwards)")
    p.add_argument("--out", type=Path, default=Path("output/official_catseg"), help="result.json and result.md go here")
    p.add_argument("--smoke", action="store_true", help="1 warm-up and 1 timed pair per T: proves the harness runs; not a measurement")
    args = p.parse_args(argv)
    if args.smoke:
        args.warmup, args.repeats = 1, 1
    try:
        args.classes = [int(t) for t in args.classes.split(",")]
    except ValueError:
        p.error(f"--classes must be comma-separated integers, got {args.classes!r}")
    if not all(1 <= t <= 150 for t in args.classes):
        p.error(f"--classes values must be in 1..150 (ADE-150's names), got {args.classes}")
    if args.threads < 1 or args.warmup < 0 or args.repeats < 1:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    if not (args.ref / "cat_seg" / "cat_seg_model.py").is_file():
        p.error(f"--ref {args.ref}: no cat_seg/cat_seg_model.py there (the official CAT-Seg source tree)")
    if not (args.ref / args.config).is_file():
        p.error(f"--config {args.ref / args.config}: no such file")
    return args


# --- the official code -------------------------------------------------------------------------

def import_official(ref: Path) -> types.SimpleNamespace:
    """Import the official model code with the detectron2 shim. cat_seg/__init__.py is not run (it
    registers datasets and data mappers, not part of the forward): the package is made a namespace
    over ref/cat_seg, then the modules the model needs are imported as the official code does."""
    for path in (str(SHIM), str(ref)):
        if path not in sys.path:
            sys.path.insert(0, path)
    pkg = types.ModuleType("cat_seg")
    pkg.__path__ = [str(ref / "cat_seg")]
    sys.modules["cat_seg"] = pkg
    import cat_seg.cat_seg_model  # noqa: F401  (registers CATSeg in META_ARCH_REGISTRY)
    import cat_seg.modeling  # noqa: F401  (registers CATSegHead)
    from cat_seg.config import add_cat_seg_config
    from cat_seg.third_party import clip as official_clip
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    return types.SimpleNamespace(add_cat_seg_config=add_cat_seg_config, clip=official_clip, get_cfg=get_cfg,
                                 build_model=build_model)


@contextlib.contextmanager
def cuda_calls_stay_on_cpu():
    """The official predictor calls Tensor.cuda() unconditionally (module docstring): a no-op here."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def random_clip_state(seed: int) -> dict[str, torch.Tensor]:
    """A random OpenAI CLIP ViT-B/16 state dict in OpenAI's layout (fused in_proj, plus the
    input_resolution / context_length / vocab_size entries its TorchScript files carry). Matrices
    ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2), norm weights 1 + N(0, 0.1^2): activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    c = VIT_B16
    sd: dict[str, torch.Tensor] = {}

    def mat(name, *shape):
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        sd[name] = torch.randn(*shape, generator=g) / math.sqrt(fan_in)

    def vec(name, n, base=0.0, std=0.02):
        sd[name] = base + std * torch.randn(n, generator=g)

    def norm(prefix, n):
        vec(prefix + ".weight", n, 1.0, 0.1)
        vec(prefix + ".bias", n)

    def blocks(prefix, width, layers):
        for i in range(layers):
            b = f"{prefix}.resblocks.{i}."
            mat(b + "attn.in_proj_weight", 3 * width, width)
            vec(b + "attn.in_proj_bias", 3 * width)
            mat(b + "attn.out_proj.weight", width, width)
            vec(b + "attn.out_proj.bias", width)
            norm(b + "ln_1", width)
            mat(b + "mlp.c_fc.weight", 4 * width, width)
            vec(b + "mlp.c_fc.bias", 4 * width)
            mat(b + "mlp.c_proj.weight", width, 4 * width)
            vec(b + "mlp.c_proj.bias", width)
            norm(b + "ln_2", width)

    vw, tw = c["vision_width"], c["text_width"]
    mat("visual.conv1.weight", vw, 3, c["patch"], c["patch"])
    vec("visual.class_embedding", vw, std=vw ** -0.5)
    sd["visual.positional_embedding"] = vw ** -0.5 * torch.randn(c["grid"] ** 2 + 1, vw, generator=g)
    norm("visual.ln_pre", vw)
    blocks("visual.transformer", vw, c["vision_layers"])
    norm("visual.ln_post", vw)
    mat("visual.proj", vw, c["embed_dim"])
    sd["positional_embedding"] = 0.01 * torch.randn(c["context_length"], tw, generator=g)
    sd["token_embedding.weight"] = 0.02 * torch.randn(c["vocab_size"], tw, generator=g)
    blocks("transformer", tw, c["text_layers"])
    norm("ln_final", tw)
    mat("text_projection", tw, c["embed_dim"])
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    sd["input_resolution"] = torch.tensor(c["patch"] * c["grid"])
    sd["context_length"] = torch.tensor(c["context_length"])
    sd["vocab_size"] = torch.tensor(c["vocab_size"])
    return sd


def save_torchscript_state(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Write `sd` as a TorchScript archive whose state_dict() is `sd` and whose root has the
    `input_resolution` attribute: what the official clip.load(..., jit=False) reads."""
    root = nn.Module()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value)
    torch.jit.save(torch.jit.script(root), str(path))


def build_official(off, args, clip_path: Path, workdir: Path, names: list[str]) -> nn.Module:
    """The official CATSeg from its config files, with the random CLIP checkpoint (module docstring)."""
    class_json = workdir / "classes.json"
    class_json.write_text(json.dumps(names))
    cfg = off.get_cfg()
    off.add_cat_seg_config(cfg)
    cfg.merge_from_file(str(args.ref / args.config))
    cfg.merge_from_list([
        "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(class_json),
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", str(class_json),
        "MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[1,1]",  # eval.sh
        "TEST.SLIDING_WINDOW", "False",  # one view
        "MODEL.DEVICE", "cpu",
    ])
    off.clip._download = lambda url, root=None: str(clip_path)  # clip.load's download step -> our file
    with cuda_calls_stay_on_cpu():
        model = off.build_model(cfg)
    g = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "clip_model" not in name and p.numel() > 0 and bool((p == p.flatten()[0]).all()):
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval().requires_grad_(False)


def set_official_classes(model: nn.Module, names: list[str]) -> None:
    """What a new TEST_CLASS_JSON does: the eval class list, with the text caches cleared."""
    pred = model.sem_seg_head.predictor
    pred.test_class_texts = list(names)
    pred.tokens = None
    pred.cache = None


# --- parity and timing -------------------------------------------------------------------------

def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max())


def official_single_view(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The official eval forward of one view: (3, S, S) 0..255 -> probabilities (T, S, S)."""
    return model([{"image": image, "height": SIDE, "width": SIDE}])[0]["sem_seg"]


def escnet_single_view(model: nn.Module, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """escnet's single-view protocol on one view, the same steps as the official eval forward:
    escnet.inference.protocol.predict_single (pad to a multiple of 32, CLIP input size, network at its
    native 96 x 96, sigmoid), then resize_probs to the view's size: (3, S, S) -> (T, S, S)."""
    from escnet.inference.protocol import predict_single, resize_probs

    return resize_probs(predict_single(model, image, text)[None], (SIDE, SIDE))[0]


def count_flops(fn) -> int:
    """FLOPs of one call as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def parity(official, esc, image: torch.Tensor, names: list[str]) -> tuple[dict, torch.Tensor]:
    """Fill the official text cache with one forward and compare text features, 96 x 96 logits and
    384 x 384 probabilities. Returns (report, escnet's text features)."""
    captured = []
    hook = official.sem_seg_head.register_forward_hook(lambda m, i, o: captured.append(o))
    set_official_classes(official, names)
    with torch.no_grad(), cuda_calls_stay_on_cpu():
        prob_off = official_single_view(official, image)
    hook.remove()
    text_off = official.sem_seg_head.predictor.cache[:, 0]  # (T, 1, D) -> (T, D), L2-normalised
    with torch.no_grad():
        text_esc = esc.encode_text(names)
        logits_esc = esc(image[None], text_esc, upsample=False)
        prob_esc = escnet_single_view(esc, image, text_esc)
        logits_esc_with_off_text = esc(image[None], text_off, upsample=False)
    logits_off = captured[0]
    report = {
        "T": len(names),
        "text_max_abs": max_abs(text_off, text_esc),
        "logits_max_abs": max_abs(logits_off, logits_esc),
        "logits_max_abs_same_text": max_abs(logits_off, logits_esc_with_off_text),
        "logits_abs_max": float(logits_off.abs().max()),
        "logits_std": float(logits_off.std()),
        "prob_max_abs": max_abs(prob_off, prob_esc),
        "escnet_truncation": esc.truncation(len(names)),  # None: every class scored
        "logits_shape": list(logits_off.shape),
    }
    return report, text_esc


def time_pairs(calls: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Warm up each call, then time them alternately in the dict's order, `repeats` rounds."""
    with torch.no_grad():
        for _ in range(warmup):
            for fn in calls.values():
                fn()
        times = {name: [] for name in calls}
        for _ in range(repeats):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import escnet
    from escnet.lifecycle import load_pretrained
    from escnet.models.factory import make_config

    vocab = (Path(escnet.__file__).parent / "assets" / "vocab" / "ade150.txt").read_text().splitlines()
    torch.manual_seed(args.seed)  # the official modules' default init draws from the global generator
    off = import_official(args.ref.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="official_catseg_")))
        workdir.mkdir(parents=True, exist_ok=True)
        clip_path, ckpt = workdir / "ViT-B-16-random.pt", workdir / "catseg_vitb16_random.pth"
        print(f"[1/4] random CLIP ViT-B/16 -> {clip_path}", flush=True)
        save_torchscript_state(random_clip_state(args.seed), clip_path)
        print("[2/4] official CATSeg from", args.ref / args.config, flush=True)
        official = build_official(off, args, clip_path, workdir, vocab[: max(args.classes)])
        torch.save({"model": official.state_dict()}, ckpt)
        print(f"[3/4] escnet CATSeg via load_pretrained({ckpt.name})", flush=True)
        esc = load_pretrained(ckpt).eval().requires_grad_(False)
        preset = make_config("catseg", "vitb16")
        if esc.cfg != preset:
            diff = {k: (getattr(esc.cfg, k), getattr(preset, k)) for k in preset.__dataclass_fields__
                    if getattr(esc.cfg, k) != getattr(preset, k)}
            raise SystemExit(f"escnet's config inferred from the checkpoint differs from the vitb16 preset: {diff}")

        gen = torch.Generator().manual_seed(args.seed)
        image = torch.randint(0, 256, (3, SIDE, SIDE), generator=gen).float()
        results, parity_ok = [], True
        for t in args.classes:
            names = vocab[:t]
            print(f"[4/4] T={t}: parity", flush=True)
            rep, text_esc = parity(official, esc, image, names)
            rep["parity_ok"] = rep["logits_max_abs"] <= args.atol
            parity_ok &= rep["parity_ok"]
            print("      " + json.dumps(rep), flush=True)
            calls = {"official": lambda: official_single_view(official, image),
                     "escnet": lambda: escnet_single_view(esc, image, text_esc)}
            rep.update({f"{name}_gflops": count_flops(fn) / 1e9 for name, fn in calls.items()})
            print(f"      timing: {args.warmup} warm-up + {args.repeats} alternating pairs", flush=True)
            times = time_pairs(calls, args.warmup, args.repeats)
            med = {k: statistics.median(v) for k, v in times.items()}
            rep.update({
                "official_median_s": med["official"], "escnet_median_s": med["escnet"],
                "ratio_escnet_over_official": med["escnet"] / med["official"],
                "official_s": times["official"], "escnet_s": times["escnet"],
            })
            print(f"      median official {med['official']:.3f} s, escnet {med['escnet']:.3f} s, "
                  f"ratio {rep['ratio_escnet_over_official']:.3f}", flush=True)
            results.append(rep)

    meta = {
        "date": datetime.date.today().isoformat(), "smoke": args.smoke, "cpu": cpu_name(),
        "threads": args.threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__, "python": platform.python_version(),
        "official": {"repo": "cvlab-kaist/CAT-Seg", "commit": args.ref_commit, "config": args.config,
                     "overrides": {"POOLING_SIZES": [1, 1], "SLIDING_WINDOW": False}},
        "escnet": {"path": str(Path(escnet.__file__).parent), "preset": "vitb16"},
        "view": [SIDE, SIDE], "batch": 1, "dtype": "fp32", "grad": "torch.no_grad()",
        "timed": "image forward only; text features computed once before timing (both models)",
        "warmup": args.warmup, "repeats": args.repeats, "order": "official, escnet alternately",
        "seed": args.seed, "atol": args.atol, "parity_ok": parity_ok,
    }
    (args.out / "result.json").write_text(json.dumps({**meta, "results": results}, indent=2))
    tag = " (SMOKE RUN: not a measurement)" if args.smoke else ""
    lines = [f"CAT-Seg ViT-B/16, one {SIDE}x{SIDE} view, CPU {meta['cpu']}, {args.threads} thread(s), "
             f"torch {torch.__version__}, median of {args.repeats}{tag}", "",
             "| T | official (s) | escnet (s) | escnet / official | logits max abs diff |", "|---|---|---|---|---|"]
    lines += [f"| {r['T']} | {r['official_median_s']:.3f} | {r['escnet_median_s']:.3f} | "
              f"{r['ratio_escnet_over_official']:.3f} | {r['logits_max_abs']:.2e} |" for r in results]
    (args.out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out / 'result.json'} and {args.out / 'result.md'}")
    if not parity_ok:
        print(f"PARITY FAILED: logits differ by more than --atol {args.atol} (see result.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
