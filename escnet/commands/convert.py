"""`escnet convert`: public weights -> escnet's format (config.json + model.safetensors).

    escnet convert --catseg model_large.pth --out catseg-vitl14/
        a public CAT-Seg checkpoint, ready for `escnet segment --model catseg-vitl14/`
    escnet convert --preset vitb16 --clip ViT-B-16.pt --sam sam_vit_b_01ec64.pth --out escnet-init/
        the ESC-Net training initialisation: CLIP (OpenAI / open_clip / HF, or a CAT-Seg .pth whose
        fine-tuned CLIP is the better warm start) + SAM's decoder pieces copied into every ESC block
    escnet convert --preset vitb16 --clip clip-vitb16 --sam sam-vitb --out escnet-init/
        the same from the Hugging Face Hub: registry names (`escnet models`) or Hub ids such as
        openai/clip-vit-base-patch16 and facebook/sam-vit-base are accepted wherever a file is
"""
from __future__ import annotations

from escnet.errors import EscnetError
from escnet.models.factory import PRESETS


def run(args) -> int:
    from escnet.lifecycle import build_init, load_pretrained, save_pretrained
    from escnet.models.factory import count_parameters, make_config
    from escnet.hub import resolve_model_path, resolve_weights_path

    if args.catseg:
        if args.clip or args.sam:
            raise SystemExit("escnet convert: --catseg converts a CAT-Seg checkpoint on its own; drop --clip/--sam")
        model = load_pretrained(resolve_model_path(args.catseg))
    else:
        if not args.clip:
            raise SystemExit("escnet convert: give --catseg FILE, or --clip FILE (and --sam FILE) for an ESC-Net init")
        if not args.sam and not args.random_sam:
            raise EscnetError("an ESC-Net init needs SAM's decoder pieces: give --sam FILE, or --random-sam to "
                              "leave them randomly initialised (untrained)")
        sam = resolve_weights_path(args.sam, "sam") if args.sam else None
        model = build_init(make_config("escnet", args.preset), resolve_weights_path(args.clip, "clip"), sam)
    out = save_pretrained(model, args.out)
    print(f"wrote {model.cfg.arch} ({count_parameters(model)['total'] / 1e6:.1f} M parameters) to {out}")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("convert", help="public CAT-Seg checkpoints or CLIP + SAM files -> escnet's format")
    p.add_argument("--catseg", help="a CAT-Seg checkpoint (model_base.pth / model_large.pth) or catseg-vitb16 / catseg-vitl14")
    p.add_argument("--clip", help="CLIP weights (OpenAI .pt, open_clip, HF folder/.safetensors, a CAT-Seg .pth), "
                        "a registry name (clip-vitb16, clip-vitl14-336, catseg-vitl14) or a Hub id")
    p.add_argument("--sam", help="SAM weights (sam_vit_{b,l,h}.pth, an HF SamModel folder/.safetensors), "
                        "a registry name (sam-vitb, sam-vitl, sam-vith) or a Hub id")
    p.add_argument("--random-sam", action="store_true",
                   help="with --clip and no --sam: keep the SAM pieces randomly initialised, on purpose")
    p.add_argument("--preset", default="vitb16", choices=PRESETS, help="ESC-Net size for --clip/--sam")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)
