"""Smoke check of the benchmark scripts (benchmarks/*.py) at the tiny preset: each one still runs
end to end through its command-line entry point and writes the JSON it promises. The figures
themselves are not checked here (they are in BENCHMARKS.md); the JSON structure and a few
invariants that any run must satisfy are.
"""
import importlib.util
import json
import math
import platform
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("table")
    methods = ["c2gr", "c2gr-njd", "c2gr-norups", "joint", "finetune"]
    result = script("method_table").main(["--quick", "--out", str(out), "--methods", *methods])
    return out, result


def test_method_table_writes_table_and_is_resumable(table, capsys):
    out, result = table
    assert set(result["methods"]) == {"c2gr", "c2gr-njd", "c2gr-norups", "joint", "finetune"}
    assert (out / "matrices.png").is_file() and (out / "summary.md").is_file()
    saved = json.loads((out / "method_table.json").read_text())
    assert len(saved["c2gr_matrix_percent"]) == 2 and saved["c2gr_matrix_percent"][0][1] is None
    assert math.isclose(saved["c2gr_over_joint_overall"],
                        saved["methods"]["c2gr"]["overall"] / saved["methods"]["joint"]["overall"])
    # A second call skips the finished runs instead of failing on the existing run directories.
    script("method_table").main(["--quick", "--out", str(out), "--methods", "finetune"])
    assert "[skip] finetune" in capsys.readouterr().out


def test_ablation_and_replay_quality_read_the_table_runs(table, tmp_path):
    out, _ = table
    runs = str(out / "runs")
    ab = script("ablation").main(["--runs", runs, "--out", str(tmp_path / "ablation.json")])
    assert set(ab["variants"]) >= {"c2gr", "c2gr-njd", "c2gr-norups", "finetune", "joint"}
    assert ab["missing"] == ["gr"]                                  # the quick table has no GR run
    assert ab["drop_without_bjd"] == ab["variants"]["c2gr"]["overall"] - ab["variants"]["c2gr-njd"]["overall"]
    assert (tmp_path / "ablation.png").is_file()
    rq = script("replay_quality").main(["--runs", runs, "--out", str(tmp_path / "rq.json")])
    assert (tmp_path / "rq.png").is_file()
    for v in rq["methods"].values():
        assert [r["task"] for r in v["per_task"]] == ["fundus-a"]   # the one past task of round 1
        assert 0.0 <= v["mean_correspondence_dsc"] <= 1.0 and v["mean_feature_fid"] >= 0.0


def test_replay_cost_compares_samplers_from_one_checkpoint(table, tmp_path):
    out, _ = table
    r = script("replay_cost").main(["--runs", str(out / "runs"), "--pairs", "2", "--tasks", "fundus-a",
                                    "--samplers", "ddpm-200", "ddpm-10", "ddim-10", "--out", str(tmp_path / "rc.json")])
    s = r["samplers"]
    assert set(s) == {"ddpm-200", "ddpm-10", "ddim-10"}
    # 200 denoiser calls cannot be faster than 10 of the same network on the same pairs.
    assert s["ddim-10"]["speedup_vs_ddpm200"] > 2
    close = {k for k in ("ddpm-10", "ddim-10")
             if 100 * (s["ddpm-200"]["correspondence_dsc"] - s[k]["correspondence_dsc"]) <= 1.0}
    assert r["fewest_ddim_steps_within_1_point_of_ddpm200"] == (10 if "ddim-10" in close else None)
    # Strided DDPM counts too: the answer is one of the 10-step samplers within a point, or none.
    assert (r["fewest_steps_within_1_point_of_ddpm200"] in close) if close else \
        r["fewest_steps_within_1_point_of_ddpm200"] is None


@pytest.mark.parametrize("spec", ["euler-10", "ddim-x", "ddpm-25-eta1", "ddim-25-eta2", "ddim-25-etax",
                                  "ddim-25-eta1-2", "ddim-25-eta-1", "ddim--eta1"])
def test_replay_cost_rejects_a_bad_sampler(table, spec):
    out, _ = table
    with pytest.raises(SystemExit, match="sampler-steps"):
        script("replay_cost").main(["--runs", str(out / "runs"), "--samplers", spec])


def test_replay_cost_refuses_one_sampler_twice(table):
    # eta 0 is the plain DDIM: both would write the same row of the results
    out, _ = table
    with pytest.raises(SystemExit, match="given twice"):
        script("replay_cost").main(["--runs", str(out / "runs"), "--samplers", "ddim-25", "ddim-25-eta0"])


def test_replay_cost_passes_each_samplers_eta_to_the_chain(table, tmp_path):
    out, _ = table
    mod = script("replay_cost")
    seen, real = [], mod.sample_pairs

    def recording(*a, **kw):
        seen.append((kw["sampler"], kw["steps"], kw["eta"]))
        return real(*a, **kw)
    mod.sample_pairs = recording
    r = mod.main(["--runs", str(out / "runs"), "--pairs", "1", "--tasks", "fundus-a",
                  "--samplers", "ddim-5", "ddim-5-eta0.5", "ddim-5-eta1", "--out", str(tmp_path / "rc.json")])
    assert seen == [("ddim", 5, 0.0), ("ddim", 5, 0.5), ("ddim", 5, 1.0)]
    assert list(r["samplers"]) == ["ddim-5", "ddim-5-eta0.5", "ddim-5-eta1"]
    assert r["run_ddim_eta"] == 0.0   # the table's run samples its replay with the preset's eta


def test_training_cost_quick(tmp_path):
    r = script("training_cost").main(["--quick", "--out", str(tmp_path / "tc.json")])
    # measured with the malloc setting of a run (training/allocator.py), where malloc is glibc's
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert r["malloc_keeps_freed_memory"] is True
    for v in r["variants"].values():
        assert v["img_per_s"] > 0 and v["flops_per_step"] > 0 and v["fraction_of_matmul_peak"] > 0
        # fp32 matmul is a true peak on any CPU (MKL/OpenBLAS): a step above it means miscounted FLOPs.
        # A bf16 matmul without native bf16 kernels can run slower than oneDNN's bf16 convolutions
        # (seen on a CI CPU: 1 GFLOP/s matmul, 2 GFLOP/s step), which the result must flag.
        if v["precision"] == "fp32":
            assert v["fraction_of_matmul_peak"] < 1
    # flagged exactly where a step's FLOP/s (FLOPs over seconds) beat the recorded matmul peak
    peaks = r["matmul_peak_flop_per_s"]
    beaten = {v["precision"] for v in r["variants"].values()
              if v["flops_per_step"] / v["sec_per_step"] > peaks[v["precision"]]}
    assert set(r["matmul_below_achieved"]) == beaten
    # the same arithmetic whichever precision runs it
    for step in ("coupled", "sequential"):
        assert len({v["flops_per_step"] for v in r["variants"].values() if v["step"] == step}) == 1
    # The coupled step does the sequential loop's work in one optimiser step: same FLOPs within 10 %
    # (the prompt graph's forward and backward is the difference).
    fl = r["variants"]
    assert math.isclose(fl["coupled_fp32_math_contiguous"]["flops_per_step"],
                        fl["sequential_fp32_math_contiguous"]["flops_per_step"], rel_tol=0.1)


def test_profile_step_quick(tmp_path):
    r = script("profile_step").main(["--quick", "--replay-pairs", "3", "--out", str(tmp_path / "p.json")])
    assert r["replay_pairs_sampled"] == 3
    assert set(r["calls"]) == {"coupled_step", "generator_step", "replay_sampling"}
    assert r["after_setup"] in ("fp32", "fp32_channels_last", "bf16")
    assert r["after_attention"] in ("math", "sdpa") and isinstance(r["after_one_forward"], bool)
    assert {"math", "sdpa", "one", "separate"} <= set(r["numerics_probe_s"]) and r["numerics_probe_wall_s"] > 0
    for call in r["calls"].values():
        for case in ("before", "after", "fixed_kernels"):
            shares = [g["share"] for g in call[case]["groups"].values()]
            assert call[case]["sec_min"] > 0 and abs(sum(shares) - 1) < 1e-6


def test_probe_cost_times_both_cases_and_restores_the_check(tmp_path, monkeypatch):
    from c2gr_core.training import numerics

    def no_bf16(device):   # a stand-in for this CPU's check, so "by_cpu" differs from "always" on any CPU
        return False

    monkeypatch.setattr(numerics, "bf16_kernels", no_bf16)
    r = script("probe_cost").main(["--quick", "--threads", "1", "--out", str(tmp_path / "p.json")])
    assert numerics.bf16_kernels is no_bf16
    assert set(r["runs"]) == {"always", "by_cpu"} and all(len(v) == 1 for v in r["runs"].values())
    assert "bf16" in r["runs"]["always"][0]["probe_s"] and "bf16" not in r["runs"]["by_cpu"][0]["probe_s"]
    assert r["bf16_kernels"] is False
    assert json.loads((tmp_path / "p.json").read_text())["wall_s_min"] == r["wall_s_min"]


def test_gen_batch_quick_counts_an_epoch_in_steps_of_each_batch(tmp_path):
    r = script("gen_batch").main(["--quick", "--pairs", "5", "--teacher-share", "--out", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text())["rows"] == r["rows"]
    plain = {r_["batch"]: r_ for r_ in r["rows"] if not r_["teacher"]}
    rows = {r_["batch"]: r_ for r_ in r["rows"] if r_["teacher"]}
    for b in (2, 4):
        assert math.isclose(plain[b]["teacher_cost"], rows[b]["sec_per_step"] / plain[b]["sec_per_step"])
        assert "teacher_cost" not in rows[b]
    assert set(rows) == {2, 4} and rows[2]["steps_per_epoch"] == 3 and rows[4]["steps_per_epoch"] == 2  # ceil(5 / b)
    for row in rows.values():
        assert math.isclose(row["sec_per_epoch"], row["steps_per_epoch"] * row["sec_per_step"])
    assert rows[2]["epoch_speedup"] == 1.0
    assert math.isclose(rows[4]["epoch_speedup"], rows[2]["sec_per_epoch"] / rows[4]["sec_per_epoch"])
    with pytest.raises(SystemExit):
        script("gen_batch").main(["--quick", "--pairs", "0", "--out", str(tmp_path / "bad.json")])
    assert not (tmp_path / "bad.json").exists()


def test_term_sampling_quick_times_both_steps_with_a_third_of_the_rows(tmp_path):
    r = script("term_sampling").main(["--quick", "--out", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text())["rows"] == r["rows"]
    rows = {(r_["term_sampling"], r_["step"]): r_ for r_ in r["rows"]}
    assert set(rows) == {(t, s) for t in ("all", "one") for s in ("coupled_step", "generator_step")}
    for step in ("coupled_step", "generator_step"):
        # B current + B replayed pairs, three rows each under "all", one under "one"
        assert rows[("all", step)]["denoiser_rows"] == 3 * rows[("one", step)]["denoiser_rows"] == 6 * r["batch"]
        assert rows[("all", step)]["speedup"] == 1.0
        assert math.isclose(rows[("one", step)]["speedup"], rows[("all", step)]["sec"] / rows[("one", step)]["sec"])
    with pytest.raises(SystemExit):
        script("term_sampling").main(["--quick", "--reps", "0", "--out", str(tmp_path / "bad.json")])
    assert not (tmp_path / "bad.json").exists()


def test_profile_step_split_times_each_change_alone(tmp_path):
    r = script("profile_step").main(["--quick", "--split", "--no-ops", "--out", str(tmp_path / "p.json")])
    singles = {"einsum_attention_only", "one_forward_only"} | ({f"{r['after_setup']}_only"} - {"fp32_only"})
    for call in r["calls"].values():
        assert set(call) - {"speedup", "speedup_over_before"} == {"before", "after", "fixed_kernels"} | singles
        assert all("groups" not in call[k] for k in singles | {"before", "after"})   # --no-ops: timed only
        for k, x in call["speedup_over_before"].items():
            assert x == pytest.approx(call["before"]["sec_min"] / call[k]["sec_min"])
        assert call["speedup"] == call["speedup_over_before"]["after"]


def test_profile_step_with_a_given_setup_probes_only_the_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # no --threads: the environment's count, not 2 (1: no oversubscription)
    r = script("profile_step").main(["--quick", "--no-ops", "--setup", "fp32_channels_last",
                                     "--out", str(tmp_path / "p.json")])
    assert r["threads"] == 1
    assert r["after_setup"] == "fp32_channels_last" and not r["setup_probed"]
    assert set(r["numerics_probe_s"]) == {"math", "sdpa", "one", "separate"}


@pytest.mark.parametrize("env, threads", [(None, 2), ("1", 1), ("4", 4), ("0", 1), ("junk", 2)])
def test_default_threads_follow_omp_num_threads(monkeypatch, env, threads):
    from benchmarks._common import default_threads
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert default_threads() == threads


def test_profile_step_repeats_the_probe_with_the_runs_allocator(tmp_path, monkeypatch):
    from c2gr_core.training import allocator
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    r = script("profile_step").main(["--quick", "--no-ops", "--setup", "fp32", "--probe-repeats", "2",
                                     "--out", str(tmp_path / "p.json")])
    assert calls == [1]   # set once, before the probe, as run_stream does
    first, second = r["probe_repeats"]
    # the first probe is the one "after" was built from, as a run would
    assert first["probe_s"] == r["numerics_probe_s"] and first["attention"] == r["after_attention"]
    assert set(second["probe_s"]) == {"math", "sdpa", "one", "separate"} and second["probe_s"] != first["probe_s"]
    script("profile_step").main(["--quick", "--no-ops", "--setup", "fp32", "--default-malloc",
                                 "--out", str(tmp_path / "d.json")])
    assert calls == [1]   # --default-malloc leaves malloc alone


def test_profile_step_refuses_a_probe_count_below_one(tmp_path):
    with pytest.raises(SystemExit):
        script("profile_step").main(["--quick", "--probe-repeats", "0", "--out", str(tmp_path / "p.json")])
    assert not (tmp_path / "p.json").exists()


def test_profile_step_refuses_a_replay_size_below_one(tmp_path):
    with pytest.raises(SystemExit):
        script("profile_step").main(["--quick", "--replay-pairs", "0", "--out", str(tmp_path / "p.json")])
    assert not (tmp_path / "p.json").exists()


def test_memory_quick(tmp_path):
    r = script("memory").main(["--quick", "--tasks", "2", "--out", str(tmp_path / "mem.json")])
    (run,) = r["runs"]
    assert run["n_tasks"] == 2 and run["peak_rss_mib"] >= run["rss_after_imports_mib"] > 50


def test_memory_steps_quick(tmp_path):
    r = script("memory").main(["--steps", "--quick", "--out", str(tmp_path / "mem.json")])
    rows = {(s["call"], s["bf16"]): s for s in r["steps"]}
    assert set(rows) == {("generator", False), ("sampling", True)}   # --quick: one per call kind, both precisions
    assert rows[("generator", False)]["saved_for_backward_mib"] > 0
    assert rows[("sampling", True)]["saved_for_backward_mib"] == 0   # no graph is built while sampling


def test_generator_recipes_quick(tmp_path):
    out = tmp_path / "gr.json"
    r = script("generator_recipes").main(["--preset", "tiny", "--tasks", "fundus-a", "--recipes", "eps/uniform",
                                          "v/min_snr", "--objectives", "bjd", "--steps", "2", "4", "--pairs", "4",
                                          "--ref-steps", "2", "--out", str(out)])
    assert [(row["recipe"], [c["steps"] for c in row["checkpoints"]]) for row in r["rows"]] == \
        [("eps/uniform", [2, 4]), ("v/min_snr", [2, 4])]
    for row in r["rows"]:
        for c in row["checkpoints"]:
            for w in ("raw", "ema"):
                assert 0 <= c[w]["corr_dsc"] <= 1 and c[w]["feature_fid"] >= 0 and c[w]["copy_ratio"] > 0
                assert math.isclose(sum(c[w]["label_fractions"]), 1.0, rel_tol=1e-3)
    # uniform noise lies farther from the training images than real test images do
    assert r["noise"]["fundus-a"]["copy_ratio"] > 1
    assert "fundus-a" in r["noise"] and (tmp_path / "gr.png").is_file()
    # finished rows are skipped on a second call
    again = script("generator_recipes").main(["--preset", "tiny", "--tasks", "fundus-a", "--recipes", "eps/uniform",
                                              "--objectives", "bjd", "--steps", "2", "--pairs", "4",
                                              "--ref-steps", "2", "--out", str(out)])
    assert len(again["rows"]) == 2


def test_generator_recipes_seed_changes_the_generator_not_the_ruler(tmp_path):
    args = ["--preset", "tiny", "--tasks", "fundus-a", "--recipes", "v/min_snr", "--objectives", "bjd", "--steps", "2",
            "--pairs", "4", "--ref-steps", "2"]
    runs = {s: script("generator_recipes").main(args + ["--seed", str(s), "--out", str(tmp_path / f"s{s}.json")])
            for s in (0, 1)}
    assert [runs[s]["config"]["seed"] for s in (0, 1)] == [0, 1]
    # one ruler: the reference segmentor does not depend on the generator's seed
    assert runs[0]["references"]["fundus-a"]["test_dsc"] == runs[1]["references"]["fundus-a"]["test_dsc"]
    scores = [runs[s]["rows"][0]["checkpoints"][0]["raw"] for s in (0, 1)]
    assert scores[0]["feature_fid"] != scores[1]["feature_fid"]
    with pytest.raises(SystemExit, match="--seed"):
        script("generator_recipes").main(args + ["--set", "train.seed=1", "--out", str(tmp_path / "x.json")])


def test_generator_recipes_attention_kernel_is_honoured(tmp_path, monkeypatch):
    from c2gr_core.diffusion import samplers
    seen = []
    real = samplers.reverse_chain

    def spy(denoiser, *a, **k):
        seen.append({m.use_flash_attention for m in denoiser.modules() if hasattr(m, "use_flash_attention")})
        return real(denoiser, *a, **k)

    monkeypatch.setattr(samplers, "reverse_chain", spy)
    args = ["--preset", "tiny", "--tasks", "fundus-a", "--recipes", "v/min_snr", "--objectives", "bjd", "--steps", "2",
            "--pairs", "2", "--ref-steps", "2"]
    for kind, flash in (("sdpa", True), ("math", False)):
        seen.clear()
        r = script("generator_recipes").main(args + ["--attention", kind, "--out", str(tmp_path / f"{kind}.json")])
        assert r["config"]["attention"] == kind
        assert seen and all(s == {flash} for s in seen)   # raw and EMA weights alike
    with pytest.raises(SystemExit):
        script("generator_recipes").main(args + ["--attention", "flash", "--out", str(tmp_path / "x.json")])


RECIPE_NAMES = ["eps/uniform", "eps/min_snr", "v/uniform", "v/min_snr"]


@pytest.mark.parametrize("n_tasks, n_rows", [(1, 2), (1, 8), (4, 8)])
def test_generator_recipes_legend_fits_the_figure(n_tasks, n_rows):
    """The legend under the panels must lie inside the figure whatever the number of panels (with one
    panel and six columns it used to be cropped at both sides)."""
    cell = {"corr_dsc": 0.5}
    rows = [{"task": f"t{i}", "objective": ("bjd", "njd")[j % 2], "recipe": RECIPE_NAMES[(j // 2) % 4],
             "checkpoints": [{"steps": s, "raw": cell, "ema": cell} for s in (200, 600)]}
            for i in range(n_tasks) for j in range(n_rows)]
    result = {"rows": rows, "noise": {f"t{i}": {"corr_dsc": 0.1} for i in range(n_tasks)},
              "references": {f"t{i}": {"test_dsc": 0.9} for i in range(n_tasks)}}
    fig = script("generator_recipes").figure(result)
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert 0 <= legend.x0 and legend.x1 <= fig.bbox.width and 0 <= legend.y0
    axes_bottom = min(ax.get_tightbbox().y0 for ax in fig.axes)
    assert legend.y1 <= axes_bottom + 1   # below the panels' tick labels, not over them


def test_replay_drift_reads_every_round_of_a_run(table, tmp_path):
    out, _ = table
    r = script("replay_drift").main([str(out / "runs" / "c2gr-s0"), "--ref-steps", "2",
                                     "--out", str(tmp_path / "drift.json")])
    (run,) = r["runs"].values()
    assert run["drift"][0] == [None, None] and 0 <= run["drift"][1][0] <= 1 and run["drift"][1][1] is None


def test_prompt_drift_crosses_weights_and_prompts_of_every_round(tmp_path):
    from c2gr_core.experiment.runner import run_stream
    mt = script("method_table")
    run = tmp_path / "run"
    # keep_checkpoints="all": the factorial needs round 0's weights and prompts as well as round 1's
    cfg = mt.bench_config(True, 0)
    cfg.diffusion.replay_target, cfg.diffusion.teacher_weighting, cfg.diffusion.teacher_scale = "teacher", "uniform", 0.5
    run_stream(mt.QUICK_STREAM, "c2gr", cfg, run, progress=False, keep_checkpoints="all")
    r = script("prompt_drift").main([str(run), "--n", "4", "--ref-steps", "2", "--out", str(tmp_path / "pd.json")])
    assert set(r["correspondence"]) == {"w0_p0", "w1_p0", "w1_p1"}
    assert all(0 <= v <= 1 for v in r["correspondence"].values())
    for shares in r["named_as"].values():          # every generated image is named as one task of the stream
        assert set(shares) == {"fundus-a", "mms-a"} and math.isclose(sum(shares.values()), 1.0)
    (moved,) = r["departure_by_timestep"].values()   # round 1's weights against round 0's
    assert [row["k"] for row in moved] == list(script("prompt_drift").TIMESTEPS)
    assert all(row["image"] > 0 and row["mask"] > 0 and 0 <= row["loss_weight"] for row in moved)
    # the weight that keeps the past task after its round is the distillation rows': uniform x 0.5 at every k
    assert [row["distil_weight"] for row in moved] == pytest.approx([0.5] * len(moved))
    cos = r["prompt_cosine"]
    assert math.isclose(cos["after_round_0"]["with_own_round"], 1.0, rel_tol=1e-5)
    assert set(cos["after_round_1"]) == {"with_own_round", "with_mms-a"}
    with pytest.raises(SystemExit, match="--task 1"):     # the last task has no replay to follow
        script("prompt_drift").main([str(run), "--task", "1", "--out", str(tmp_path / "x.json")])


def test_foreground_share_of_replay_and_segmentor(table, tmp_path):
    out, _ = table
    r = script("foreground_share").main([str(out / "runs" / "c2gr-s0"), "--out", str(tmp_path / "fg.json")])
    (run,) = r["runs"].values()
    assert run["replay_share"][0] == [None, None] and run["replay_share"][1][1] is None
    assert 0 <= run["replay_share"][1][0] <= 1 and all(0 < s < 1 for s in run["train_share"])
    last = run["segmentor"][1]                       # the run keeps its last round's checkpoint
    assert set(last) == set(run["tasks"])
    assert all(0 <= v <= 1 for scores in last.values() for v in scores.values())
    assert json.loads((tmp_path / "fg.json").read_text())["runs"].keys() == r["runs"].keys()


def test_foreground_share_pixel_scores_hand_worked():
    import numpy as np
    pred = np.array([[2, 1, 0, 0], [0, 0, 0, 0]])     # 2 predicted, 1 of them right
    true = np.array([[1, 0, 0, 0], [0, 0, 0, 3]])     # 2 true
    s = script("foreground_share").pixel_scores(pred, true)
    assert s == {"pred_share": 0.25, "true_share": 0.25, "precision": 0.5, "recall": 0.5}


def test_mask_source_relabels_c2gr_replay_with_the_segmentor(table, tmp_path):
    out, _ = table
    r = script("mask_source").main(["--quick", "--runs", str(out / "runs"), "--out", str(tmp_path)])
    assert set(r["rows"]) == {"c2gr-relabel", "c2gr", "gr"} - {"gr"}   # the quick table has no GR run
    assert 0.0 <= r["rows"]["c2gr-relabel"]["overall"] <= 100.0
    import torch

    from c2gr_core.experiment.runs import load_method
    m = load_method(tmp_path / "runs" / "c2gr-relabel-s0")
    images, masks = m.synthesise(2, 0, 3, torch.Generator().manual_seed(0))
    assert torch.equal(masks, m.predict(images, 0))


def test_c2gr_variants_applies_overrides_and_keeps_one_row_per_variant(tmp_path):
    args = ["--quick", "--out", str(tmp_path), "--set", "prompt.relation_norm=row", "--set", "prompt.residual=true"]
    row = script("c2gr_variants").main(["--name", "rr", *args])
    cfg = json.loads((tmp_path / "runs" / "rr-s0" / "config.json").read_text())
    assert (cfg["prompt"]["relation_norm"], cfg["prompt"]["residual"]) == ("row", True)
    assert -1.0 <= row["prompt_cosine_offdiag"]["mean"] <= 1.0 and len(row["matrix_percent"]) == 2
    script("c2gr_variants").main(["--name", "plain", "--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "c2gr_variants.json").read_text())["rows"]
    assert set(saved) == {"rr-s0", "plain-s0"} and saved["plain-s0"]["overrides"] == []


def test_segmentor_budget_scores_the_final_model_on_the_validation_split(tmp_path):
    row = script("segmentor_budget").main(["--quick", "--method", "finetune", "--set", "train.epochs=2",
                                           "--n-val", "5", "--out", str(tmp_path)])
    run = tmp_path / "runs" / "finetune_train.epochs-2-s0"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["train"]["epochs"], cfg["data"]["n_val"]) == (2, 5)
    # The validation DSC of the last task, counted by hand over the five validation pairs.
    from c2gr_core.experiment.runs import load_method
    from data_catalog.synthetic import synthetic_task
    m = load_method(run)
    card = m.ctx.cards[1]
    d = cfg["data"]
    val = synthetic_task(card, d["image_size"], d["n_train"], 5, d["n_test"], seed=cfg["train"]["seed"] + 1).val
    images, masks = val.tensors()
    pred = m.predict(images, 1)
    dices = []
    for c in range(1, card.n_classes + 1):
        a, b = (pred == c), (masks == c)
        if b.sum():
            dices.append(2 * float((a & b).sum()) / float(a.sum() + b.sum()))
    assert math.isclose(row["val_final_row"][card.name], 100 * sum(dices) / len(dices), rel_tol=1e-6)
    assert math.isclose(row["val_overall"], sum(row["val_final_row"].values()) / 2, rel_tol=1e-9)
    assert math.isclose(row["test_overall"], sum(row["test_final_row"].values()) / 2, abs_tol=0.01)
    assert json.loads((tmp_path / "segmentor_budget.json").read_text())["rows"].keys() == {
        "finetune_train.epochs-2-s0"}
    # --n-tasks: a shorter stream, its own row
    short = script("segmentor_budget").main(["--quick", "--method", "finetune", "--n-tasks", "1", "--n-val", "2",
                                             "--out", str(tmp_path)])
    assert list(short["test_final_row"]) == list(row["test_final_row"])[:1]
    assert json.loads((tmp_path / "segmentor_budget.json").read_text())["rows"].keys() == {
        "finetune_train.epochs-2-s0", "finetune_tasks-1-s0"}
    with pytest.raises(SystemExit, match="--n-tasks must be in 1..2"):
        script("segmentor_budget").main(["--quick", "--n-tasks", "3", "--out", str(tmp_path)])


def test_task_identity_names_the_task_of_each_generated_image(tmp_path):
    out = tmp_path / "ti.json"
    r = script("task_identity").main(["--preset", "tiny", "--tasks", "fundus-a", "mms-a", "--steps", "2", "3",
                                      "--pairs", "3", "--set", "denoiser.prompt_in_timestep=true", "--out", str(out)])
    assert json.loads(out.read_text())["overrides"] == ["denoiser.prompt_in_timestep=true"]
    # fundus and M&Ms look nothing alike: the classifier tells their real images apart
    assert r["classifier_real_accuracy"] == [1.0, 1.0]
    assert [c["steps"] for c in r["checkpoints"]] == [2, 3]
    for c in r["checkpoints"]:
        for j, task in enumerate(r["tasks"]):
            named = c["named_as"][task]
            assert sum(named.values()) == 3
            assert math.isclose(c["identity"][task], named.get(task, 0) / 3)
        assert math.isclose(c["mean_identity"], sum(c["identity"].values()) / 2)
    # random prompts keep the module prompts' norms (same seed: same module), not their directions
    rnd = script("task_identity").main(["--preset", "tiny", "--tasks", "fundus-a", "mms-a", "--steps", "1",
                                        "--pairs", "2", "--prompts", "random", "--set", "denoiser.prompt_in_timestep=true",
                                        "--out", str(tmp_path / "r.json")])
    assert rnd["prompts"] == "random"
    assert rnd["prompt_norm"] == pytest.approx(r["prompt_norm"], rel=1e-5)
    assert rnd["prompt_cosine"][0][1] != pytest.approx(r["prompt_cosine"][0][1], abs=1e-3)


def test_step_overheads_child_times_every_call_and_adam(tmp_path):
    # The child half in this process (the parent only starts two of them and takes minima).
    r = script("step_overheads").main(["--quick", "--child", "--setup", "fp32"])
    assert r["setup"] == "fp32"
    assert set(r["rows"]) == {"coupled_step/loop", "coupled_step/fused", "generator_step/loop",
                              "generator_step/fused", "replay_sampling/loop"}
    for row in r["rows"].values():
        assert len(row["sec"]) == 1 and row["sec"][0] > 0 and row["minflt"][0] >= 0


def test_training_cost_times_only_the_variants_asked(tmp_path):
    r = script("training_cost").main(["--quick", "--only", "coupled_fp32_math_contiguous",
                                      "--out", str(tmp_path / "tc.json")])
    assert list(r["variants"]) == ["coupled_fp32_math_contiguous"]
    r = script("training_cost").main(["--quick", "--only", "sequential_fp32_math_contiguous",
                                      "--out", str(tmp_path / "tc.json")])
    assert r["best"] is None   # no coupled step timed: nothing to call the best coupled setup
    with pytest.raises(SystemExit):
        script("training_cost").main(["--quick", "--only", "coupled_fp16_math_contiguous"])


def test_training_cost_set_overrides_the_preset(tmp_path):
    r = script("training_cost").main(["--quick", "--only", "coupled_fp32_math_contiguous", "--set",
                                      "data.image_size=24", "--out", str(tmp_path / "tc.json")])
    assert r["image_size"] == 24 and r["overrides"] == ["data.image_size=24"]
    default = script("training_cost").main(["--quick", "--only", "coupled_fp32_math_contiguous",
                                            "--out", str(tmp_path / "tc.json")])
    # the FLOPs of a step grow with the pixels it sees
    flops = [x["variants"]["coupled_fp32_math_contiguous"]["flops_per_step"] for x in (r, default)]
    assert default["image_size"] != 24 and (flops[0] < flops[1]) == (24 < default["image_size"])
    with pytest.raises(ValueError, match="nosuch"):
        script("training_cost").main(["--quick", "--set", "data.nosuch=1", "--out", str(tmp_path / "x.json")])


def _budget_row(name, seed, overall, final_row):
    return {"name": name, "seed": seed, "test_overall": overall,
            "test_final_row": dict(zip(["t1", "t2", "t3"], final_row))}


def test_paired_seeds_pairs_only_shared_seeds_and_matches_a_hand_computation(tmp_path):
    rows = {f"{r['name']}-s{r['seed']}": r for r in [
        _budget_row("a", 0, 80.0, [90.0, 70.0, 0.0]),
        _budget_row("a", 1, 82.0, [80.0, 80.0, 50.0]),
        _budget_row("a", 2, 84.0, [60.0, 70.0, 10.0]),
        _budget_row("b", 0, 79.0, [85.0, 75.0, 99.0]),
        _budget_row("b", 1, 83.0, [70.0, 80.0, 0.0]),
        _budget_row("b", 2, 81.0, [65.0, 65.0, 0.0]),
        _budget_row("b", 3, 10.0, [0.0, 0.0, 0.0]),   # a has no seed 3: must not be paired
    ]}
    results = tmp_path / "budget.json"
    results.write_text(json.dumps({"rows": rows}))
    out = tmp_path / "paired.v1"   # a dot in the name must not be taken for a suffix
    [r] = script("paired_seeds").main(["--base", "a", "--vs", "b", "--results", str(results), "--out", str(out)])
    assert r["seeds"] == [0, 1, 2]
    o = r["overall"]
    # diffs 1, -1, 3: mean 1, sample std 2, t = 1 / (2 / sqrt 3); for 2 degrees of freedom the t
    # distribution's CDF is 1/2 + t / (2 sqrt(t^2 + 2)), so the two-sided p is 1 - t / sqrt(t^2 + 2).
    t = 1 / (2 / math.sqrt(3))
    assert o["diff"] == [1.0, -1.0, 3.0] and o["base_ahead"] == 2
    assert math.isclose(o["diff_mean"], 1.0) and math.isclose(o["diff_std"], 2.0)
    assert math.isclose(o["p_two_sided"], 1 - t / math.sqrt(t * t + 2), rel_tol=1e-9)
    # previous tasks = mean of the final row without its last task: a 80 / 80 / 65, b 80 / 75 / 65
    assert r["previous"]["base"] == [80.0, 80.0, 65.0] and r["previous"]["vs"] == [80.0, 75.0, 65.0]
    assert r["previous"]["base_ahead"] == 1
    assert json.loads((tmp_path / "paired.v1.json").read_text())["comparisons"][0]["seeds"] == [0, 1, 2]
    assert "+1.00 +- 2.00" in (tmp_path / "paired.v1.md").read_text()


def test_paired_seeds_names_the_row_it_cannot_find(tmp_path):
    results = tmp_path / "budget.json"
    results.write_text(json.dumps({"rows": {"a-s0": _budget_row("a", 0, 80.0, [1.0, 2.0, 3.0]),
                                            "b-s1": _budget_row("b", 1, 80.0, [1.0, 2.0, 3.0])}}))
    run = script("paired_seeds").main
    with pytest.raises(SystemExit, match="--vs 'c'"):
        run(["--base", "a", "--vs", "c", "--results", str(results), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="share no seed"):
        run(["--base", "a", "--vs", "b", "--results", str(results), "--out", str(tmp_path / "o")])
    rows = {"a-s0": _budget_row("a", 0, 80.0, [1.0, 2.0, 3.0]),
            "c-s0": {**_budget_row("c", 0, 80.0, [1.0, 2.0]), "test_final_row": {"t1": 1.0, "t2": 2.0}}}
    results.write_text(json.dumps({"rows": rows}))
    with pytest.raises(SystemExit, match="different streams"):
        run(["--base", "a", "--vs", "c", "--results", str(results), "--out", str(tmp_path / "o")])


def _run_folder(root, name, seed, overall, final_row, complete=True):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"seed": seed}}))
    final = dict(zip(["t1", "t2", "t3"], final_row))
    (run / "metrics.json").write_text(json.dumps({"complete": complete, "completed_rounds": 3 if complete else 1,
                                                  "overall": overall, "final_row": final}))
    return str(run)


def test_paired_seeds_pairs_run_folders_by_their_configs_seed(tmp_path):
    # given in another order than their seeds: pairs are made by each run's own seed, not by position
    a = [_run_folder(tmp_path, "a1", 1, 0.82, [0.8, 0.8, 0.5]), _run_folder(tmp_path, "a0", 0, 0.80, [0.9, 0.7, 0.0])]
    b = [_run_folder(tmp_path, "b0", 0, 0.79, [0.85, 0.75, 0.99]),
         _run_folder(tmp_path, "b1", 1, 0.83, [0.7, 0.8, 0.0])]
    [r] = script("paired_seeds").main(["--base-runs", *a, "--vs-runs", *b, "--names", "new", "old",
                                       "--out", str(tmp_path / "p")])
    assert r["seeds"] == [0, 1] and r["base"] == "new" and r["vs"] == "old"
    # percent: overall 80 - 79 and 82 - 83; previous tasks (80 - 80) and (80 - 75)
    assert [round(d, 9) for d in r["overall"]["diff"]] == [1.0, -1.0]
    assert [round(d, 9) for d in r["previous"]["diff"]] == [0.0, 5.0]
    assert r["runs"]["new"] == {0: a[1], 1: a[0]}
    unfinished = _run_folder(tmp_path, "a2", 2, 0.5, [0.5, 0.5, 0.5], complete=False)
    with pytest.raises(SystemExit, match="a2: the run is not finished"):
        script("paired_seeds").main(["--base-runs", unfinished, "--vs-runs", *b, "--out", str(tmp_path / "p")])
    with pytest.raises(SystemExit, match="a second run of seed 0"):
        script("paired_seeds").main(["--base-runs", a[1], b[0], "--vs-runs", *b, "--out", str(tmp_path / "p")])
    with pytest.raises(SystemExit, match="together"):
        script("paired_seeds").main(["--base-runs", *a, "--out", str(tmp_path / "p")])


def _fake_run(root, name, rows, drift):
    run = root / name
    run.mkdir()
    tasks = ["t1", "t2", "t3"]
    cells = [[f"{v}" if v is not None else "" for v in row] for row in rows]
    (run / "matrix.csv").write_text("round," + ",".join(tasks) + "\n"
                                    + "".join(f"{t}," + ",".join(c) + "\n" for t, c in zip(tasks, cells)))
    return {"run": str(run), "tasks": tasks, "drift": drift}


def test_replay_vs_forgetting_correlates_within_task_as_worked_by_hand(tmp_path):
    runs = {
        "A": _fake_run(tmp_path, "A", [[0.8, None, None], [0.7, 0.9, None], [0.6, 0.8, 0.5]],
                       [[None] * 3, [0.9, None, None], [0.7, 0.85, None]]),
        "B": _fake_run(tmp_path, "B", [[0.95, None, None], [0.8, 0.8, None], [0.7, 0.6, 0.4]],
                       [[None] * 3, [0.95, None, None], [0.8, 0.75, None]]),
    }
    drift_file = tmp_path / "drift.json"
    drift_file.write_text(json.dumps({"runs": runs}))
    result = script("replay_vs_forgetting").main([str(drift_file), "--out", str(tmp_path / "rvf")])
    # last replay / final DSC (percent): A t1 70 / 60, A t2 85 / 80, B t1 80 / 70, B t2 75 / 60.
    # Minus each task's mean over the runs: x = -5, +5, +5, -5 and y = -5, +10, +5, -10, so
    # r = sum xy / sqrt(sum x^2 sum y^2) = 150 / sqrt(100 * 250) = 3 / sqrt(10), slope 150 / 100.
    c = result["correlations"]["last_replay_vs_final_dsc"]
    assert c["n"] == 4
    assert math.isclose(c["within_task_pearson"], 3 / math.sqrt(10), rel_tol=1e-9)
    assert math.isclose(c["within_task_slope"], 1.5, rel_tol=1e-9)
    # 4 points, 2 task means removed: 1 degree of freedom, t = r sqrt(1 / (1 - r^2)) = 3, and the t
    # distribution with 1 degree of freedom is Cauchy: two-sided p = 1 - (2 / pi) atan(3).
    assert math.isclose(c["within_task_pearson_p"], 1 - 2 / math.pi * math.atan(3), rel_tol=1e-9)
    # t2 is replayed in the last round only, so only t1 has a drop: A 90 - 70 = 20, B 95 - 80 = 15,
    # against forgetting A 80 - 60 = 20, B 95 - 70 = 25: the run that dropped more forgot less here.
    pts = {(p["run"], p["task"]): p for p in result["points"]}
    assert math.isclose(pts["A", "t1"]["replay_drop"], 20) and pts["A", "t2"]["replay_drop"] is None
    assert math.isclose(pts["B", "t1"]["forgetting"], 25)
    d = result["correlations"]["replay_drop_vs_forgetting"]
    assert d["n"] == 2 and math.isclose(d["within_task_pearson"], -1.0) and d["within_task_pearson_p"] is None
    assert (tmp_path / "rvf.png").is_file() and (tmp_path / "rvf.json").is_file()


def test_replay_vs_forgetting_names_a_missing_run_directory(tmp_path):
    drift_file = tmp_path / "drift.json"
    drift_file.write_text(json.dumps({"runs": {"key": {"run": str(tmp_path / "gone"), "tasks": ["t1"],
                                                       "drift": [[None]]}}}))
    with pytest.raises(SystemExit, match="gone/matrix.csv"):
        script("replay_vs_forgetting").main([str(drift_file), "--out", str(tmp_path / "o")])


def test_replay_vs_forgetting_refuses_a_run_given_twice_and_mixed_streams(tmp_path):
    run = _fake_run(tmp_path, "A", [[0.8, None, None], [0.7, 0.9, None], [0.6, 0.8, 0.5]],
                    [[None] * 3, [0.9, None, None], [0.7, 0.85, None]])
    f1, f2, f3 = tmp_path / "d1.json", tmp_path / "d2.json", tmp_path / "d3.json"
    f1.write_text(json.dumps({"runs": {"A": run}}))
    f2.write_text(json.dumps({"runs": {"A again": run}}))
    f3.write_text(json.dumps({"runs": {"B": {**run, "run": str(tmp_path / "B"), "tasks": ["t1", "t2", "t4"]}}}))
    main = script("replay_vs_forgetting").main
    with pytest.raises(SystemExit, match="count twice"):
        main([str(f1), str(f2), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="stream"):
        main([str(f1), str(f3), "--out", str(tmp_path / "o")])
