"""`escnet info`: parameter counts per component of a preset or a saved model."""
from __future__ import annotations

from escnet.models.factory import ARCHS, PRESETS

# Paper Table 4 (ViT-L/14); CAT-Seg ViT-B counted from its public code (docs/design.md).
REFERENCE_M = {("escnet", "vitl14"): 451.3, ("catseg", "vitl14"): 433.7, ("catseg", "vitb16"): 154.3}


def run(args) -> int:
    import torch

    from escnet.lifecycle import load_pretrained
    from escnet.models.factory import count_parameters, create_model
    from escnet.hub import resolve_model_path

    rows = []
    if args.model in PRESETS:
        archs = [args.arch] if args.arch else list(ARCHS)
        for arch in archs:
            with torch.device("meta"):  # counts only: no memory, no initialisation cost
                model = create_model(arch, args.model)
            rows.append((arch, args.model, model))
    else:
        model = load_pretrained(resolve_model_path(args.model))
        rows.append((model.cfg.arch, args.model, model))
    for arch, name, model in rows:
        counts = count_parameters(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{arch} {name}")
        for comp, n in counts.items():
            print(f"  {comp:<10} {n / 1e6:10.2f} M")
        print(f"  {'trainable':<10} {trainable / 1e6:10.2f} M")
        ref = REFERENCE_M.get((arch, name))
        if ref:
            print(f"  reference  {ref:10.2f} M  (ours / reference = {counts['total'] / 1e6 / ref:.3f})")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("info", help="parameter counts per component")
    p.add_argument("--model", default="vitb16", help=f"a preset ({', '.join(PRESETS)}), a model folder / checkpoint or a named model")
    p.add_argument("--arch", choices=ARCHS, help="with a preset: only this architecture (default: both)")
    p.set_defaults(func=run)
