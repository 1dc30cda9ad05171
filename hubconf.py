"""torch.hub entry points for escnet's named models:

    import torch
    segmenter = torch.hub.load("<owner>/escnet", "catseg_vitl14")        # from GitHub
    segmenter = torch.hub.load("path/to/escnet", "escnet_synthetic_tiny", source="local")
    result = segmenter.segment("photo.jpg", ["cat", "sofa", "wall"])

Each entry returns an `escnet.Segmenter` for the model of the same name in escnet's registry
(`escnet models` lists them); keyword arguments go to `Segmenter.from_pretrained` (device,
protocol, ...). CAT-Seg weights are fetched from the Hugging Face Hub on first use (needs the
`huggingface_hub` package: pip install 'escnet[hub]').
"""
dependencies = ["torch", "numpy", "PIL", "safetensors"]


def _segmenter(name: str, **options):
    from escnet import Segmenter

    return Segmenter.from_pretrained(name, **options)


def escnet_synthetic_tiny(**options):
    """The bundled demonstration ESC-Net (7 MB, offline): synthetic scenes of coloured shapes only."""
    return _segmenter("escnet-synthetic-tiny", **options)


def catseg_vitb16(**options):
    """CAT-Seg ViT-B/16 trained on COCO-Stuff (the authors' checkpoint, converted on first use)."""
    return _segmenter("catseg-vitb16", **options)


def catseg_vitl14(**options):
    """CAT-Seg ViT-L/14 trained on COCO-Stuff (the authors' checkpoint, converted on first use)."""
    return _segmenter("catseg-vitl14", **options)
