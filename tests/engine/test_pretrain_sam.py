"""escnet pretrain-sam: SAM-style prompt sampling, and a short run that learns (CPU, tiny)."""
import pytest
import torch

from escnet.training.config import ConfigError
from escnet.training.pretrain_sam import (WEIGHTS_NAME, boxes_of, coarse_masks, corrective_points, load_config,
                                        pretrain, sample_points)
from escnet.weights.sam import load_sam_decoder_weights


def _blobs():
    t = torch.zeros(2, 32, 32, dtype=torch.bool)
    t[0, 4:12, 6:20] = True
    t[1, 20:30, 2:5] = True
    return t


def test_prompts_come_from_the_object_masks():
    t, gen = _blobs(), torch.Generator().manual_seed(0)
    for _ in range(5):
        p = sample_points(t, gen).long()  # (N, 1, 2) as (x, y)
        assert t[torch.arange(2), p[:, 0, 1], p[:, 0, 0]].all()
    assert boxes_of(t).tolist() == [[6, 4, 19, 11], [2, 20, 4, 29]]
    jittered = boxes_of(t, gen)
    assert ((jittered - boxes_of(t)).abs() <= 20).all() and not torch.equal(jittered, boxes_of(t))
    m = coarse_masks(t, grid=8)  # 4-pixel cells, upsampled to 32
    assert m.shape == (2, 1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert m[0, 0, 4:12, 8:16].all() and not m[0, 0, 20:].any()
    thin = torch.zeros(1, 32, 32, dtype=torch.bool)
    thin[0, 5, 5] = True  # covers no cell by half: the best cell is kept, never an empty mask
    assert coarse_masks(thin, grid=8).sum() == 16


def test_corrective_points_fix_the_error():
    t, gen = _blobs(), torch.Generator().manual_seed(1)
    missed = torch.zeros_like(t)  # predicted nothing: the point is in the object, foreground
    coords, labels = corrective_points(missed, t, gen)
    assert labels.flatten().tolist() == [1, 1]
    c = coords.long()
    assert t[torch.arange(2), c[:, 0, 1], c[:, 0, 0]].all()
    spilled = torch.ones_like(t)  # predicted everything: the point is outside, background
    coords, labels = corrective_points(spilled, t, gen)
    assert labels.flatten().tolist() == [0, 0]
    c = coords.long()
    assert not t[torch.arange(2), c[:, 0, 1], c[:, 0, 0]].any()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="no_such"):
        load_config(None, ["no_such=1"])
    with pytest.raises(ConfigError, match="iters must be >= 1"):
        load_config(None, ["iters=0"])
    bad = tmp_path / "c.toml"
    bad.write_text("lr = 'fast'\n")
    with pytest.raises(ConfigError, match="lr"):
        load_config(bad)


def test_short_run_lowers_the_loss_and_segments_held_out_objects(tmp_path):
    cfg = load_config(None, ["num_train_scenes=24", "num_eval_scenes=6", "batch_images=4", "objects_per_image=3",
                             "corrective_rounds=1", "iters=120", "lr=3e-3", "warmup_iters=10", "log_every=20",
                             "encoder_depth=1", f"output_dir={tmp_path}"])
    metrics = pretrain(cfg, log=lambda line: None)
    losses = [h["loss"] for h in metrics["loss"]]
    assert losses[-1] < 0.7 * losses[0]
    after, before = metrics["eval"], metrics["eval_before"]
    # 120 steps learn to follow the mask prompt (about 65 % mIoU; the whole image scores about 8 %),
    # not yet points or boxes alone
    with_mask = ("mask", "point+mask", "box+mask", "point+box+mask")
    best = max(after[k] for k in with_mask)
    assert best > 4 * after["baseline: whole image"] and best > 4 * max(before[k] for k in with_mask)
    sd = load_sam_decoder_weights(tmp_path / WEIGHTS_NAME)
    assert "transformer.layers.0.self_attn.q_proj.weight" in sd


def _tiny(tmp_path, *more):
    return load_config(None, ["num_train_scenes=8", "num_eval_scenes=2", "batch_images=2", "objects_per_image=2",
                              "corrective_rounds=1", "iters=4", "warmup_iters=1", "log_every=2",
                              "encoder_depth=1", f"output_dir={tmp_path}", *more])


def test_pretraining_runs_on_the_shared_training_loop(tmp_path, monkeypatch):
    """Tiny-SAM pretraining steps through escnet.training.loop.run_steps (one loop for every training
    program): every step and every report passes through it, with SAM's own parameter order for the clip."""
    import escnet.training.loop as loop

    calls = []
    real = loop.run_steps

    def spy(loss_of, batches, optimizer, scheduler, steps, cfg, *args, **kwargs):
        calls.append((list(steps), kwargs.get("phase"), kwargs.get("clip_params") is not None))
        return real(loss_of, batches, optimizer, scheduler, steps, cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "run_steps", spy)
    metrics = pretrain(_tiny(tmp_path), log=lambda line: None)
    assert calls == [([1, 2, 3, 4], "pretrain-sam", True)]
    assert [h["step"] for h in metrics["loss"]] == [2, 4]


def test_pretraining_stops_on_a_non_finite_loss_with_one_line(tmp_path, monkeypatch):
    """A non-finite loss stops the run with the loop's TrainingError (phase, what, step), and no weights are written."""
    import escnet.training.pretrain_sam as ps
    from escnet.training.loop import TrainingError

    real = ps.run_rounds

    def poisoned(*args, **kwargs):
        losses, outs = real(*args, **kwargs)
        return [loss * float("nan") for loss in losses], outs

    monkeypatch.setattr(ps, "run_rounds", poisoned)
    with pytest.raises(TrainingError, match=r"^pretrain-sam loss is nan at step 1; stopping$"):
        pretrain(_tiny(tmp_path), log=lambda line: None)
    assert not (tmp_path / WEIGHTS_NAME).exists()
