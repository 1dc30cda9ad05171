import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "tools" / "study_powered.py"
_spec = importlib.util.spec_from_file_location("study_powered", _PATH)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)

GROUPS = {"seen": [1, 2, 3], "unseen": [4, 5], "background": [0]}


def test_seeds_needed_iterates_n_with_t_of_n_minus_1():
    # sd 3: n = 6 gives 2.571 * 3 / sqrt(6) = 3.15 > 3, n = 7 gives 2.447 * 3 / sqrt(7) = 2.77
    assert study.seeds_needed(3.0) == 7
    diffs = [1.0, 4.0, -2.0, 5.0]  # sd 3.16: n = 7 gives 2.93, n = 6 gives 3.32
    assert study.seeds_needed(diffs) == 7
    assert study.seeds_needed([0.1, 0.2]) == 5 and study.seeds_needed(0.0) == 5  # never fewer than 5
    assert study.seeds_needed(6.0) == 18  # 2.110 * 6 / sqrt(18) = 2.98; n = 17: 2.120 * 6 / sqrt(17) = 3.09
    with pytest.raises(ValueError, match=">= 2 paired differences"):
        study.seeds_needed([1.0])
    with pytest.raises(ValueError, match="more than 200 seeds"):
        study.seeds_needed(100.0)


def _random_counts(rng, n_images, t=6):
    """Per-image confusion counts of a noisy segmenter: (N, T+1, T+1)."""
    counts = np.zeros((n_images, t + 1, t + 1), np.int64)
    for i in range(n_images):
        gt = rng.integers(0, t, 200)
        pred = np.where(rng.random(200) < 0.6, gt, rng.integers(0, t, 200))
        np.add.at(counts[i], (pred, gt), 1)
    return counts


def test_group_scores_are_what_the_evaluator_reports():
    from escnet.evaluation.evaluate import group_metrics
    from escnet.evaluation.metrics import compute_metrics

    counts = _random_counts(np.random.default_rng(0), 20).sum(0)
    counts[:, 5] = 0  # an unseen class absent from the ground truth is left out of its group
    mine = study.group_scores(counts, GROUPS)
    theirs = group_metrics(compute_metrics(counts)["per_class"], GROUPS)
    for key in ("seen_mIoU", "unseen_mIoU", "hIoU"):
        assert float(mine[key]) == pytest.approx(theirs[key], rel=1e-9)
    assert float(mine["mIoU"]) == pytest.approx(compute_metrics(counts)["mIoU"], rel=1e-9)


def test_bootstrap_sd_is_zero_for_identical_images_and_halves_with_four_times_the_images():
    rng = np.random.default_rng(1)
    same = np.repeat(_random_counts(rng, 1), 30, axis=0)
    assert study.bootstrap_sd(same, GROUPS)["seen_mIoU"] == pytest.approx(0.0, abs=1e-9)
    counts = _random_counts(rng, 40)
    small = study.bootstrap_sd(counts, GROUPS, resamples=2000)
    large = study.bootstrap_sd(np.tile(counts, (4, 1, 1)), GROUPS, resamples=2000)
    for key in ("seen_mIoU", "unseen_mIoU", "hIoU"):
        assert small[key] > 0 and large[key] == pytest.approx(small[key] / 2, rel=0.15), key
    # several checkpoints on the same images: the mean's sd, no larger than one checkpoint's
    two = study.bootstrap_sd(np.stack([counts, counts]), GROUPS, resamples=2000)
    assert two["seen_mIoU"] == pytest.approx(small["seen_mIoU"], rel=1e-9)


def _args(tmp_path, *more):
    p = study.parser()
    args = p.parse_args(["--sam", str(tmp_path / "sam.pth"), "--out", str(tmp_path / "out"), *more])
    study._absolute(args)
    return args


def test_rows_run_primary_first_seed_major_and_unknown_options_are_skipped(tmp_path, monkeypatch):
    rows = {**study.VARIANTS, "zz_future": (1, "an option yet to land", ["model.no_such_option=1"]),
            "zz_bad_value": (1, "a value this checkout refuses", ["model.mask_combine=no_such_rule"])}
    monkeypatch.setattr(study, "VARIANTS", rows)
    args = _args(tmp_path, "--seeds", "0,1")
    jobs, skipped = study.plan_jobs(args, study.available_keys())
    assert skipped["zz_future"] == ["no model.no_such_option"]
    assert "mask_combine" in skipped["zz_bad_value"][0]
    tiers = [rows[v][0] for v, _ in jobs]
    assert tiers == sorted(tiers)  # every primary job before any secondary one
    primary = [(v, s) for v, s in jobs if rows[v][0] == 1]
    assert [s for _, s in primary] == sorted(s for _, s in primary)  # seed-major
    assert {"t2a_no_sam", "t2b_random_low", "t2b_random_main", "t2c_pretrained", "t3a_point"} <= {v for v, _ in jobs}
    # Table 3 (d) is Table 2 (c)'s run: one training
    assert study.owner_of("t3d_point_mask", 0, args) == "t2c_pretrained"
    assert study.owner_of("t2b_random_main", 0, args) == "t2b_random_main"
    assert study.owner_of("zz_bad_value", 0, args) == "zz_bad_value"  # cannot be built: its own (skipped) row
    # asked for alone, Table 3 (d) still names Table 2 (c)'s folder, so the run is not trained twice
    only = _args(tmp_path, "--seeds", "0", "--rows", "t3d_point_mask")
    assert study.owner_of("t3d_point_mask", 0, only) == "t2c_pretrained"


def _fake_run(folder: Path, row: str, seed: int, values: dict, max_iters=1000, steps=None, lr=3e-3):
    """A committed <row>_seed<S>.metrics.jsonl: the training's records (its config with learning rates
    `lr` and lr / 3), then the study's (at the checkpoints the study's defaults evaluate unless `steps`
    are given)."""
    steps = steps or study.eval_steps(study.parser().parse_args([]))
    config = {"lr": lr, "low_lr": lr / 3, "max_iters": max_iters, "seed": seed}
    lines = [{"step": 0, "config": config}, {"step": max_iters, "loss": 0.1},
             {"step": max_iters, "eval": {"seen_mIoU": 1.0, "unseen_mIoU": 1.0, "hIoU": 1.0}}]
    for i, step in enumerate(steps):  # checkpoints spread around the value; their mean is the value
        jitter = (i - (len(steps) - 1) / 2) * 0.2
        ev = {k: v + jitter for k, v in values.items()}
        lines.append({"study": True, "step": step, "eval_images": study.parser().get_default("eval_images"), "eval": ev, "bootstrap_sd": {"hIoU": 0.3}})
    (folder / f"{row}_seed{seed}.metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_comparison_never_pairs_runs_of_different_recipes(tmp_path):
    committed = tmp_path / "committed"
    committed.mkdir()
    for seed in (0, 1):
        _fake_run(committed, "t2b_random_low", seed, {"seen_mIoU": 40.0 + seed, "unseen_mIoU": 9.0, "hIoU": 9.0})
        _fake_run(committed, "t2c_pretrained", seed, {"seen_mIoU": 42.0, "unseen_mIoU": 9.0, "hIoU": 9.0},
                  lr=1.5e-3 if seed == 1 else 3e-3)
    argv = ["--sam", str(tmp_path / "sam.pth"), "--seeds", "0,1", "--summarise-only",
            "--import-metrics", str(committed)]
    with pytest.raises(ValueError, match="c-b: its runs trained with different recipes"):
        study.main([*argv, "--out", str(tmp_path / "mixed")])
    # one recipe: each row names it, read from the runs' configs
    _fake_run(committed, "t2c_pretrained", 1, {"seen_mIoU": 42.0, "unseen_mIoU": 9.0, "hIoU": 9.0})
    assert study.main([*argv, "--out", str(tmp_path / "one")]) == 0
    rows = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert rows and all(r["recipe"] == {"lr": 3e-3, "low_lr": 1e-3, "max_iters": 1000} for r in rows)
    assert "lr 0.003, low_lr 0.001, max_iters 1000" in (tmp_path / "one" / "summary.md").read_text()


def test_summarise_only_reproduces_the_summary_from_committed_metrics(tmp_path):
    committed = tmp_path / "committed"
    committed.mkdir()
    b = {0: 40.0, 1: 45.0, 2: 38.0}
    c = {0: 44.0, 1: 47.0, 2: 43.0}
    a = {0: 41.0, 1: 46.0, 2: 35.0}
    for seed in (0, 1, 2):
        for row, table in (("t2b_random_low", b), ("t2c_pretrained", c), ("t2a_no_sam", a)):
            _fake_run(committed, row, seed, {"seen_mIoU": table[seed], "unseen_mIoU": table[seed] / 4,
                                             "hIoU": table[seed] / 2})
    _fake_run(committed, "t3a_point", 0, {"seen_mIoU": 1.0, "unseen_mIoU": 1.0, "hIoU": 1.0})  # one seed: no row
    argv = ["--sam", str(tmp_path / "sam.pth"), "--seeds", "0,1,2", "--summarise-only"]
    assert study.main([*argv, "--import-metrics", str(committed), "--out", str(tmp_path / "one"),
                       "--publish", str(tmp_path / "published")]) == 0
    rows = json.loads((tmp_path / "one" / "summary.json").read_text())
    cb = next(r for r in rows if r["comparison"] == "c-b" and r["metric"] == "seen_miou")
    diffs = [4.0, 2.0, 5.0]
    half = 4.303 * np.std(diffs, ddof=1) / math.sqrt(3)
    assert cb["pairs"] == 3 and cb["mean"] == pytest.approx(11 / 3, abs=1e-4)
    assert cb["ci95"] == pytest.approx([11 / 3 - half, 11 / 3 + half], abs=1e-4)
    assert {(r["comparison"], r["metric"]) for r in rows} == {
        (k, m) for k in ("c-b", "c-a", "b-a") for m in ("seen_miou", "unseen_miou", "hiou")}
    ca = next(r for r in rows if r["comparison"] == "c-a" and r["metric"] == "hiou")
    assert ca["mean"] == pytest.approx((3 + 1 + 8) / 2 / 3, abs=1e-4) and ca["primary"]
    # the published folder holds the runs again; summarising from it gives the same file
    assert sorted(p.name for p in (tmp_path / "published").glob("*.metrics.jsonl")) == sorted(
        [f"{r}_seed{s}.metrics.jsonl" for r in ("t2a_no_sam", "t2b_random_low", "t2c_pretrained") for s in (0, 1, 2)]
        + ["t3a_point_seed0.metrics.jsonl"])
    assert study.main([*argv, "--import-metrics", str(tmp_path / "published"), "--out", str(tmp_path / "two")]) == 0
    assert (tmp_path / "two" / "summary.json").read_text() == (tmp_path / "published" / "summary.json").read_text()
    # an unfinished run is refused by name
    bad = tmp_path / "bad"
    bad.mkdir()
    _fake_run(bad, "t2a_no_sam", 0, {"seen_mIoU": 1.0, "unseen_mIoU": 1.0, "hIoU": 1.0}, steps=(1000,))
    with pytest.raises(RuntimeError, match="t2a_no_sam_seed0.metrics.jsonl: not a finished run"):
        study.main([*argv, "--import-metrics", str(bad), "--out", str(tmp_path / "three")])


def test_plan_gives_the_seeds_each_comparison_needs(tmp_path):
    rows = [{"comparison": "c-b", "metric": "seen_miou", "pairs": 2, "sd": 3.0},
            {"comparison": "c-a", "metric": "seen_miou", "pairs": 2, "sd": 1.0}]
    out = study.plan(rows)
    assert [r["seeds_needed"] for r in out] == [7, 5]


def test_a_tiny_study_runs_shares_the_warm_up_and_resumes(tmp_path):
    """Two rows x two seeds of a tiny model end to end: one warm-up per seed, the study's evaluation of
    the final checkpoint equals the training's own final evaluation on the same images, a second
    invocation trains nothing."""
    from escnet.data.synthetic_grouping import prepare_synthetic_grouping

    root = tmp_path / "datasets"
    prepare_synthetic_grouping(root, workers=1, num_train=12, num_val=6, size=64)
    small = ["clip.image_size=48", "clip.patch_size=12", "model.crop_size=48", "model.window=2", "min_size_train=48",
             "clip_warmup_iters=2", "clip_warmup_batch=2", "batch_size=2", "log_every=1"]
    argv = ["--seeds", "0,1", "--rows", "t2a_no_sam,t2b_random_low", "--out", str(tmp_path / "out"),
            "--data-root", str(root), "--max-iters", "3", "--eval-every", "1", "--last-k", "2", "--eval-images", "6",
            "--single-eval-images", "6", *small]
    assert study.main(argv) == 0
    log = (tmp_path / "out" / "commands.log").read_text()
    warmups = [x for x in log.splitlines() if " start " in x and f"output_dir={tmp_path / 'out' / 'warmup'}" in x]
    assert log.count(" start ") == 6 and len(warmups) == 2  # one warm-up per seed, 4 variant runs
    for row in ("t2a_no_sam", "t2b_random_low"):
        for seed in (0, 1):
            run = tmp_path / "out" / row / f"seed{seed}"
            recs = study.study_records(run)
            assert [r["step"] for r in recs if "eval" in r] == [2, 3]
            own = study.final_eval_of(run / "metrics.jsonl", 3)
            final = next(r for r in recs if r.get("step") == 3)["eval"]
            assert final["seen_mIoU"] == pytest.approx(own["seen_mIoU"], abs=1e-9)
            assert not any("warmup_step" in json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())
    assert study.main(argv) == 0
    assert (tmp_path / "out" / "commands.log").read_text().count(" start ") == 6
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any(r["comparison"] == "b-a" and r["pairs"] == 2 for r in rows)
    # the variance report: here the study's scenes are the training's own evaluation scenes
    assert study.main([*argv, "--variance"]) == 0
    report = json.loads((tmp_path / "out" / "variance.json").read_text())
    run = report["runs"]["t2a_no_sam"]["0"]
    assert run["study_first_scenes"]["seen_miou"] == pytest.approx(run["values"]["seen_miou"]["single"], abs=1e-9)
    assert run["bootstrap_sd_single"] == run["bootstrap_sd_final"]
    assert report["rows"]["t2a_no_sam"]["seeds"] == [0, 1]
    assert report["pairs"]["t2b_random_low-t2a_no_sam"]["seeds"] == [0, 1]


def test_paired_bootstrap_sd_counts_only_what_the_two_runs_do_not_share():
    rng = np.random.default_rng(2)
    a, b = _random_counts(rng, 60), _random_counts(rng, 60)
    assert study.paired_bootstrap_sd(a, a, GROUPS)["seen_mIoU"] == pytest.approx(0.0, abs=1e-9)
    near = a.copy()
    near[0] = b[0]  # one image scored differently
    sd_a, sd_b = study.bootstrap_sd(a, GROUPS, 2000)["seen_mIoU"], study.bootstrap_sd(b, GROUPS, 2000)["seen_mIoU"]
    assert 0 < study.paired_bootstrap_sd(a, near, GROUPS, 2000)["seen_mIoU"] < sd_a / 3
    # unrelated runs on the same images: the variances add
    assert study.paired_bootstrap_sd(a, b, GROUPS, 2000)["seen_mIoU"] == pytest.approx(math.hypot(sd_a, sd_b), rel=0.2)


STUDY = Path(__file__).resolve().parents[2] / "docs" / "studies" / "table2_powered"


@pytest.mark.parametrize("folder", ["", "recipe_a"])
def test_the_committed_study_reproduces_its_summary(folder, tmp_path):
    """docs/studies/table2_powered (recipe B, Amendments 3-4) and its recipe_a/ (the recipe as first
    pre-registered): the summary computed again from the committed per-run metrics equals the
    committed summary.json, and each row names the recipe its runs trained with."""
    committed = STUDY / folder
    if not (committed / "summary.json").exists():
        pytest.skip(f"{committed} has no published summary yet")
    runs = sorted(committed.glob("*.metrics.jsonl"))
    assert runs, "a summary without the runs behind it"
    rows = {p.name.split("_seed")[0] for p in runs}
    seeds = sorted({int(p.name.split("_seed")[1].split(".")[0]) for p in runs})
    # rows whose runs are another row's (Table 3 (d) is Table 2 (c)'s run) have no file of their own
    args = _args(tmp_path)
    rows = sorted(rows | {v for v in study.VARIANTS if study.owner_of(v, seeds[0], args) in rows})
    argv = ["--import-metrics", str(committed), "--summarise-only", "--sam", str(tmp_path / "sam.pth"),
            "--seeds", ",".join(map(str, seeds)), "--rows", ",".join(rows), "--eval-images", "4000",
            "--out", str(tmp_path / "again")]
    assert study.main(argv) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again == json.loads((committed / "summary.json").read_text())
    assert any(r["comparison"] == "c-b" and r["metric"] == "seen_miou" and r["pairs"] >= 2 for r in again)
    expected_lr = {"": 1.5e-3, "recipe_a": 3e-3}[folder]
    assert {r["recipe"]["lr"] for r in again} == {expected_lr}


def test_the_study_summary_resolves_table2_on_seen_miou():
    """Issue 26's bar: in docs/studies/table2_powered/summary.json, Table 2's c-b and c-a on seen mIoU
    have >= 5 pairs and a 95 % interval of half-width <= 3 points, and the interval is the paired t
    interval of the differences it lists."""
    rows = json.loads((STUDY / "summary.json").read_text())
    for comparison in ("c-b", "c-a"):
        (r,) = [r for r in rows if r["comparison"] == comparison and r["metric"] == "seen_miou"]
        assert r["pairs"] >= 5 and len(r["diffs"]) == r["pairs"]
        assert (r["ci95"][1] - r["ci95"][0]) / 2 <= 3.0
        s = study.paired_interval([0.0] * r["pairs"], r["diffs"])
        assert s["mean"] == pytest.approx(r["mean"], abs=1e-3)
        assert [s["low"], s["high"]] == pytest.approx(r["ci95"], abs=1e-3)


def test_the_study_readme_tables_are_the_committed_runs():
    """Every generated table of docs/studies/table2_powered/README.md (per-seed values, paired
    comparisons, PPG check) is what refresh_doc writes from the committed metrics and summary.json:
    the write-up cannot drift from the data behind it."""
    readme = STUDY / "README.md"
    assert readme.read_text().count("<!-- study-table ") >= 6
    assert study.main(["--refresh-doc", str(readme), "--check"]) == 0


def test_per_seed_values_give_the_summary_differences():
    """The per-seed values the README prints (committed_values, run without --sam, where the pretrained
    rows must still be told from the random-SAM row) differ, seed by seed, exactly as summary.json's
    paired differences; a row whose runs are another row's (Table 3 (d) = Table 2 (c)) reads that row's."""
    args = study.parser().parse_args(["--refresh-doc", "x"])
    summary = json.loads((STUDY / "summary.json").read_text())
    checked = 0
    for r in summary:
        if r["metric"] != "seen_miou":
            continue
        a, b = study.COMPARISONS[r["comparison"]]
        values = study.committed_values(STUDY, [a, b], args)
        seeds = sorted(set(values[a]) & set(values[b]))
        diffs = [values[b][s]["seen_miou"] - values[a][s]["seen_miou"] for s in seeds]
        assert diffs == pytest.approx(r["diffs"], abs=1e-3), r["comparison"]
        checked += 1
    assert checked >= 5
    d = study.committed_values(STUDY, ["t3d_point_mask", "t2c_pretrained"], args)
    assert d["t3d_point_mask"] == d["t2c_pretrained"] and d["t2c_pretrained"]


def test_comparison_table_reads_partial_and_the_papers_difference():
    summary = [{"comparison": "t3d-t3b", "metric": "seen_miou", "pairs": 6, "mean": 1.0, "ci95": [-1.5, 3.5],
                "half_width": 2.5},
               {"comparison": "t3e-t3d", "metric": "seen_miou", "pairs": 6, "mean": -1.0, "ci95": [-2.5, -0.2],
                "half_width": 1.15},
               {"comparison": "t3f-t3d", "metric": "seen_miou", "pairs": 3, "mean": 0.5, "ci95": [-9.0, 10.0],
                "half_width": 9.5}]
    lines = study.comparison_table(summary, ["t3d-t3b", "t3e-t3d", "t3f-t3d", "t3d-t3c"], ["seen_miou"]).splitlines()
    assert "+8.3" in lines[2] and "interval holds 0; excludes the paper's +8.3" in lines[2]  # 41.8 - 33.5
    assert "interval < 0; holds the paper's -1.9" in lines[3]
    assert "partial (< 5 pairs), no result" in lines[4]
    assert lines[5].endswith("not run |")
    with pytest.raises(ValueError, match="unknown comparison 'nope'"):
        study.comparison_table(summary, ["nope"], ["seen_miou"])


def test_refresh_doc_rewrites_a_stale_table_and_check_fails_on_it(tmp_path, capsys):
    import shutil
    for p in STUDY.glob("t3[ab]_*_seed*.metrics.jsonl"):
        shutil.copy(p, tmp_path)
    shutil.copy(STUDY / "summary.json", tmp_path)
    md = tmp_path / "README.md"
    md.write_text("intro\n<!-- study-table seeds rows=t3a_point,t3b_box -->\n| stale |\n<!-- /study-table -->\nend\n")
    assert study.main(["--refresh-doc", str(md), "--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert study.main(["--refresh-doc", str(md)]) == 0
    text = md.read_text()
    assert "| stale |" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| seeds run | 6 | 6 |" in text
    assert study.main(["--refresh-doc", str(md), "--check"]) == 0
    with pytest.raises(SystemExit):
        study.main(["--refresh-doc", str(tmp_path / "missing.md")])


def test_seed_table_marks_collapsed_runs_and_doc_blocks_stay_in_the_study_folder(tmp_path):
    values = {"t2a_no_sam": {0: {"seen_miou": 3.6, "unseen_miou": 1.4, "hiou": 2.0, "ppg": None},
                             1: {"seen_miou": 45.0, "unseen_miou": 4.0, "hiou": 7.0, "ppg": None}},
              "t2c_pretrained": {1: {"seen_miou": 50.0, "unseen_miou": 9.0, "hiou": 15.0, "ppg": None}}}
    lines = study.seed_table(values).splitlines()
    assert lines[2] == "| 0 | **3.6 / 1.4** (collapsed) | - |"
    assert lines[3] == "| 1 | 45.0 / 4.0 | 50.0 / 9.0 |"
    assert lines[-1] == "| paper, A-150 mIoU | 24.2 | 41.8 |"
    args = study.parser().parse_args(["--refresh-doc", "x"])
    only = study.committed_values(STUDY / "recipe_a", ["t2c_pretrained"], args, seeds={4, 5})
    assert sorted(only["t2c_pretrained"]) == [4, 5] and only["t2c_pretrained"][4]["seen_miou"] < study.COLLAPSED_BELOW
    md = tmp_path / "study" / "README.md"
    md.parent.mkdir()
    md.write_text("<!-- study-table seeds rows=t2c_pretrained dir=../elsewhere -->\n<!-- /study-table -->\n")
    with pytest.raises(ValueError, match="outside"):
        study.refresh_doc(md, args)


def test_bonferroni_check_uses_the_99_percent_t_interval():
    """The pre-registered Bonferroni check (0.05 / 5): 99 % paired t intervals of the differences,
    critical values as scipy gives them."""
    st = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 11, 30, 60, 1000):
        assert study.t_critical_99(df) == pytest.approx(float(st.t.ppf(0.995, df)), abs=2e-3)
    diffs = [1.0, 2.0, 3.0, 2.5, 1.5, 2.0]
    a = [0.0] * 6
    s = study.paired_interval(a, diffs)
    summary = [{"comparison": "c-b", "metric": "seen_miou", "pairs": 6, "mean": s["mean"],
                "ci95": [s["low"], s["high"]], "diffs": diffs}]
    line = study.bonferroni_table(summary, ["c-b", "c-a"]).splitlines()
    half = float(st.t.ppf(0.995, 5)) * np.std(diffs, ddof=1) / math.sqrt(6)
    assert f"[{2.0 - half:+.2f}, {2.0 + half:+.2f}]" in line[2] and line[2].endswith("| yes (> 0) |")
    assert line[3].endswith("not run |")
