"""results/render.py renders README tables from JSON and refuses malformed files."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from recipe import PRESETS

sys.path.insert(0, str(ROOT / "results"))
import render  # noqa: E402

MAKE_RUN = dict(test_acc=0.8912, val_acc=0.8976, best_epoch=6, epochs=6, train_seconds=351.2,
                notebook_wall_seconds=380, hardware="AMD EPYC (2 cores, 2 threads)", precision="fp32",
                params=160910, torch="2.14.1", git_commit="abc123", preset="quick")
README = "intro\n<!-- results:make_run -->\nold table\n<!-- /results:make_run -->\noutro\n"


def test_renders_the_table_from_json(tmp_path):
    (tmp_path / "make_run_cpu.json").write_text(json.dumps(MAKE_RUN))
    out = render.render(README, tmp_path)
    assert "old table" not in out and out.startswith("intro\n") and out.endswith("outro\n")
    assert "| test accuracy (10,000 test images, evaluated once) | 89.12 % |" in out
    assert "| preset | `quick` |" in out and "epoch 6" in out and "351 s" in out and "380 s" in out and "160,910" in out
    assert render.render(out, tmp_path) == out, "rendering is idempotent"


@pytest.mark.parametrize("content,message", [("{not json", "is not valid JSON"),
                                             (json.dumps({"test_acc": 0.9}), "lacks")])
def test_malformed_json_fails_with_the_file_named(tmp_path, content, message):
    (tmp_path / "make_run_cpu.json").write_text(content)
    with pytest.raises(render.ResultsError, match=message) as e:
        render.render(README, tmp_path)
    assert "make_run_cpu.json" in str(e.value)


def test_cli_reports_malformed_file_and_leaves_readme_alone(tmp_path):
    (tmp_path / "make_run_cpu.json").write_text("{")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    script = tmp_path / "render.py"
    script.write_text((ROOT / "results" / "render.py").read_text())
    (tmp_path / "records.py").write_text((ROOT / "results" / "records.py").read_text())
    r = subprocess.run([sys.executable, str(script), "--readme", str(readme)], capture_output=True, text=True)
    assert r.returncode == 1 and "not valid JSON" in r.stderr
    assert readme.read_text() == README


def test_committed_readme_is_rendered_from_committed_results():
    r = subprocess.run([sys.executable, "results/render.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def run_json(preset, seed, test_acc, curve=False, **kw):
    history = [dict(epoch=e, train_loss=1.0 / e, train_acc=0.8, val_acc=0.85 + e / 100, seconds=60.0,
                    **({"test_acc": 0.84 + e / 100} if curve else {})) for e in (1, 2)]
    return dict(preset=preset, seed=seed, test_acc=test_acc, val_acc=0.9, best_epoch=2, epochs=2, train_seconds=120.0,
                hardware="AMD EPYC (2 cores, 2 threads)", precision="fp32", git_commit="abc1234def",
                command=f"python train.py --preset {preset} --seed {seed}", history=history, **kw)


def test_presets_table_is_mean_and_std_over_seeds_and_skips_subset_and_curve_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, acc in enumerate((0.91, 0.92, 0.93)):
        (runs / f"quick-{i}.json").write_text(json.dumps(run_json("quick", i, acc)))
    (runs / "smoke.json").write_text(json.dumps(run_json("quick", 9, 0.5, train_limit=1000)))
    (runs / "curve.json").write_text(json.dumps(run_json("seed", 0, 0.86, curve=True)))
    table = render.render_presets(tmp_path)
    assert table.count("| `quick` |") == 1 and "`seed`" not in table
    assert "| 0, 1, 2 | **92.00** ± 1.00 % |" in table
    curve = render.render_seed_curve(tmp_path)
    assert "| 1 | 1.0000 | 86.00 % | 85.00 % | 60 |" in curve and "| 2 |" in curve


def test_a_run_file_missing_fields_is_named(tmp_path):
    (tmp_path / "runs").mkdir()
    bad = run_json("quick", 0, 0.9)
    del bad["command"]
    (tmp_path / "runs" / "old.json").write_text(json.dumps(bad))
    with pytest.raises(render.ResultsError, match=r"old.json lacks \['command'\]"):
        render.render_presets(tmp_path)


def test_best_probe_extrapolates_a_subset_epoch(tmp_path):
    (tmp_path / "runs").mkdir()
    probe = run_json("best", 0, 0.5, train_limit=5500, preset_epochs=PRESETS["best"].recipe.epochs)
    probe.update(epochs=1, train_seconds=110.0)
    (tmp_path / "runs" / "best-cpu-probe.json").write_text(json.dumps(probe))
    text = render.render_best_probe(tmp_path)
    assert PRESETS["best"].recipe.epochs == 150
    assert "about 18 min per epoch" in text and "150 epochs would take about 46 hours" in text  # 1100 s x 150
