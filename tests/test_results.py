"""tools/render.py renders README tables from JSON and refuses malformed files."""
import json
import subprocess
import sys

import pytest

from conftest import DEV_HARDWARE, ROOT, train_here, write_speed_table
from mlp.recipe import PRESETS
from mlp.results import ResultsError
from tools import equal_cost, figures, render, tables

MAKE_RUN = dict(test_acc=0.8912, val_acc=0.8976, best_epoch=6, epochs=6, train_seconds=351.2,
                notebook_wall_seconds=380, hardware="AMD EPYC (2 cores, 2 threads)", precision="fp32",
                params=160910, torch="2.14.1", git_commit="abc123", preset="quick")
README = "intro\n<!-- results:make_run -->\nold table\n<!-- /results:make_run -->\noutro\n"


def test_renders_the_table_from_json(tmp_path):
    (tmp_path / "make_run_cpu.json").write_text(json.dumps(MAKE_RUN))
    assert "| preset | `quick` as it was at commit abc123, not as it is now |" in render.render(README, tmp_path)
    (tmp_path / "make_run_cpu.json").write_text(json.dumps(dict(MAKE_RUN, **as_recorded("quick"))))
    out = render.render(README, tmp_path)
    assert "old table" not in out and out.startswith("intro\n") and out.endswith("outro\n")
    assert "| test accuracy (10,000 test images, evaluated once) | 89.12 % |" in out
    assert "| preset | `quick` |" in out and "epoch 6" in out and "351 s" in out and "380 s" in out and "160,910" in out
    assert render.render(out, tmp_path) == out, "rendering is idempotent"


@pytest.mark.parametrize("content,message", [("{not json", "is not valid JSON"),
                                             (json.dumps({"test_acc": 0.9}), "lacks")])
def test_malformed_json_fails_with_the_file_named(tmp_path, content, message):
    (tmp_path / "make_run_cpu.json").write_text(content)
    with pytest.raises(ResultsError, match=message) as e:
        render.render(README, tmp_path)
    assert "make_run_cpu.json" in str(e.value)


def test_cli_reports_malformed_file_and_leaves_readme_alone(tmp_path):
    (tmp_path / "make_run_cpu.json").write_text("{")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    r = subprocess.run([sys.executable, "-m", "tools.render", "--results", str(tmp_path), "--readme",
                        str(readme)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "not valid JSON" in r.stderr
    assert readme.read_text() == README


def test_committed_readme_is_rendered_from_committed_results():
    r = subprocess.run([sys.executable, "-m", "tools.render", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def as_recorded(preset, **changes) -> dict:
    """A preset's model config and recipe as a run records them (JSON), with recipe fields changed."""
    p = PRESETS[preset]
    return json.loads(json.dumps(dict(model=p.model.to_dict(), recipe=dict(p.recipe.to_dict(), **changes))))


def run_json(preset, seed, test_acc, curve=False, **kw):
    """A run of the preset as it is now (unless `kw` gives another model or recipe)."""
    history = [dict(epoch=e, train_loss=1.0 / e, train_acc=0.8, val_acc=0.85 + e / 100, seconds=60.0,
                    **({"test_acc": 0.84 + e / 100} if curve else {})) for e in (1, 2)]
    return {**dict(preset=preset, seed=seed, test_acc=test_acc, val_acc=0.9, best_epoch=2, epochs=2,
                   train_seconds=120.0, hardware="AMD EPYC (2 cores, 2 threads)", precision="fp32",
                   git_commit="abc1234def", command=f"python train.py --preset {preset} --seed {seed}",
                   history=history), **(as_recorded(preset) if preset in PRESETS else {}), **kw}


def test_presets_table_is_mean_and_std_over_seeds_and_skips_subset_and_curve_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, acc in enumerate((0.91, 0.92, 0.93)):
        (runs / f"quick-{i}.json").write_text(json.dumps(run_json("quick", i, acc)))
    (runs / "smoke.json").write_text(json.dumps(run_json("quick", 9, 0.5, train_limit=1000)))
    (runs / "eval-smoke.json").write_text(json.dumps(run_json("quick", 8, 0.99, eval_limit=500)))
    (runs / "curve.json").write_text(json.dumps(run_json("seed", 0, 0.86, curve=True)))
    table = tables.render_presets(tmp_path)
    assert table.count("| `quick` |") == 1 and "`seed`" not in table
    assert "| 0, 1, 2 | **92.00** ± 1.00 % |" in table
    # the same preset name with another network (a preset redefined later) is not the preset now: left out,
    # and a row of its own among every recorded version
    older = run_json("quick", 0, 0.80, model=dict(patch=4, dim=64, blocks=[{}] * 4), recipe={})
    (runs / "quick-v1.json").write_text(json.dumps(older))
    assert tables.render_presets(tmp_path) == table
    table = tables.render_presets(tmp_path, superseded=True)
    assert table.count("| `quick` |") == 2 and "| `quick` | K=4, width 64, 4 blocks | 2 | 0 | **80.00** % |" in table
    # ... and so is the same network evaluated on a moving average of its weights (recipe.ema)
    averaged = run_json("quick", 0, 0.85, model=dict(patch=4, dim=64, blocks=[{}] * 4), recipe=dict(ema=0.998))
    (runs / "quick-ema.json").write_text(json.dumps(averaged))
    table = tables.render_presets(tmp_path, superseded=True)
    assert table.count("| `quick` |") == 3 and "| `quick` | K=4, width 64, 4 blocks, EMA 0.998 | 2 | 0 | **85.00** % |" in table
    # ... and the same network trained by another optimiser (recipe.optimizer)
    muon = run_json("quick", 0, 0.86, model=dict(patch=4, dim=64, blocks=[{}] * 4), recipe=dict(ema=0.998, optimizer="muon"))
    (runs / "quick-muon.json").write_text(json.dumps(muon))
    table = tables.render_presets(tmp_path, superseded=True)
    assert table.count("| `quick` |") == 4 and "| `quick` | K=4, width 64, 4 blocks, Muon, EMA 0.998 | 2 | 0 | **86.00** % |" in table
    # ... and the same network evaluated with shifted views averaged (model.shift_tta)
    shifts = run_json("quick", 0, 0.87, model=dict(patch=4, dim=64, blocks=[{}] * 4, shift_tta=1),
                      recipe=dict(ema=0.998, optimizer="muon"))
    (runs / "quick-tta.json").write_text(json.dumps(shifts))
    table = tables.render_presets(tmp_path, superseded=True)
    assert table.count("| `quick` |") == 5 and ("| `quick` | K=4, width 64, 4 blocks, ±1 px shift averaging, Muon, "
                                                "EMA 0.998 | 2 | 0 | **87.00** % |") in table
    # ... and a network whose token MLPs are narrower (their hidden width)
    narrow = run_json("quick", 0, 0.88, model=dict(patch=4, dim=64, blocks=[dict(tokens=[49, 16, 49], features=[64, 256, 64])] * 4),
                      recipe={})
    (runs / "quick-narrow.json").write_text(json.dumps(narrow))
    table = tables.render_presets(tmp_path, superseded=True)
    assert table.count("| `quick` |") == 6 and "| `quick` | K=4, width 64, 4 blocks, token MLPs 16 wide | 2 | 0 | **88.00** % |" in table
    curve = tables.render_seed_curve(tmp_path)
    assert "| 1 | 1.0000 | 86.00 % | 85.00 % | 60 |" in curve and "| 2 |" in curve


def test_a_run_that_is_not_the_preset_now_is_left_out_of_every_preset_table(tmp_path):
    """The file names say nothing: what the run recorded decides. Another validation schedule, other epochs, a
    cap or an extension make a run a trial of its preset, not one of its seeds."""
    dev = "AMD EPYC (2 cores, 2 threads, AVX2)"
    runs = tmp_path / "runs"
    runs.mkdir()
    write_speed_table(tmp_path, {"quick": ("quick", 50.0, 15.0, 1.5)})
    for s in (0, 1, 2):
        (runs / f"quick-avx2-seed{s}.json").write_text(json.dumps(run_json("quick", s, 0.92, hardware=dev)))
    odd = {"quick-avx2-seed3": dict(as_recorded("quick", val_every=5)),
           "quick-avx2-seed4": dict(as_recorded("quick", epochs=12)),
           "quick-avx2-seed5": dict(capped=True), "quick-avx2-seed6": dict(extended=[dict(at_epoch=5)]),
           "quick-avx2-seed7": dict(model=dict(as_recorded("quick")["model"], dim=80))}
    for name, kw in odd.items():
        (runs / f"{name}.json").write_text(json.dumps(run_json("quick", 3, 0.50, hardware=dev, **kw)))
    table = tables.render_presets(tmp_path)
    assert "| 0, 1, 2 | **92.00** ± 0.00 % |" in table and "50.00" not in table and "seed3" not in table
    assert "quick-avx2-seed0, quick-avx2-seed1, quick-avx2-seed2 |" in equal_cost.render_targets(tmp_path)
    assert "50.00" not in equal_cost.render_targets(tmp_path) and "`quick`: **92.00** ± 0.00 % (n=3)" in equal_cost.render_baselines(tmp_path)
    every = tables.render_presets(tmp_path, superseded=True)
    assert every.count("| **50.00** % |") == 5 and every.count("| no |") == 5, "each version its own row"
    assert "| quick-avx2-seed0, quick-avx2-seed1, quick-avx2-seed2 | yes |" in every


def test_targets_table_costs_runs_by_the_speed_table_and_needs_three_seeds(tmp_path):
    """Each target met or not from the runs' JSON at their cost by the development CPU's speed table, whatever
    CPU they trained on (one run per seed); long's evaluation share counts its validation and one test pass."""
    dev, avx512 = DEV_HARDWARE, "AMD EPYC (2 cores, 2 threads, AVX-512+BF16)"
    write_speed_table(tmp_path, {"sprint": ("sprint", 25.0, 2.0, 1.0), "quick": ("quick", 55.0, 15.0, 1.5),
                                 "long": ("long", 60.0, 16.0, 1.6)})
    runs = tmp_path / "runs"
    runs.mkdir()

    def put(name, preset, seed, test_acc, hardware, **kw):
        (runs / f"{name}.json").write_text(json.dumps(dict(run_json(preset, seed, test_acc), hardware=hardware, **kw)))
    for s in (0, 1, 2):  # 90 % validation after epoch 2: 2 x 25 s of training, 2 x (2 + 1) s of validation
        put(f"sprint-{s}", "sprint", s, 0.89, dev, history=[dict(epoch=e, val_acc=0.85 + 0.025 * e, seconds=99.0,
                                                                 eval_seconds=9.0) for e in (1, 2, 3)], epochs=3)
    put("quick-dev-0", "quick", 0, 0.925, dev, epochs=10)
    table = equal_cost.render_targets(tmp_path).splitlines()[2:]
    rows = {line.split(" | ")[0]: line for line in table}
    assert "90 % validation by 56 s in the slowest seed" in rows["| `sprint`"] and rows["| `sprint`"].endswith("| **yes** |")
    assert rows["| `quick`"].endswith("| no |"), "one seed meets nothing"
    for s in (0, 1, 2):
        put(f"quick-{s}", "quick", s, 0.921, avx512, epochs=10)
        put(f"long-{s}", "long", s, 0.941, dev, epochs=24)
    rows = {line.split(" | ")[0]: line for line in equal_cost.render_targets(tmp_path).splitlines()[2:]}
    assert "92.23 % test (mean) at a cost of 580 s" in rows["| `quick`"], "seed 0 from the development CPU"
    assert rows["| `quick`"].endswith("| **yes** |") and f"{avx512}, {dev}, fp32" in rows["| `quick`"]
    long = rows["| `long`"]  # 24 x 60 + 4 x 16 + 24 x 1.6 = 1,542 s; evaluation (102 + 32) / 1,440 = 9 %
    assert "94.10 % test (mean) at a cost of 1,542 s; evaluation 9 % of training" in long and long.endswith("| **yes** |")
    write_speed_table(tmp_path, {"sprint": ("sprint", 29.0, 2.0, 1.0), "long": ("long", 60.0, 24.0, 1.6)})
    rows = {line.split(" | ")[0]: line for line in equal_cost.render_targets(tmp_path).splitlines()[2:]}
    assert "by 64 s" in rows["| `sprint`"] and rows["| `sprint`"].endswith("| no |")
    assert "evaluation 13 % of training" in rows["| `long`"] and rows["| `long`"].endswith("| no |")
    assert "no cost: `make speed` on the development CPU" in rows["| `quick`"], "not in the table: no cost"
    assert rows["| `best`"].endswith("| no |")


def test_seed_curve_marks_an_epoch_that_was_not_validated(tmp_path):
    (tmp_path / "runs").mkdir()
    r = run_json("seed", 0, 0.85, curve=True)
    r["history"][0]["val_acc"] = None  # Recipe.val_every > 1
    (tmp_path / "runs" / "seed-curve.json").write_text(json.dumps(r))
    curve = tables.render_seed_curve(tmp_path)
    assert "| 1 | 1.0000 | n/a | 85.00 % | 60 |" in curve and "| 2 | 0.5000 | 87.00 % | 86.00 % | 60 |" in curve


def test_a_run_file_missing_fields_is_named(tmp_path):
    (tmp_path / "runs").mkdir()
    bad = run_json("quick", 0, 0.9)
    del bad["command"]
    (tmp_path / "runs" / "old.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match=r"old.json lacks \['command'\]"):
        tables.render_presets(tmp_path)


def test_best_probe_extrapolates_a_subset_epoch(tmp_path):
    (tmp_path / "runs").mkdir()
    probe = run_json("best", 0, 0.5, train_limit=5500, preset_epochs=PRESETS["best"].recipe.epochs)
    probe.update(epochs=1, train_seconds=110.0)
    (tmp_path / "runs" / "best-cpu-probe.json").write_text(json.dumps(probe))
    text = tables.render_best_probe(tmp_path)
    epochs = PRESETS["best"].recipe.epochs
    assert "about 18 min per epoch" in text and f"{epochs} epochs would take about {1100 * epochs / 3600:.0f} hours" in text


def bench_json(**kw):
    b = dict(reference_img_s=200.0, ours_img_s=300.0, speedup=1.5, mfu=0.3, peak_gflops=100.0, model_gflops=0.05,
             time_to_90_s=None, epoch_90=None, peak_rss_mb=900.0, hardware="NVIDIA H200", precision="bf16",
             presets={"default": dict(reference_img_s=None, ours_img_s=5000.0, speedup=None)})
    b.update(kw)
    return b


def test_bench_without_a_reference_renders_instead_of_crashing(tmp_path):
    (tmp_path / "bench_gpu.json").write_text(json.dumps(bench_json(reference_img_s=None, speedup=None)))
    text = tables.render_bench_gpu(tmp_path)
    assert "not measured → 300 img/s" in text and "not measured → 5000 img/s" in text


def test_bench_renders_both_times_to_90_and_says_when_one_was_not_reached(tmp_path):
    b = bench_json(time_to_90_s=52.4, epoch_90=4, sprint=dict(time_to_90_s=None, epoch_90=None),
                   presets={"default": dict(reference_img_s=None, ours_img_s=4000.0, speedup=None, ours_adamw_img_s=4400.0)})
    (tmp_path / "bench_gpu.json").write_text(json.dumps(b))
    text = tables.render_bench_gpu(tmp_path)
    assert "| time to 90 % validation accuracy, `default` (= `quick`) recipe | 52 s (epoch 4) |" in text
    assert "| time to 90 % validation accuracy, `sprint` recipe (3 epochs) | not reached in its epochs |" in text
    assert "| `default` trained with AdamW instead of Muon (ours) | 4400 img/s (Muon's steps cost 10 % more time) |" in text
    (tmp_path / "bench_gpu.json").write_text(json.dumps(bench_json()))
    assert "`sprint`" not in tables.render_bench_gpu(tmp_path), "an older bench without it renders without it"


def test_frontier_table_marks_the_best_so_far_and_skips_subset_and_curve_runs(tmp_path):
    for kind in ("runs", "trials"):
        (tmp_path / kind).mkdir()
    fast = run_json("quick", 0, 0.88)
    fast.update(train_seconds=60.0, command="python train.py --set patch=7")
    slow_worse = run_json("quick", 0, 0.87)
    slow_worse.update(train_seconds=200.0, capped=True, command="python train.py --epochs 3")
    (tmp_path / "trials" / "fast.json").write_text(json.dumps(fast))
    (tmp_path / "trials" / "slow.json").write_text(json.dumps(slow_worse))
    (tmp_path / "runs" / "preset.json").write_text(json.dumps(run_json("quick", 1, 0.90)))
    (tmp_path / "runs" / "subset.json").write_text(json.dumps(run_json("quick", 2, 0.99, train_limit=500)))
    (tmp_path / "trials" / "eval-smoke.json").write_text(json.dumps(run_json("quick", 3, 0.99, eval_limit=200)))
    (tmp_path / "runs" / "curve.json").write_text(json.dumps(run_json("seed", 0, 0.99, curve=True)))
    rows = tables.render_frontier(tmp_path).splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["60", "120", "200"], "sorted by training seconds"
    assert [r.split("|")[7].strip() for r in rows] == ["★", "★", ""], "best so far: 88 %, then 90 %; 87 % is not"
    assert "`quick` preset" in rows[1] and "2 (capped)" in rows[2] and "trials/fast.json" in rows[0]
    figures.plot_frontier(tmp_path, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "trials" / "bad.json").write_text("{")
    with pytest.raises(ResultsError, match="bad.json is not valid JSON"):
        tables.render_frontier(tmp_path)


def test_max_seconds_caps_a_trial_and_the_record_says_so(tmp_path):
    out = tmp_path / "capped"
    r = train_here("--epochs", "4", "--batch-size", "64", "--train-limit", "640", "--eval-limit", "256",
                   "--max-seconds", "0.001", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 1 and m["capped"] is True and m["max_seconds"] == 0.001 \
        and m["preset_epochs"] == PRESETS["default"].recipe.epochs
    (tmp_path / "x.md").write_text("")
    r = subprocess.run([sys.executable, "-m", "tools.render", "--record-trial", str(out), "--results", str(tmp_path),
                        "--readme", str(tmp_path / "x.md")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "trials" / "capped.json").read_text())["capped"] is True
    again = [sys.executable, "-m", "tools.render", "--record-trial", str(out), "--results", str(tmp_path),
             "--readme", str(tmp_path / "x.md")]
    before = (tmp_path / "trials" / "capped.json").read_bytes()
    r = subprocess.run(again, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and f"{tmp_path / 'trials' / 'capped.json'} already holds a record" in r.stderr
    assert "--force (make: FORCE=1)" in r.stderr and (tmp_path / "trials" / "capped.json").read_bytes() == before
    r = subprocess.run([*again, "--force"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and f"replacing {tmp_path / 'trials' / 'capped.json'}" in r.stdout, r.stderr


def test_make_seeds_refuses_to_overwrite_a_record_before_training():
    """`make seeds` of a record that exists stops before any training, naming it (FORCE=1 would replace it)."""
    record = ROOT / "results" / "runs" / "quick-avx2-seed0.json"
    before = record.read_bytes()
    r = subprocess.run(["make", "-s", "seeds", "PRESET=quick", "TAG=avx2", "SEEDS=0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "error: results/runs/quick-avx2-seed0.json already holds a record" in r.stderr
    assert "FORCE=1 to replace it" in r.stderr and "training on" not in r.stdout
    assert not (ROOT / "runs" / "quick-avx2-seed0").exists() and record.read_bytes() == before


def test_muon_ns_renders_one_row_per_machine_and_refuses_a_malformed_file(tmp_path):
    m = dict(preset="default", matrices=8, step_ms={"bf16": 85.0, "fp32": 5.0}, matmul_gflops={"bf16": 6.5, "fp32": 174.0},
             steps_per_epoch=430, used="fp32", hardware="CPU X (AVX2 cap)", command="python bench.py --muon-ns",
             git_commit="abc1234def")
    (tmp_path / "muon_ns_cpu_avx2cap.json").write_text(json.dumps(m))
    (tmp_path / "muon_ns_cpu.json").write_text(json.dumps(dict(m, used="bf16", hardware="CPU X", step_ms={"bf16": 3.0, "fp32": 4.0})))
    text = tables.render_muon_ns(tmp_path)
    rows = [ln for ln in text.splitlines() if ln.startswith("| CPU X")]
    assert len(rows) == 2 and rows[0].startswith("| CPU X |") and "| bf16 |" in rows[0] and "| fp32 |" in rows[1]
    assert "85.0 ms/step, **36.5 s** per `default` epoch of 430 steps" in rows[1] and "6.5 GFLOP/s" in rows[1]
    (tmp_path / "muon_ns_cpu.json").write_text(json.dumps({"step_ms": {}}))
    with pytest.raises(ResultsError, match="muon_ns_cpu.json lacks"):
        tables.render_muon_ns(tmp_path)


def test_a_patch_study_without_model_configs_says_its_presets_are_of_its_commit(tmp_path):
    """Rows recorded before each run's model config was (the `quick` of before 5d1395c): the table says which
    network they are and that `make study` will not reuse them."""
    row = dict(preset="quick", patch=4, seed=0, epochs=1, train_limit=None)
    summary = [dict(preset="quick", patch=4, patches=49, runs=1, epochs=1, params=1000, gflops=0.03, sec_per_epoch=10.0,
                    val_acc=0.9, val_std=0.0, test_acc=0.89, test_std=0.0)]
    study = dict(summary=summary, verdict=[], hardware="cpu", precision="fp32", command="make study",
                 git_commit="cbd49ddf00", rows=[row])
    (tmp_path / "patch_study.json").write_text(json.dumps(study))
    assert "the network it was at commit cbd49dd" in equal_cost.render_patch_study(tmp_path)
    study["rows"] = [dict(row, model={"patch": 4}, recipe={})]
    (tmp_path / "patch_study.json").write_text(json.dumps(study))
    assert "the network it was at commit" not in equal_cost.render_patch_study(tmp_path)


def test_a_gpu_results_folder_renders_its_own_rows(tmp_path):
    """What `make gpu-results` brings back, copied into results/: the GPU's 200-epoch seed curve is shown over a
    CPU's 3-epoch one, `best`'s target row comes from its runs, and a capped run says so wherever it appears."""
    gpu = "NVIDIA H200"
    runs = tmp_path / "runs"
    runs.mkdir()
    for s, acc in enumerate((0.946, 0.948, 0.950)):
        (runs / f"best-gpu-seed{s}.json").write_text(json.dumps(run_json("best", s, acc, hardware=gpu,
                                                                         device="cuda:0", precision="bf16")))
    cpu_curve = run_json("seed", 0, 0.85, curve=True)
    gpu_curve = dict(run_json("seed", 0, 0.88, hardware=gpu, device="cuda:0", command="python -m tools.gpu_results"),
                     history=[dict(epoch=e, train_loss=1 / e, val_acc=0.8, test_acc=0.8 + e / 1000, seconds=1.0)
                              for e in range(1, 201)])
    (runs / "seed-curve-cpu.json").write_text(json.dumps(cpu_curve))
    (runs / "seed-curve-gpu.json").write_text(json.dumps(gpu_curve))
    targets = {line.split(" | ")[0]: line for line in equal_cost.render_targets(tmp_path).splitlines()[2:]}
    assert "94.80 % test (mean)" in targets["| `best`"] and targets["| `best`"].endswith("| **yes** |")
    assert "best-gpu-seed0, best-gpu-seed1, best-gpu-seed2" in targets["| `best`"]
    curve = tables.render_seed_curve(tmp_path)
    assert "NVIDIA H200" in curve and "| 200 |" in curve and "python -m tools.gpu_results" in curve
    for s in range(3):  # the same seeds, each stopped by the GPU run's cap
        capped = dict(run_json("best", s, 0.90, hardware=gpu, device="cuda:0", precision="bf16"), capped=True,
                      max_seconds=300, epochs=31)
        (runs / f"best-gpu-seed{s}.json").write_text(json.dumps(capped))
    row = next(line for line in equal_cost.render_targets(tmp_path).splitlines() if line.startswith("| `best`"))
    assert "capped at 300 s after 31/31/31 of 40 epochs: not the recipe" in row and row.endswith("| no |")
    assert "| `best` |" not in tables.render_presets(tmp_path), "a capped run is no seed of its preset"
    assert "31 (capped)" in tables.render_presets(tmp_path, superseded=True)
    (tmp_path / "trials").mkdir()
    assert "31 (capped)" in tables.render_frontier(tmp_path)


def test_a_patch_study_in_progress_renders_its_runs_so_far_and_says_so(tmp_path):
    rows = [dict(arm="quick@10ep", preset="quick", patch=k, seed=0, epochs=10, params=100_000, gflops=0.05,
                 sec_per_epoch=sec, val_acc=0.91, test_acc=0.90, capped=False, hardware="AMD EPYC (2 cores, 2 threads, AVX2)")
            for k, sec in ((2, 100.0), (4, 20.0))]
    record = dict(command="make study", git_commit="abc1234", hardware="AMD EPYC (2 cores, 2 threads, AVX2)",
                  precision="fp32", complete=False, rows=rows,
                  parameters=dict(arms=["quick@10ep"], patches=[2, 4, 7], seeds=[0, 1, 2]))
    (tmp_path / "patch_study.json").write_text(json.dumps(record))
    text = equal_cost.render_patch_study(tmp_path)
    assert "| `quick@10ep` | 2 (196) |" in text and "| 100.0 ± 0.0 | 10 | 1 |" in text
    assert "In progress: 2 of the 9 runs its command planned are recorded" in text and "`make study` resumes" in text
    (tmp_path / "patch_study_gpu.json").write_text(json.dumps(record))  # a GPU window's study does not resume
    gpu = equal_cost.render_patch_study(tmp_path, "patch_study_gpu.json")
    assert "the GPU window ended the rest" in gpu and "`make study` resumes" not in gpu
    assert "against K=2: no verdict (one seed)" in text
