"""The patch-size study notebook executes end to end with tiny parameters, resumes without retraining, and
its JSON renders into the results table."""
import json

import nbformat

from conftest import ROOT
from mlp import notebook
from tools import render

TINY = dict(presets=["seed", "quick"], patches=[2, 4, 7], seeds=[0, 1], epochs_seed=1, epochs_quick=1,
            train_limit=128, eval_limit=100, resume=True, command="pytest tiny study")


def run_study(tmp_path, name):
    params = dict(TINY, out_json=str(tmp_path / "patch_study.json"), out_png=str(tmp_path / "patch_study.png"))
    executed = tmp_path / f"{name}.ipynb"
    notebook.execute(str(ROOT / "notebooks" / "patch_size_study.ipynb"), str(executed), parameters=params,
                        cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(executed, as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    return nb, json.loads((tmp_path / "patch_study.json").read_text())


def test_study_notebook_runs_with_tiny_parameters_and_resumes(tmp_path):
    nb, st = run_study(tmp_path, "first")
    assert st["complete"] and st["command"] == "pytest tiny study" and st["git_commit"]
    assert len(st["rows"]) == 12 and {(r["preset"], r["patch"], r["seed"]) for r in st["rows"]} == {
        (p, k, s) for p in ("seed", "quick") for k in (2, 4, 7) for s in (0, 1)}
    for r in st["rows"]:
        assert r["epochs"] == 1 and r["train_limit"] == 128 and 0 < r["test_acc"] <= 1 and r["sec_per_epoch"] > 0
    params = {(r["preset"], r["patch"]): r["params"] for r in st["summary"]}
    assert params["seed", 4] == 111164, "the seed network at K=4 is the original"
    assert params["seed", 2] > params["seed", 4] > params["seed", 7], "its token MLP's input is the patch count"
    gflops = {(r["preset"], r["patch"]): r["gflops"] for r in st["summary"]}
    assert gflops["quick", 2] > gflops["quick", 4] > gflops["quick", 7]
    assert all(r["runs"] == 2 and r["test_std"] >= 0 for r in st["summary"])
    assert len(st["verdict"]) == 2 and all("the claim" in v for v in st["verdict"])
    assert (tmp_path / "patch_study.png").stat().st_size > 10_000
    table = render.render_patch_study(tmp_path)
    assert "| `seed` | 4 (49) | 111,164 |" in table and "pytest tiny study" in table

    # a second execution reuses every finished run instead of training again
    _, again = run_study(tmp_path, "second")
    assert [r["history"] for r in again["rows"]] == [r["history"] for r in st["rows"]]


def test_the_study_reuses_a_row_only_for_the_same_network_recipe_and_limits(tmp_path):
    """A row recorded for another network under the same preset name (as `quick` was before commit 5d1395c) is
    trained again, not stamped with today's commit; an identical one is reused, and the log says which."""
    from mlp import study
    path, logs = tmp_path / "s.json", []
    args = (["sprint"], [7], [0], {"sprint": 1}, 128, "cpu", "fp32", path, "pytest")
    first = study.train_all(*args, log=logs.append, eval_limit=64)
    record = json.loads(path.read_text())
    stale = dict(record["rows"][0], val_acc=0.123, model=dict(record["rows"][0]["model"], dim=64))
    path.write_text(json.dumps(dict(record, rows=[stale])))
    second = study.train_all(*args, log=logs.append, eval_limit=64)
    assert second[0]["val_acc"] != 0.123 and second[0]["model"] == first[0]["model"]
    assert "reused 0 of 1 runs" in logs[-1] and "its other 1 rows were left out" in logs[-1]
    third = study.train_all(*args, log=logs.append, eval_limit=64)
    as_saved = json.loads(json.dumps(second[0]["history"]))
    assert third[0]["history"] == as_saved and "reused 1 of 1 runs" in logs[-1]
    assert "(reused from the record)" in logs[-2]
    older = json.loads(path.read_text())  # a row from before Recipe.val_from existed: it did what its default does
    del older["rows"][0]["recipe"]["val_from"]
    path.write_text(json.dumps(older))
    study.train_all(*args, log=logs.append, eval_limit=64)
    assert "reused 1 of 1 runs" in logs[-1]
    fourth = study.train_all(*args, log=logs.append, eval_limit=32)  # other limits: another run
    assert fourth[0]["eval_limit"] == 32 and "reused 0 of 1 runs" in logs[-1]
