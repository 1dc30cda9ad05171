"""The names and defaults of the inference options that the `Segmenter` takes and the commands
offer (`escnet segment`, `escnet evaluate`, `escnet demo`).

Torch-free on purpose: building the command-line parser (`escnet --help`) imports this module, not
the code that runs a model (escnet.inference.segmenter, escnet.inference.protocol, escnet.inference.text_cache).
"""
PROTOCOLS = ("sliding", "single")  # escnet.inference.protocol: CAT-Seg's sliding window, one view
RESIZE_MODES = ("official", "antialias")  # escnet.inference.protocol: model-side image downscales
CLASS_MODES = ("exact", "top256")  # every class scored, or CAT-Seg's truncation to the TOP_K best
TOP_K = 256
DEFAULT_MEMORY_BUDGET_MB = 2048
# the smallest max_side: below the model's token grid a working image carries no detail (1 x 1 was accepted)
MIN_MAX_SIDE = 16
TEXT_CACHE_ENV = "ESCNET_TEXT_CACHE"
TEXT_CACHE_HELP = (f"do not read or write the on-disk cache of text features (also {TEXT_CACHE_ENV}=0; "
                   "it lives in $ESCNET_CACHE or ~/.cache/escnet, under text_embeddings/)")
BACKENDS = ("eager", "compile")  # escnet.inference.backends: PyTorch as written, or torch.compile (inductor)
BACKEND_HELP = ("eager: PyTorch as written (default); compile: torch.compile with inductor, faster on CPU after "
                "a first image that compiles (minutes for ViT-B; cached on disk for the next run)")
