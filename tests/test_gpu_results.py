"""tools/gpu_results.py --dry-run: the whole GPU programme on the CPU with tiny sizes. Every output file is written,
carries its provenance, and renders with tools/render.py; nothing here needs a GPU."""
import json
import re

from mlp.results import load_runs
from tools import equal_cost, tables


def test_dry_run_writes_every_result_file_and_they_render(gpu_dry_run, tmp_path):
    out, r = gpu_dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "gpu_results.json").read_text())
    assert summary["dry_run"] and set(summary["exit_codes"].values()) == {0}
    assert set(summary["exit_codes"]) == {"best-seed0", "best-seed1", "seed-curve", "study", "bench"}
    plan = summary["plan"]
    assert set(plan["ms_per_step"]) == {"best", "seed", "quick"} and all(v > 0 for v in plan["ms_per_step"].values())
    runs = {f.stem: json.loads(f.read_text()) for f in (out / "runs").glob("*.json")}
    assert set(runs) == {"best-gpu-seed0", "best-gpu-seed1", "seed-curve-gpu"}
    for name, m in runs.items():
        for key in ("command", "git_commit", "seed", "hardware", "precision", "capped", "history"):
            assert key in m, (name, key)
        assert m["command"].startswith("python -m tools.gpu_results (python train.py --preset")
    assert [runs[f"best-gpu-seed{s}"]["seed"] for s in range(2)] == [0, 1]
    assert all("test_acc" in h for h in runs["seed-curve-gpu"]["history"]), "the curve has test accuracy per epoch"
    assert not (out / "patch_study.json").exists(), "copied into results/, it would replace the CPU study"
    study = json.loads((out / "patch_study_gpu.json").read_text())
    assert study["complete"] and len(study["rows"]) == 4 and (out / "patch_study_gpu.png").stat().st_size > 10_000
    bench = json.loads((out / "bench_gpu.json").read_text())
    assert bench["device"] == "cpu" and bench["quick"] is True, "the dry run's bench is the quick one"
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", bench["git_commit"]), bench["git_commit"]
    assert not (out / "work").exists(), "checkpoints are not results"
    # everything renders as it would in README once copied into results/
    assert len(load_runs(out)) == 3
    assert len(tables.render_presets(out).splitlines()) == 2, "subset runs are no table rows: the header alone"
    assert "| 1 |" in tables.render_seed_curve(out)
    assert "python -m tools.gpu_results (patch study)" in equal_cost.render_patch_study(out, "patch_study_gpu.json")
    assert "Not run yet" in equal_cost.render_patch_study(tmp_path, "patch_study_gpu.json")
    assert "img/s" in tables.render_bench_gpu(out) and "Not measured yet" in tables.render_bench_gpu(tmp_path)
