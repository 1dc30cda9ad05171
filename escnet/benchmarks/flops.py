"""Forward cost of a model in two units, counted on the meta device (shapes only: exact, machine
independent, seconds even at ViT-L with 5 views).

- `torch`: torch.utils.flop_counter's FLOPs (2 per multiply-add, attention included).
- `paper`: the unit of ESC-Net's and CAT-Seg's tables (fvcore's conventions, which both papers'
  "GFLOPs" use): multiply-adds of mm / addmm / bmm / einsum / matmul / convolutions (transposed
  ones too), plus layer / group / batch norms (5 per element with an affine transform, 4 without),
  bilinear resizes (4 per output element), nearest resizes (1) and adaptive average pooling (1 per
  input element). Scaled dot-product attention (one op here, as it is in CAT-Seg's code with a
  current PyTorch), softmax and element-wise operations are not counted (fvcore has no handle for them).

`catseg_reference_gmacs` adds what CAT-Seg's own code does on top of escnet's CAT-Seg: its class
attention runs over all `pad_len` (256) tokens, the padding tokens included, where escnet only
folds the padding into the attention sums (the same outputs). That reproduces the 2,121.1 G that
both papers quote for CAT-Seg ViT-L/14, T = 150, 5 views.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _numel(shape) -> int:
    return math.prod(shape)


def _conv(x, w, out, transposed: bool) -> int:
    """fvcore's conv rule: batch x prod(weight shape) x prod(output spatial; input spatial if transposed)."""
    spatial = (x.shape if transposed else out.shape)[2:]
    return x.shape[0] * _numel(w.shape) * _numel(spatial)


def _norm(numel: int, affine: bool) -> int:
    return numel * (5 if affine else 4)


def _einsum(equation: str, operands) -> int:
    """fvcore's einsum rule for two operands: the product of every index size (x 1/2 when nothing is
    summed), the '...' dims broadcast."""
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for term, op in zip(lhs.split(","), operands):
        shape = list(op.shape)
        if "..." in term:
            head, tail = term.split("...")
            ell = shape[len(head):len(shape) - len(tail)]
            for i, n in enumerate(reversed(ell)):
                sizes[f"#{i}"] = max(sizes.get(f"#{i}", 1), n)
            shape = shape[:len(head)] + shape[len(shape) - len(tail):]
            term = head + tail
        for letter, n in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), n)
    summed = set("".join(lhs.split(",")).replace(".", "")) - set(rhs.replace(".", ""))
    total = _numel(sizes.values())
    return total if summed else total // 2


def _matmul(a, b) -> int:
    if a.dim() == 1 or b.dim() == 1:
        return _numel(a.shape) * (b.shape[-1] if b.dim() > 1 else 1)
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return _numel(batch) * a.shape[-2] * a.shape[-1] * b.shape[-1]


# aten op -> multiply-adds by fvcore's handles, from (args, output). A dispatch mode sees composite
# ops (linear, conv2d, einsum, matmul, layer_norm, ...) before they decompose, so they are counted
# as themselves, once, as fvcore counts them in a traced graph.
_PAPER_RULES = {
    aten.linear.default: lambda a, o: _numel(a[0].shape) * a[1].shape[0],
    aten.matmul.default: lambda a, o: _matmul(a[0], a[1]),
    aten.mm.default: lambda a, o: a[0].shape[0] * a[0].shape[1] * a[1].shape[1],
    aten.addmm.default: lambda a, o: a[1].shape[0] * a[1].shape[1] * a[2].shape[1],
    aten.bmm.default: lambda a, o: a[0].shape[0] * a[0].shape[1] * a[0].shape[2] * a[1].shape[2],
    aten.baddbmm.default: lambda a, o: a[1].shape[0] * a[1].shape[1] * a[1].shape[2] * a[2].shape[2],
    aten.einsum.default: lambda a, o: _einsum(a[0], a[1]),
    aten.conv2d.default: lambda a, o: _conv(a[0], a[1], o, False),
    aten.conv_transpose2d.input: lambda a, o: _conv(a[0], a[1], o, True),
    aten.convolution.default: lambda a, o: _conv(a[0], a[1], o, bool(a[6])),
    aten.layer_norm.default: lambda a, o: _norm(_numel(a[0].shape), len(a) > 2 and a[2] is not None),
    aten.group_norm.default: lambda a, o: _norm(_numel(a[0].shape), len(a) > 2 and a[2] is not None),
    aten.batch_norm.default: lambda a, o: _norm(_numel(a[0].shape), a[1] is not None),
    aten.upsample_bilinear2d.default: lambda a, o: 4 * _numel(o.shape),
    aten.upsample_bilinear2d.vec: lambda a, o: 4 * _numel(o.shape),
    aten._upsample_bilinear2d_aa.default: lambda a, o: 4 * _numel(o.shape),
    aten._upsample_bilinear2d_aa.vec: lambda a, o: 4 * _numel(o.shape),
    aten.upsample_nearest2d.default: lambda a, o: _numel(o.shape),
    aten.upsample_nearest2d.vec: lambda a, o: _numel(o.shape),
    aten.adaptive_avg_pool2d.default: lambda a, o: _numel(a[0].shape),
}


class PaperCounter(TorchDispatchMode):
    """Multiply-adds in the paper's unit (module docstring), in total and per module path
    (`by_module`: every enclosing module of the op, e.g. 'sam.0', 'sam.0.transformer', ...)."""

    def __init__(self, model: nn.Module | None = None):
        super().__init__()
        self.total = 0
        self.by_module: dict[str, int] = defaultdict(int)
        self._stack: list[str] = []
        self._hooks = []
        if model is not None:
            for name, module in model.named_modules():
                if name:
                    self._hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: self._enter(n)))
                    self._hooks.append(module.register_forward_hook(lambda m, a, o: self._leave()))

    def _enter(self, name: str) -> None:
        self._stack.append(name)

    def _leave(self) -> None:  # returns None: a forward hook's return value would replace the output
        self._stack.pop()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        for h in self._hooks:
            h.remove()
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = _PAPER_RULES.get(func)
        if rule is not None:
            macs = int(rule(args, out[0] if isinstance(out, (tuple, list)) else out))
            self.total += macs
            for name in set(self._stack):
                self.by_module[name] += macs
        return out


def _meta_inputs(arch: str, preset: str, t: int, views: int, **overrides):
    from escnet.models.factory import create_model

    over = {"class_truncation": None} if arch == "catseg" else {}  # exact all-class scoring for both
    with torch.device("meta"):
        model = create_model(arch, preset, **over, **overrides).eval().requires_grad_(False)
        crop = model.cfg.crop_size
        images = torch.empty(views, 3, crop, crop)
        text = torch.empty(t, model.cfg.clip.embed_dim)
    return model, images, text


def count_costs(arch: str, preset: str, t: int, views: int, **overrides) -> dict:
    """One forward on the meta device -> {'torch_gflops', 'paper_gmacs', 'paper_by_module' (GMAC per
    top-level module)}; overrides are model config fields (e.g. reading='legacy' for ESC-Net)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, images, text = _meta_inputs(arch, preset, t, views, **overrides)
    torch_counter = FlopCounterMode(display=False)
    paper = PaperCounter(model)
    with torch.inference_mode(), torch_counter, paper:
        model(images, text)
    top = {k: v / 1e9 for k, v in paper.by_module.items() if "." not in k}
    return {"torch_gflops": torch_counter.get_total_flops() / 1e9, "paper_gmacs": paper.total / 1e9,
            "paper_by_module": top}


def catseg_reference_gmacs(preset: str, t: int, views: int) -> float:
    """CAT-Seg's cost as its official code (cat_seg/modeling/transformer/model.py) runs it, in the
    paper's unit: escnet's CAT-Seg count plus what that code does and escnet does not (same outputs):
    - the class attention runs over all `pad_len` (256) tokens, padding included;
    - the Swin and class-attention q/k project concat(x, guidance) for every class (and pixel), where
      escnet projects the shared guidance once per image (per class for the text guidance);
    - its Swin window attention is explicit `q @ k^T` and `attn @ v` matmuls, which fvcore counts;
    - its decoder convolves concat(up(x), guidance) for every class, where escnet convolves the
      guidance part once per image (the conv has no bias: the two parts add up).
    """
    from escnet.models.catseg import Up
    from escnet.models.swin import ClassAttentionLayer, WindowAttention

    def run(classes: int) -> tuple[PaperCounter, nn.Module, int]:
        model, images, text = _meta_inputs("catseg", preset, classes, views)
        paper = PaperCounter(model)
        extra = [0]

        def window(module, args, out):  # x (Bg, T, nW, L, C), guidance (Bg, 1, nW, L, G) or None
            x, guidance = args[0], args[1]
            bg, tt, nw, length, c = x.shape
            extra[0] += 2 * bg * tt * nw * length * length * c  # q @ k^T and attn @ v
            if guidance is not None:
                extra[0] += 2 * bg * (tt - 1) * nw * length * guidance.shape[-1] * c  # q and k, per class

        def up(module, args, out):  # x (B, t, cin, h, w), guidance (B, g, 2h, 2w)
            x, guidance = args
            first = module.conv.double_conv[0]
            b, tt = x.shape[:2]
            k = first.kernel_size[0] * first.kernel_size[1]
            extra[0] += b * (tt - 1) * guidance.shape[-2] * guidance.shape[-1] * first.out_channels * guidance.shape[1] * k

        hooks = [m.register_forward_hook(window) for m in model.modules() if isinstance(m, WindowAttention)]
        hooks += [m.register_forward_hook(up) for m in model.modules() if isinstance(m, Up)]
        with torch.inference_mode(), paper:
            model(images, text)
        for h in hooks:
            h.remove()
        return paper, model, extra[0]

    paper, model, window_extra = run(t)
    cfg = model.cfg
    names = [n for n, m in model.named_modules() if isinstance(m, ClassAttentionLayer)]
    attention = sum(paper.by_module[n] for n in names)
    tokens = max(t, cfg.pad_len)
    if t < cfg.pad_len:
        padded, _, _ = run(cfg.pad_len)
        attention_ref = sum(padded.by_module[n] for n in names)
    else:
        attention_ref = attention
    grid = cfg.clip.image_size // cfg.clip.patch_size
    pixels = (grid // cfg.pooling_eval[0]) * (grid // cfg.pooling_eval[1])
    c, g = cfg.hidden_dim, cfg.text_guidance_proj_dim
    guidance_extra = len(names) * 2 * views * (pixels - 1) * tokens * g * c  # q and k on concat(x, text guidance)
    return (paper.total - attention + attention_ref + window_extra + guidance_extra) / 1e9
