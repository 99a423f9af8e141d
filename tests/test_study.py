"""The patch-size study notebook executes end to end with tiny parameters, resumes without retraining, and
its JSON renders into the results table."""
import json

import nbformat
import pytest
import torch

from conftest import ROOT
from mlp import hardware, notebook, records, study
from tools import equal_cost

# Equal epochs for both networks, and equal time (60 development-CPU seconds, converted at the ratio calibrated
# here: at least one epoch of `quick` at each K, from a short probe).
TINY = dict(arms=["seed@1ep", "quick@1ep", "quick@60s"], patches=[2, 4, 7], seeds=[0, 1],
            train_limit=128, eval_limit=100, resume=True, command="pytest tiny study", probe_seconds=0.5)


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
    arms = TINY["arms"]
    assert st["complete"] and st["command"] == "pytest tiny study" and st["git_commit"]
    assert [(r["arm"], r["seed"], r["patch"]) for r in st["rows"]] == [
        (a, s, k) for a in arms for s in (0, 1) for k in (2, 4, 7)], "interleaved: K=2, 4, 7 within each seed"
    for r in st["rows"]:
        assert r["train_limit"] == 128 and 0 < r["test_acc"] <= 1 and r["sec_per_epoch"] > 0
        assert r["epochs"] == 1 if r["arm"].endswith("@1ep") else r["epochs"] >= 1
    # each K's epochs from its own measured seconds per epoch, and the calibration, kept for a resume
    assert sorted(st["probes"]) == sorted(f"quick K={k} on {st['hardware']}, fp32" for k in (2, 4, 7))
    assert list(st["calibrations"]) == [st["hardware"]] and st["calibrations"][st["hardware"]]["ratio"] > 0
    params = {(r["preset"], r["patch"]): r["params"] for r in st["summary"]}
    assert params["seed", 4] == 111164, "the seed network at K=4 is the original"
    assert params["seed", 2] > params["seed", 4] > params["seed", 7], "its token MLP's input is the patch count"
    gflops = {(r["preset"], r["patch"]): r["gflops"] for r in st["summary"]}
    assert gflops["quick", 2] > gflops["quick", 4] > gflops["quick", 7]
    assert all(r["runs"] == 2 and r["test_std"] >= 0 and r["sec_std"] >= 0 for r in st["summary"])
    assert len(st["verdict"]) == len(arms) and all("the claim" in v for v in st["verdict"])
    assert st["rule"] == study.RULE and "Welch's two-sided t-test" in st["rule"]
    assert (tmp_path / "patch_study.png").stat().st_size > 10_000
    table = equal_cost.render_patch_study(tmp_path)
    assert "| `seed@1ep` | 4 (49) | 111,164 |" in table and "pytest tiny study" in table and study.RULE in table
    assert "| 2 | 100." not in table and "| 2 |" in table, "n in every row"

    # a second execution reuses every finished run instead of training again
    _, again = run_study(tmp_path, "second")
    assert [r["history"] for r in again["rows"]] == [r["history"] for r in st["rows"]]


def row(k, test, sd, sec=10.0, sec_sd=0.1, runs=3, **kw):
    return dict(dict(arm="quick@10ep", patch=k, runs=runs, test_acc=test, test_std=sd, sec_per_epoch=sec,
                     sec_std=sec_sd, sec_runs=runs, sec_hardware="CPU A"), **kw)


def test_a_difference_welchs_test_cannot_tell_is_no_difference():
    """0.3 points apart with sd 0.2 over 3 seeds: Welch p = 0.14, a tie; 0.5 apart: p = 0.04, K=4 wins."""
    assert study.compare(row(4, 0.915, 0.002), row(2, 0.912, 0.002), "test_acc", True) == "tie"
    assert study.compare(row(4, 0.917, 0.002), row(2, 0.912, 0.002), "test_acc", True) == "a"
    assert study.compare(row(4, 0.912, 0.002), row(2, 0.917, 0.002), "test_acc", True) == "b"
    assert study.compare(row(4, 0.9, 0.0, sec=10.0), row(7, 0.9, 0.0, sec=5.0), "sec_per_epoch", False) == "b"
    assert study.compare(row(4, 0.95, 0.0, runs=1), row(2, 0.5, 0.0, runs=1), "test_acc", True) is None
    assert study.compare(row(4, 0.95, 0.001), row(2, 0.5, 0.001, capped=True), "test_acc", True) is None
    lines = study.verdict([row(2, 0.912, 0.002, sec=30.0), row(4, 0.915, 0.002), row(7, 0.90, 0.001, sec=5.0)])
    assert lines == ["`quick@10ep` (n=3 seeds per K; seconds from 3 of them on CPU A): against K=2: no significant "
                     "difference (+0.30 points, p = 0.140), K=4 faster (10.0 vs 30.0 s/epoch); against K=7: K=4 more "
                     "accurate (+1.50 points, p = 0.002), K=7 faster (10.0 vs 5.0 s/epoch): the claim does not hold."]
    table = {2: [30.0, 31.0, 29.5, 30.2, 30.4], 4: [10.0, 10.1, 9.9, 10.2, 10.0], 7: [9.9, 10.3, 10.0, 10.1, 9.8]}
    timed = study.verdict([row(2, 0.912, 0.002), row(4, 0.915, 0.002), row(7, 0.90, 0.001)], table)
    assert "K=4 faster (10.0 vs 30.2 s/epoch in the speed table)" in timed[0]
    assert "no significant difference in speed (10.0 vs 10.0 s/epoch in the speed table)" in timed[0]
    one = study.verdict([row(2, 0.9, 0.0, runs=1), row(4, 0.95, 0.0, runs=1)])
    assert one == ["`quick@10ep` (n=1 seeds per K; seconds from 1 of them on CPU A): against K=2: no verdict (one "
                   "seed): no verdict."]
    untimed = study.verdict([row(2, 0.90, 0.001, sec_runs=1), row(4, 0.95, 0.001, sec_runs=1)])
    assert "K=4 more accurate" not in untimed[0] and "no verdict (fewer than two runs of each K timed on one CPU)" \
        in untimed[0]


def test_accuracy_pools_every_cpus_seeds_and_seconds_come_from_one_cpu():
    """Seeds of a study trained in sessions on two CPUs: test accuracy over all three, seconds per epoch over
    the two on the CPU that ran most of the arm, never the third's faster CPU."""
    def run(k, seed, cpu, sec, test):
        return dict(arm="quick@10ep", preset="quick", patch=k, seed=seed, epochs=10, params=1, gflops=0.1,
                    hardware=cpu, sec_per_epoch=sec, val_acc=test, test_acc=test)
    rows = [run(k, s, cpu, sec * (1 if cpu == "A" else 0.5), test)
            for s, cpu in ((0, "A"), (1, "A"), (2, "B")) for k, sec, test in ((2, 90.0 + s, 0.92), (4, 25.0 + s, 0.91))]
    summary = {r["patch"]: r for r in study.summarize(rows)}
    assert summary[2]["runs"] == 3 and summary[2]["sec_runs"] == 2 and summary[2]["sec_hardware"] == "A"
    assert summary[2]["sec_per_epoch"] == 90.5 and summary[4]["sec_per_epoch"] == 25.5
    assert "| 90.5 ± 0.7 (n=2) | 10 | 3 |" in records.study_table(summary.values())
    assert "seconds from 2 of them on A" in study.verdict(list(summary.values()))[0]


@pytest.mark.parametrize("text,message", [("quick@10", "write PRESET"), ("nope@10ep", "write PRESET"),
                                          ("quick@0s", "must be positive")])
def test_a_bad_arm_says_how_to_write_one(text, message):
    with pytest.raises(ValueError, match=message):
        study.Arm.parse(text)


def test_the_study_reuses_a_row_only_for_the_same_network_recipe_and_limits(tmp_path):
    """A row recorded for another network under the same preset name (as `quick` was before commit 5d1395c) is
    trained again, not stamped with today's commit; an identical one is reused, and the log says which."""
    path, logs = tmp_path / "s.json", []
    args = (["sprint@1ep"], [7], [0], 128, "cpu", "fp32", path, "pytest")
    first = study.train_all(*args, log=logs.append, eval_limit=64)
    record = json.loads(path.read_text())
    stale = dict(record["rows"][0], val_acc=0.123, model=dict(record["rows"][0]["model"], dim=64))
    path.write_text(json.dumps(dict(record, rows=[stale])))
    second = study.train_all(*args, log=logs.append, eval_limit=64)
    assert second[0]["val_acc"] != 0.123 and second[0]["model"] == first[0]["model"]
    assert "reused 0 of 1 runs" in logs[-1] and "its other 1 rows are kept in its set_aside list" in logs[-1]
    assert [r["val_acc"] for r in json.loads(path.read_text())["set_aside"]] == [0.123], "nothing lost"
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


def test_an_equal_time_arm_takes_each_ks_epochs_from_the_equal_epoch_runs():
    """Whole epochs of all the data on this hardware, not a probe: the probe missed quick's K=4 epoch by 19 %."""
    cpu = torch.device("cpu")
    where, logs = hardware.describe(cpu), []
    rows = [dict(preset="quick", patch=k, arm="quick@10ep", hardware=where, train_limit=None, sec_per_epoch=sec)
            for k, sec in ((2, 100.0), (4, 20.0), (7, 10.0))]
    probes, calibrations = {}, {where: dict(ratio=2.0)}  # as calibrated in this study's session: 300 s here
    epochs = study.plan_epochs(study.Arm.parse("quick@600s"), [2, 4, 7], cpu, "fp32", probes, rows, log=logs.append,
                               calibrations=calibrations)
    assert epochs == {2: 3, 4: 15, 7: 30} and probes == {}
    assert all("the mean of 1 equal-epoch runs" in line for line in logs)
