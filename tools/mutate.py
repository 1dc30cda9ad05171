"""Mutation score of the test suite over escnet's core modules (docs/testing.md).

    python tools/mutate.py                      # every mutant; table on stdout
    python tools/mutate.py --report docs/testing-mutation-report.json
    python tools/mutate.py --only E1 M1         # some mutants
    python tools/mutate.py --list               # the mutants, checked against the source, nothing run

Each mutant is one plausible one-line bug (an operator below applied at one place): swap +/-, mean <-> sum
(or max), drop a normalisation, off-by-one in a slice or count, flip a comparison, change a constant, swap
arguments, drop a branch. Each is applied ALONE to a temporary copy of the repository, and the test files
that guard that module run there (`pytest -x`, one thread, `nice -n 10`, a time limit). Outcomes:
killed (a test failed), error (pytest could not run the tests: also a kill), survived (all passed),
timeout (counted as killed by most tools; reported apart here).

Some mutants are EQUIVALENT: no input can tell them from the original (e.g. a shortcut that only saves
work). They carry the reason, still run (they must survive), and are left out of the score:
score = killed / (mutants - equivalent). Target: >= 90 %.

A mutant's `find` text must occur exactly once in its file: when the code changes under it, the run
says so (status "stale") instead of silently testing nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    id: str
    file: str  # relative to the repository root
    find: str
    replace: str
    operator: str  # sign | aggregate | normalisation | off-by-one | compare | constant | swap | branch
    what: str
    tests: list[str]
    equivalent: str = ""  # the reason no input can tell it from the original
    from_issue: bool = False  # one of the bug classes issue 30 measured (its survivors marked in `what`)


CATSEG = ["tests/models/test_catseg_reference.py", "tests/models/test_catseg.py",
          "tests/test_pinned_outputs.py::test_pinned_outputs_are_reproduced"]
SWIN = CATSEG + ["tests/models/test_escnet_maths.py"]
ESCNET = ["tests/models/test_escnet_maths.py", "tests/models/test_escnet.py",
          "tests/test_pinned_outputs.py::test_pinned_outputs_are_reproduced[escnet_tiny]"]
DECODER = ["tests/models/test_decoder_reference.py"] + ESCNET
VLF = ["tests/models/test_gradcheck.py"] + ESCNET
PPG = ["tests/models/test_ppg_geometry.py", "tests/models/test_ppg.py", "tests/models/test_ppg_rules.py",
       "tests/test_pinned_outputs.py::test_pinned_outputs_are_reproduced[escnet_tiny]"]
PPG_STATS = ["tests/models/test_ppg.py", "tests/models/test_ppg_rules.py"]
PROTOCOL = ["tests/engine/test_protocol_branches.py", "tests/engine/test_protocol.py"]
METRICS = ["tests/engine/test_evaluate_ignore_labels.py", "tests/engine/test_metrics.py",
           "tests/engine/test_evaluate.py", "-k", "not torchrun"]
OUTPUTS = ["tests/engine/test_outputs.py"]
VOCAB = ["tests/data/test_vocab.py"]
COMMON = ["tests/models/test_catseg.py", "tests/test_pinned_outputs.py::test_pinned_outputs_are_reproduced",
          "tests/models/test_escnet.py"]

M = Mutant
MUTANTS = [
    # --- CAT-Seg (escnet/models/catseg.py) ---
    M("C1", "escnet/models/catseg.py", 'corr = torch.einsum("bdhw,btd->bthw", F.normalize(feats, dim=1), text)',
      'corr = torch.einsum("bdhw,btd->bthw", feats, text)', "normalisation",
      "correlation without normalising F_v (issue: CAT-Seg correlation survived)", CATSEG, from_issue=True),
    M("C2", "escnet/models/catseg.py", "text).flatten(2).amax(-1)", "text).flatten(2).mean(-1)", "aggregate",
      "truncation keeps the classes with the highest MEAN cosine, not max", CATSEG),
    M("C3", "escnet/models/catseg.py", "text = F.normalize(text_feats.to(feats.dtype), dim=-1)",
      "text = text_feats.to(feats.dtype)", "normalisation", "text features not normalised in forward", CATSEG),
    M("C4", "escnet/models/catseg.py", "logits.new_full((b, t, *size), -100.0)", "logits.new_full((b, t, *size), -10.0)",
      "constant", "truncated classes get logit -10 instead of CAT-Seg's -100", CATSEG),
    M("C5", "escnet/models/catseg.py", "num_classes > k else None", "num_classes >= k else None", "compare",
      "truncation also when T == k (the logits are the same; `truncation()` reports k, not None)", CATSEG),
    # --- Swin / class attention shared by both models (escnet/models/swin.py) ---
    M("S1", "escnet/models/swin.py", 'kv = torch.einsum("...shd,...she->...hde", phi_k, v / length)',
      'kv = torch.einsum("...shd,...she->...hde", phi_k, v)', "normalisation",
      "linear attention values not divided by S (the query still multiplies by S)", SWIN),
    M("S2", "escnet/models/swin.py", "return F.elu(x) + 1", "return F.elu(x) + 2", "constant",
      "feature map elu + 2", SWIN),
    M("S3", "escnet/models/swin.py", "bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))",
      "bands = (slice(0, -window), slice(-window, -shift + 1), slice(-shift + 1, None))", "off-by-one",
      "shifted-window mask regions off by one", SWIN),
    M("S4", "escnet/models/swin.py", "y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))",
      "y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))", "sign", "window shift not undone", SWIN),
    M("S5", "escnet/models/swin.py", "if min(h, w) <= window:", "if min(h, w) < window:", "compare",
      "a grid exactly one window wide is shifted", SWIN),
    M("S6", "escnet/models/swin.py", "return max(self.pad_len - num_classes, 0)",
      "return max(self.pad_len - num_classes - 1, 0)", "off-by-one", "one padding token too few", SWIN),
    M("S7", "escnet/models/swin.py", "return LinearAttentionState(s.kv * num_pad, s.ksum * num_pad)",
      "return LinearAttentionState(s.kv, s.ksum)", "aggregate", "padding counted once, not num_pad times", SWIN),
    M("S8", "escnet/models/swin.py", 'size=(h, w), mode="bilinear", align_corners=True)',
      'size=(h, w), mode="bilinear", align_corners=False)', "constant",
      "pooled class attention upsampled with align_corners False (CAT-Seg: True)", SWIN),
    M("S9", "escnet/models/swin.py", "guidance = self.guidance_norm(guidance.permute(0, 2, 3, 1))",
      "guidance = guidance.permute(0, 2, 3, 1)", "normalisation", "appearance guidance not layer-normed", SWIN),
    # --- ESC-Net (escnet/models/escnet.py) ---
    M("E1", "escnet/models/escnet.py", "block.merge_guidance(image, total / text.shape[0])",
      "block.merge_guidance(image, total)", "aggregate", "eq. (2) merge: sum instead of mean (issue: survived)",
      ESCNET, from_issue=True),
    M("E2", "escnet/models/escnet.py", "- self.stem.bias @ w) / w.pow(2).sum()", "- self.stem.bias @ w)",
      "normalisation", "readout without dividing by |w|^2 (issue: survived)", ESCNET, from_issue=True),
    M("E3", "escnet/models/escnet.py", "- self.stem.bias @ w) / w.pow(2).sum()", "+ self.stem.bias @ w) / w.pow(2).sum()",
      "sign", "readout adds the stem bias instead of removing it", ESCNET),
    M("E4", "escnet/models/escnet.py", 'if block == 0 or src == "initial":', 'if block >= 0 or src == "initial":',
      "compare", "every block's PPG sees C0 (no readout)", ESCNET),
    M("E5", "escnet/models/escnet.py", 'if block == 0 or src == "initial":', 'if src == "initial":', "branch",
      "block 1's PPG sees rescaled(readout(stem(C0))) instead of C0", ESCNET,
      equivalent="readout(stem(C0)) = C0 (the readout inverts the 1x1 stem; test_readout_inverts_the_stem) and "
                 "rescaling C0 to its own mean and std is the identity: the maps differ by float rounding only "
                 "(~1e-7), which can flip a threshold only at an exact tie"),
    M("E6", "escnet/models/escnet.py", 'corr = [torch.einsum("bdhw,td->bthw", unit, F.normalize(text[c], dim=-1)) for c in chunks]',
      'corr = [torch.einsum("bdhw,td->bthw", unit, text[c]) for c in chunks]', "normalisation",
      "C0 with unnormalised text", ESCNET),
    M("E7", "escnet/models/escnet.py", "h = weights.sum(1)[:, None, None] * e_lo + covered * (e_hi - e_lo)",
      "h = weights.sum(1)[:, None, None] * e_lo + covered * (e_hi + e_lo)", "sign", "dense mask prompt factorisation",
      ESCNET),
    # --- ESC-Net's side of the PPG revision: the mask prompt's logits, the rescaled readout (docs/ppg.md) ---
    M("E10", "escnet/models/escnet.py", 'else (-cfg.mask_logit, cfg.mask_logit)', 'else (cfg.mask_logit, -cfg.mask_logit)',
      "sign", "the one-mask prompt embedded with -logit on the regions and +logit off them", ESCNET),
    M("E11", "escnet/models/escnet.py", 'else (-cfg.mask_logit, cfg.mask_logit)', 'else (-1.0, 1.0)',
      "constant", "the one-mask prompt embedded at +/-1 instead of +/-mask_logit", ESCNET),
    M("E12", "escnet/models/escnet.py",
      "return (r - mu) / sd.clamp(min=1e-12) * c0.std((-2, -1), keepdim=True) + c0.mean((-2, -1), keepdim=True)",
      "return (r - mu) / sd.clamp(min=1e-12) * c0.mean((-2, -1), keepdim=True) + c0.std((-2, -1), keepdim=True)",
      "swap", "rescaled readout: C0's mean and std swapped", ESCNET),
    M("E13", "escnet/models/escnet.py", 'if src == "stem_inverse":\n            return r',
      'if src != "initial":\n            return r', "normalisation", "rescaled readout not rescaled (stem_inverse)",
      ESCNET),
    M("E14", "escnet/models/escnet.py", "mu, sd = r.mean((-2, -1), keepdim=True), r.std((-2, -1), keepdim=True)",
      "mu, sd = r.mean((-2, -1), keepdim=True), 1.0", "normalisation",
      "rescaled readout: the readout's own std not divided out", ESCNET),
    M("E8", "escnet/models/escnet.py", "q = (a.q_proj(queries + tokens) * dh ** -0.5)",
      "q = (a.q_proj(queries + tokens) * dh ** 0.5)", "constant", "attention scale in the folded SAM layer", ESCNET),
    M("E9", "escnet/models/escnet.py", "any_region = pp.valid.any(1, keepdim=True)",
      "any_region = pp.valid.all(1, keepdim=True)", "aggregate", "mask prompt only when every region is valid", ESCNET),
    # --- VLF (escnet/models/vlf.py) ---
    M("V1", "escnet/models/vlf.py", "linear_attention_query(q.unsqueeze(-3), state, num_classes)",
      "linear_attention_query(q.unsqueeze(-3), state, num_classes + 1)", "off-by-one",
      "class attention scaled by (T + 1) / T", VLF),
    M("V2", "escnet/models/vlf.py", "grad2d.sum(0).to(ctx.bias_dtype)", "grad2d.mean(0).to(ctx.bias_dtype)",
      "aggregate", "custom backward: bias gradient averaged", VLF),
    M("V3", "escnet/models/vlf.py", "grad_h = torch.ops.aten.gelu_backward((grad @ weight.to(dt)).to(h.dtype), h)",
      "grad_h = (grad @ weight.to(dt)).to(h.dtype)", "branch", "custom backward: gelu's derivative dropped", VLF),
    # --- decoder (escnet/models/decoder.py) ---
    M("D1", "escnet/models/decoder.py", 'x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)',
      'x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)', "constant",
      "decoder upsampling with align_corners True", DECODER),
    M("D2", "escnet/models/decoder.py", "y = (y.view(b, -1, *y.shape[1:]) + g.unsqueeze(1)).flatten(0, 1)",
      "y = (y.view(b, -1, *y.shape[1:]) - g.unsqueeze(1)).flatten(0, 1)", "sign", "skip part of the conv subtracted", DECODER),
    # --- PPG (escnet/models/ppg.py, ppg_stats.py): geometry, the default rule (docs/ppg.md) ---
    M("P1", "escnet/models/ppg.py", "cell = canvas_size / torch.tensor([w, h]", "cell = canvas_size / torch.tensor([h, w]",
      "swap", "point scale: height and width swapped (issue: PPG non-square survived)", PPG, from_issue=True),
    M("P2", "escnet/models/ppg.py", "sy, sx = canvas_size / h, canvas_size / w", "sy, sx = canvas_size / w, canvas_size / h",
      "swap", "box scale: height and width swapped (non-square)", PPG, from_issue=True),
    M("P3", "escnet/models/ppg.py", "fg = m > lo + alpha * (hi - lo)", "fg = m >= lo + alpha * (hi - lo)",
      "compare", "range threshold: >= instead of > (a flat map becomes all foreground)", PPG),
    M("P4", "escnet/models/ppg.py", "fg = m > lo + alpha * (hi - lo)", "fg = m > alpha * hi",
      "normalisation", "range threshold without the range (a fraction of the max)", PPG),
    M("P5", "escnet/models/ppg.py", "fg = m > lo + alpha * (hi - lo)", "fg = m > lo + alpha * hi",
      "normalisation", "range threshold: alpha times the max, not the range, above the min", PPG),
    M("P6", "escnet/models/ppg.py", "padding=kernel // 2, count_include_pad=False)",
      "padding=kernel // 2, count_include_pad=True)", "normalisation",
      "3x3 smoothing: edges averaged with zero padding", PPG),
    M("P7", "escnet/models/ppg.py", "return F.avg_pool2d(maps[:, None], kernel, stride=1, padding=kernel // 2,",
      "return F.avg_pool2d(maps[:, None], kernel + 2, stride=1, padding=kernel // 2 + 1,", "off-by-one",
      "smoothing with a (k + 2) x (k + 2) window", PPG),
    M("P8", "escnet/models/ppg.py", "if kernel <= 1:\n        return maps", "if kernel <= 3:\n        return maps",
      "branch", "the default 3x3 smoothing skipped", PPG),
    M("P9", "escnet/models/ppg.py", "if region_min > 0:  # regions", "if region_min < 0:  # regions", "branch",
      "region_min rule dropped", PPG),
    M("P10", "escnet/models/ppg.py", "valid = valid & (torch.gather(m, 1, best) >= lo + region_min * (hi - lo))",
      "valid = valid & (torch.gather(m, 1, best) < lo + region_min * (hi - lo))", "compare",
      "region_min rule inverted (keeps the noise regions)", PPG),
    M("P11", "escnet/models/ppg.py", "valid = valid & (torch.gather(m, 1, best) >= lo + region_min * (hi - lo))",
      "valid = valid & (torch.gather(m, 1, best) >= region_min * hi)", "normalisation",
      "region_min rule without the range", PPG),
    M("P12", "escnet/models/ppg.py", "nxt = torch.where(fg, min_d + tie, -1.0).argmax(-1)",
      "nxt = torch.where(fg, min_d, -1.0).argmax(-1)", "branch",
      "farthest init: ties in raster order, not by the map's value", PPG),
    M("P13", "escnet/models/ppg.py", "min_d = torch.minimum(min_d, ((coords[None] - coords[nxt][:, None]) ** 2).sum(-1))",
      "min_d = torch.maximum(min_d, ((coords[None] - coords[nxt][:, None]) ** 2).sum(-1))", "aggregate",
      "farthest init: distance to the farthest seed, not the nearest", PPG),
    M("P14", "escnet/models/ppg.py", "idx = [rank.argmax(-1)]", "idx = [fg.float().argmax(-1)]", "branch",
      "farthest init: first seed the first foreground pixel, not the most probable", PPG),
    M("P15", "escnet/models/ppg.py", "return torch.where(inside, logit, -logit).float()",
      "return torch.where(inside, -logit, logit).float()", "sign", "mask prompt: -logit on the regions", PPG + ESCNET),
    M("P16", "escnet/models/ppg.py", "return torch.where(inside, logit, -logit).float()",
      "return torch.where(inside, logit, 0.0).float()", "constant", "mask prompt: 0 (not -logit) off the regions",
      PPG + ESCNET),
    M("P17", "escnet/models/ppg.py", "masks = onehot.reshape(n, k, h, w)", "masks = onehot.reshape(n, k, w, h)",
      "swap", "region masks reshaped (w, h) on non-square maps", PPG),
    M("P18", "escnet/models/ppg.py", "valid=valid, foreground=fg.reshape(n, h, w)", "valid=valid, foreground=fg.reshape(n, w, h)",
      "swap", "foreground reshaped (w, h) on non-square maps", PPG),
    M("P19", "escnet/models/ppg.py", '"range": 0.65, "otsu"', '"range": 0.6, "otsu"', "constant",
      "the default alpha 0.6 instead of 0.65", PPG),
    M("P20", "escnet/models/ppg.py", "region_min: float = 0.68, iters: int = 10,\n                 init",
      "region_min: float = 0.7, iters: int = 10,\n                 init", "constant",
      "the generator module's default region_min 0.7", PPG),
    M("T1", "escnet/models/ppg_stats.py", "out.update(iou=mean(inter[present] / union[present])",
      "out.update(iou=mean(inter / union.clamp(min=1))", "aggregate",
      "statistics: IoU averaged over absent classes too", PPG_STATS),
    M("T2", "escnet/models/ppg_stats.py", "hit = ((hit_id[:, :, None] == obj) & valid[:, :, None]).any(1)",
      "hit = (hit_id[:, :, None] == obj).any(1)", "branch", "statistics: objects hit by invalid points", PPG_STATS),
    M("T3", "escnet/models/ppg_stats.py", "cy, cx = float(u((), (a * 0.7, gh - a * 0.7))), float(u((), (a * 0.7, gw - a * 0.7)))",
      "cy, cx = float(u((), (a * 0.7, gw - a * 0.7))), float(u((), (a * 0.7, gh - a * 0.7)))", "swap",
      "generated maps: object centres drawn with height and width swapped (non-square)", PPG_STATS),
    M("T4", "escnet/models/ppg_stats.py", "cover = F.adaptive_avg_pool2d(onehot, grid)[0] > share",
      "cover = F.adaptive_avg_pool2d(onehot, grid)[0] > 0", "constant", "grid truth: any coverage counts", PPG_STATS),
    # --- common (escnet/models/common.py) ---
    M("K1", "escnet/models/common.py", "x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std",
      "x = (images.to(self.pixel_mean.dtype) - self.pixel_mean)", "normalisation", "images not divided by CLIP's std", COMMON),
    M("K2", "escnet/models/common.py", "prompts = [self.cfg.template.format(display_name(n)) for n in class_names]",
      "prompts = [self.cfg.template.format(n) for n in class_names]", "branch", "text encoder sees all synonyms", COMMON),
    # --- protocol (escnet/inference/protocol.py, escnet/data/transforms.py) ---
    M("R1", "escnet/data/transforms.py", "rescale = max_size / max(new_h, new_w)", "rescale = max_size / min(new_h, new_w)",
      "aggregate", "long-side cap scales by the short side (issue: resize long-side cap survived)", PROTOCOL, from_issue=True),
    M("R2", "escnet/inference/protocol.py", "MAX_SIZE_FACTOR = 4", "MAX_SIZE_FACTOR = 5", "constant",
      "long-side cap 5 x 640 instead of 2560", PROTOCOL, from_issue=True),
    M("R3", "escnet/inference/protocol.py", "SLIDING_OVERLAP = 0.333", "SLIDING_OVERLAP = 0.334", "constant",
      "sliding stride 255 instead of 256", PROTOCOL),
    M("R4", "escnet/inference/protocol.py", "return (total / count + global_view) / 2", "return (total + global_view) / 2",
      "normalisation", "overlapping crops summed, not averaged", PROTOCOL),
    M("R5", "escnet/inference/protocol.py", "SIZE_DIVISIBILITY = 32  #", "SIZE_DIVISIBILITY = 16  #", "constant",
      "single view padded to a multiple of 16", PROTOCOL),
    M("R6", "escnet/inference/protocol.py", "return probs[0, :, :height, :width]", "return probs[0, :, :height, :width - 1]",
      "off-by-one", "single view crops one column too many", PROTOCOL),
    M("R7", "escnet/inference/protocol.py", 'antialias=resize == "antialias" and shrinks)', 'antialias=resize == "antialias")',
      "branch", "antialias also when enlarging", PROTOCOL),
    M("R8", "escnet/inference/protocol.py", "    if side == n:\n        return logits\n", "", "branch",
      "no shortcut when the view is already at the native side", PROTOCOL,
      equivalent="at side == n the upsampling operator is the identity and so is its pseudo-inverse: the "
                 "einsum returns the logits (float64 identity, exact)"),
    M("R9", "escnet/inference/protocol.py", "return resize_probs(logits, tuple(views.shape[-2:])).sigmoid()",
      "return resize_probs(logits.sigmoid(), tuple(views.shape[-2:]))", "swap",
      "sliding window: sigmoid before the resize (official: after)", PROTOCOL),
    M("R10", "escnet/inference/protocol.py", 'F.interpolate(eye, size=(side, 1), mode="bilinear", align_corners=False)',
      'F.interpolate(eye, size=(side, 1), mode="bilinear", align_corners=True)', "constant",
      "native-logit recovery inverts the wrong resize", PROTOCOL),
    # --- metrics and evaluation (escnet/evaluation/metrics.py, evaluate.py) ---
    M("M1", "escnet/evaluation/metrics.py", "ignored = gt_t == self.ignore_label", "ignored = gt_t == 255", "constant",
      "confusion matrix ignores 255 whatever the dataset (issue: evaluator ignore label survived)", METRICS, from_issue=True),
    M("M2", "escnet/evaluation/evaluate.py", "cm = ConfusionMatrix(dataset.num_classes, dataset.ignore_label)",
      "cm = ConfusionMatrix(dataset.num_classes, 255)", "constant", "evaluator passes 255 as the ignore label",
      METRICS, from_issue=True),
    M("M3", "escnet/evaluation/metrics.py", "union = pos_gt + pos_pred - tp", "union = pos_gt + pos_pred + tp", "sign",
      "IoU union adds the intersection", METRICS),
    M("M4", "escnet/evaluation/metrics.py", "miou_v06 = iou[in_gt].sum() / in_gt_or_pred.sum()",
      "miou_v06 = iou[in_gt].sum() / in_gt.sum()", "aggregate", "mIoU v0.6 divides by the ground-truth classes", METRICS),
    M("M5", "escnet/evaluation/metrics.py", "fwiou = (iou[in_gt] * pos_gt[in_gt] / total_gt).sum()",
      "fwiou = (iou[in_gt] * pos_pred[in_gt] / total_gt).sum()", "swap", "fwIoU weighted by predicted pixels", METRICS),
    M("M6", "escnet/evaluation/metrics.py", "counts = torch.bincount(((t + 1) * pred_t + gt_t)",
      "counts = torch.bincount((t * pred_t + gt_t)", "off-by-one", "confusion index stride T, not T + 1", METRICS),
    M("M7", "escnet/evaluation/metrics.py", "bad_gt = ~ignored & ((gt_t < 0) | (gt_t >= t))",
      "bad_gt = ~ignored & ((gt_t < 0) | (gt_t > t))", "compare", "label T accepted as a class", METRICS),
    M("M8", "escnet/evaluation/evaluate.py", "pred = np.minimum(pred, dataset.background_index)",
      "pred = np.minimum(pred, dataset.background_index - 1)", "off-by-one", "VOC-20b background folded one class early",
      METRICS),
    M("M9", "escnet/evaluation/metrics.py", "pacc = tp.sum() / total_gt", "pacc = tp.sum() / m.sum()", "swap",
      "pixel accuracy over all predictions", METRICS,
      equivalent="m is the matrix without the ignore column, so m.sum() = pos_gt.sum() = total_gt: the same number"),
    # --- outputs (escnet/inference/outputs.py) ---
    M("O1", "escnet/inference/outputs.py", "x = run - runs[i - 2] if i > 2 else run", "x = run - runs[i - 2] if i >= 2 else run",
      "compare", "COCO RLE delta coding from the 3rd run instead of the 4th", OUTPUTS),
    M("O2", "escnet/inference/outputs.py", '"bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1)',
      '"bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min())', "off-by-one", "COCO bbox one pixel narrow",
      OUTPUTS),
    M("O3", "escnet/inference/outputs.py", '"category_id": m["id"] + 1', '"category_id": m["id"]', "off-by-one",
      "COCO category ids from 0", OUTPUTS),
    M("O4", "escnet/inference/outputs.py", "        if len(runs) > 2:\n            x += runs[-2]",
      "        if len(runs) > 1:\n            x += runs[-2]", "compare", "RLE decoding undoes the delta from the 3rd run",
      OUTPUTS),
    # --- vocabulary (escnet/data/vocab.py) ---
    M("W1", "escnet/data/vocab.py", 'return entry.split(",")[0].strip()', 'return entry.split(",")[-1].strip()',
      "off-by-one", "display name = last synonym", VOCAB),
    M("W2", "escnet/data/vocab.py", "key = entry.lower()", "key = entry", "normalisation",
      "duplicate check case-sensitive", VOCAB),
    M("W3", "escnet/data/vocab.py", 'return " ".join(name.replace("\\ufeff", "").split())',
      'return name.replace("\\ufeff", "").strip()', "normalisation", "inner whitespace runs kept", VOCAB),
    M("G1", "escnet/data/vocab.py", "    if not entries:\n        raise VocabularyError(f\"empty vocabulary",
      "    if entries is not None:\n        raise VocabularyError(f\"empty vocabulary", "branch",
      "every vocabulary rejected: run against the property tests alone, whose floor must catch it (before, they "
      "returned early on any VocabularyError and passed)", ["tests/engine/test_inference_properties.py"]),
    M("W4", "escnet/data/vocab.py", 'while items and not "".join(items[-1]).strip():',
      'if items and not "".join(items[-1]).strip():', "branch", "only one trailing separator dropped", VOCAB),
]


def check(mutants: list[Mutant], root: Path) -> dict[str, str]:
    """id -> problem, for mutants whose `find` text does not occur exactly once."""
    problems = {}
    for m in mutants:
        path = root / m.file
        count = path.read_text().count(m.find) if path.exists() else 0
        if count != 1:
            problems[m.id] = f"{m.file}: the text to mutate occurs {count} times (expected once)"
    return problems


def _copy_repo(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "datasets")
    for item in REPO.iterdir():
        if item.name in (".git", ".venv", ".hypothesis", ".pytest_cache", "datasets"):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, ignore=ignore)
        else:
            shutil.copy2(item, dest / item.name)


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS",)}
    env.update(PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               CI="1")  # CI mode: a test that skips instead of running fails the run
    return env


def run_tests(root: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """-> (outcome, first failing test or error line, seconds): killed | error | survived | timeout."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout,
                              preexec_fn=lambda: os.nice(10))
    except subprocess.TimeoutExpired:
        return "timeout", "", time.monotonic() - start
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", out, re.M)
    if proc.returncode == 0:
        return "survived", "", seconds
    if proc.returncode == 1:
        return "killed", failed[0] if failed else out.strip().splitlines()[-1], seconds
    last = [line for line in out.strip().splitlines() if line.strip()]
    return "error", (failed[0] if failed else last[-1] if last else f"exit {proc.returncode}"), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants (and check them); run nothing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant's test run (default 900)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each test set")
    parser.add_argument("--report", type=Path, help="write the results as JSON here")
    parser.add_argument("--render", type=Path, nargs="+", metavar="REPORT",
                        help="print JSON report(s) as one markdown table (a later report's mutant replaces an "
                             "earlier one's; with --report also write them as one report); run nothing")
    args = parser.parse_args(argv)
    if args.render:
        report = merge_reports([json.loads(path.read_text()) for path in args.render])
        print(render(report))
        if args.report:
            args.report.write_text(json.dumps(report, indent=1) + "\n")
        return 0

    mutants = MUTANTS
    if args.only:
        unknown = set(args.only) - {m.id for m in MUTANTS}
        if unknown:
            parser.error(f"unknown mutant id(s) {', '.join(sorted(unknown))}")
        mutants = [m for m in MUTANTS if m.id in args.only]
    stale = check(mutants, REPO)
    if args.list:
        for m in mutants:
            flag = f"  STALE: {stale[m.id]}" if m.id in stale else ""
            eq = "  [equivalent]" if m.equivalent else ""
            print(f"{m.id:4} {m.operator:13} {m.file}: {m.what}{eq}{flag}")
        return int(bool(stale))

    results = []
    with tempfile.TemporaryDirectory(prefix="escnet-mutants-") as tmp:
        root = Path(tmp)
        _copy_repo(root)
        if not args.no_baseline:  # every test the selected mutants use, once, on the unmutated copy
            paths, options = [], []
            for m in mutants:
                if m.id in stale:
                    continue
                args_ = iter(m.tests)
                for a in args_:
                    if a.startswith("-"):
                        pair = [a, next(args_)]
                        options += pair if pair not in [options[i:i + 2] for i in range(0, len(options), 2)] else []
                    elif a not in paths:
                        paths.append(a)
            outcome, detail, seconds = run_tests(root, paths + options, args.timeout)
            print(f"baseline ({len(paths)} test paths): {outcome} ({seconds:.0f} s) {detail}", flush=True)
            if outcome != "survived":
                print(f"the unmutated code fails these tests ({detail}): fix that first; rerun them with "
                      f"CI=1 python -m pytest -x {' '.join(paths + options)}", file=sys.stderr)
                return 2
        for m in mutants:
            if m.id in stale:
                results.append({**asdict(m), "outcome": "stale", "detail": stale[m.id], "seconds": 0.0})
                print(f"{m.id:4} stale     {stale[m.id]}", flush=True)
                continue
            path = root / m.file
            original = path.read_text()
            path.write_text(original.replace(m.find, m.replace, 1))
            try:
                outcome, detail, seconds = run_tests(root, m.tests, args.timeout)
            finally:
                path.write_text(original)
            results.append({**asdict(m), "outcome": outcome, "detail": detail, "seconds": round(seconds, 1)})
            print(f"{m.id:4} {outcome:9} {seconds:5.0f} s  {m.what}  {detail}", flush=True)

    summary = summarise(results)
    print(format_summary(summary))
    if args.report:
        args.report.write_text(json.dumps({"summary": summary, "mutants": results}, indent=1) + "\n")
        print(f"report: {args.report}")
    return 0 if summary["score"] is not None and summary["score"] >= 0.9 and not summary["unexpected_survivors"] else 1


def summarise(results: list[dict]) -> dict:
    counted = [r for r in results if not r["equivalent"] and r["outcome"] != "stale"]
    killed = [r for r in counted if r["outcome"] in ("killed", "error")]
    return {
        "mutants": len(results),
        "equivalent": sum(bool(r["equivalent"]) for r in results),
        "equivalent_killed": [r["id"] for r in results if r["equivalent"] and r["outcome"] in ("killed", "error")],
        "stale": [r["id"] for r in results if r["outcome"] == "stale"],
        "killed": len(killed),
        "survived": [r["id"] for r in counted if r["outcome"] == "survived"],
        "timeout": [r["id"] for r in counted if r["outcome"] == "timeout"],
        "unexpected_survivors": [r["id"] for r in counted if r["outcome"] == "survived"],
        "score": len(killed) / len(counted) if counted else None,
    }


def merge_reports(reports: list[dict]) -> dict:
    """Reports of runs over parts of MUTANTS -> one report in MUTANTS' order (a later run's result for a
    mutant replaces an earlier one's), its summary recomputed."""
    by_id = {r["id"]: r for report in reports for r in report["mutants"]}
    order = {m.id: i for i, m in enumerate(MUTANTS)}
    results = sorted(by_id.values(), key=lambda r: order.get(r["id"], len(order)))
    return {"summary": summarise(results), "mutants": results}


def render(report: dict) -> str:
    """A JSON report -> markdown: one row per mutant, then the summary."""
    rows = ["| id | operator | where | mutant | outcome | first failing test / reason |", "|---|---|---|---|---|---|"]
    for r in report["mutants"]:
        outcome = r["outcome"] + (" (equivalent)" if r["equivalent"] else "")
        why = r["equivalent"] if r["equivalent"] else r["detail"]
        rows.append(f"| {r['id']} | {r['operator']} | {r['file'].removeprefix('escnet/')} | {r['what']} | {outcome} | "
                    f"{why.replace('|', '/')} |")
    return "\n".join(rows) + "\n\n" + format_summary(report["summary"])


def format_summary(s: dict) -> str:
    score = "n/a" if s["score"] is None else f"{100 * s['score']:.1f} %"
    return (f"mutants {s['mutants']}: killed {s['killed']}, survived {len(s['survived'])} {s['survived']}, "
            f"timeout {len(s['timeout'])} {s['timeout']}, equivalent {s['equivalent']} (not scored; killed anyway: "
            f"{s['equivalent_killed']}), stale {s['stale']}\nscore (killed / non-equivalent): {score}")


if __name__ == "__main__":
    sys.exit(main())
