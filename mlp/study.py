"""The patch-size study: train presets at K x K patches for K in {2, 4, 7} over seeds, at equal epochs and at
equal training time, and judge the original's claim that 4x4 beats 2x2 and 7x7 on training time and test
accuracy by a rule that a difference inside the noise cannot pass (`compare`). notebooks/patch_size_study.ipynb
and tools/gpu_results.py run it; results/patch_study.json holds the record that README renders.

An arm is a preset at a budget: "quick@10ep" (10 epochs at every K) or "quick@600s" (600 development-CPU
seconds of training: each K's epochs from its measured seconds per epoch, its schedule set for them).
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from mlp import budget, hardware, records, results
from mlp.loop import best_record
from mlp.recipe import PRESETS, get_preset
from mlp.runner import RunConfig, quiet, run
from model import MLPNet, count_params, train_flops_per_image


@dataclass(frozen=True)
class Arm:
    preset: str
    epochs: int | None = None       # equal epochs (None: the preset's own)
    seconds: float | None = None    # equal training time, in development-CPU seconds

    @classmethod
    def parse(cls, text: str) -> Arm:
        m = re.fullmatch(r"([\w-]+)(?:@(\d+)(ep|s))?", text)
        if not m or m.group(1) not in PRESETS:
            raise ValueError(f"arm {text!r}: write PRESET, PRESET@Nep (N epochs) or PRESET@Ns (N development-CPU "
                             f"seconds of training), with a preset of {sorted(PRESETS)}")
        n = int(m.group(2)) if m.group(2) else None
        if n == 0:
            raise ValueError(f"arm {text!r}: the budget must be positive")
        return cls(m.group(1), **({"seconds": n} if m.group(3) == "s" else {"epochs": n}))

    @property
    def label(self) -> str:
        if self.seconds:
            return f"{self.preset}@{self.seconds:g}s"
        return f"{self.preset}@{self.epochs or PRESETS[self.preset].recipe.epochs}ep"


def config(preset, k, epochs=None):
    return get_preset(preset, patch=k, epochs=epochs)


def costs(arms, patches) -> dict:
    """Parameters and training FLOPs per image (forward + backward, counted by torch) of each (preset, K)."""
    out = {}
    for p in dict.fromkeys(a.preset for a in arms):
        for k in patches:
            model, _ = config(p, k)
            out[p, k] = dict(params=count_params(MLPNet(model)), gflops=train_flops_per_image(model) / 1e9)
    return out


def plan_epochs(arm: Arm, patches, device, precision, probes: dict, rows: list[dict], train_limit=None,
                probe_seconds=6.0, log=print, calibrations: dict | None = None) -> dict:
    """Each K's epochs in `arm`. An equal-time arm's budget is converted to this CPU's seconds at the ratio
    calibrated here (mlp/budget.calibrate), and its epochs come from K's seconds per epoch here: the mean over
    the runs of an equal-epochs arm of the same preset already in this study (whole epochs, all the data, this
    hardware), else a probe of `probe_seconds` of steps (repeat probes disagree by up to ~20 %). Calibrations
    and probes are kept by hardware (and preset and K), so that a resumed study plans the same epochs."""
    if not arm.seconds:
        return {k: arm.epochs or PRESETS[arm.preset].recipe.epochs for k in patches}
    if device.type != "cpu":
        raise ValueError(f"arm {arm.label}: a budget of development-CPU seconds is a CPU's; on {device.type} give "
                         f"the arm in epochs (PRESET@Nep)")
    where = hardware.describe(device)
    calibrations = {} if calibrations is None else calibrations
    if where not in calibrations:
        calibrations[where] = budget.calibrate(device, log=log)
    here = arm.seconds / calibrations[where]["ratio"]
    out = {}
    for k in patches:
        measured = [r["sec_per_epoch"] for r in rows if r["preset"] == arm.preset and r["patch"] == k
                    and r["arm"].endswith("ep") and r.get("hardware") == where and not r["train_limit"]
                    and not r.get("capped")]
        key = f"{arm.preset} K={k} on {where}, {precision}"
        if measured:
            per_epoch, how = statistics.mean(measured), f"the mean of {len(measured)} equal-epoch runs"
        else:
            if key not in probes:
                probes[key] = budget.seconds_per_epoch(*config(arm.preset, k), seconds=probe_seconds, device=device,
                                                       precision=precision)
            per_epoch, how = probes[key], "a probe"
        out[k] = max(1, budget.epochs_within(here, per_epoch))
        log(f"{arm.label} K={k}: {per_epoch:.1f} s per epoch here ({how}) -> {out[k]} epochs in {here:.0f} s")
    return out


def row_key(r) -> str:
    """A row's identity: its network and recipe as the code reads them now (mlp/results.as_now: fields newer
    than the row at their defaults), its seed, limits and arm."""
    now = results.as_now(r) if r.get("recipe") and r.get("model") else None
    model, recipe = (now["model"], now["recipe"]) if now else (r.get("model"), None)
    return json.dumps([r["preset"], r["patch"], r["seed"], model, recipe, r["train_limit"],
                       r.get("eval_limit"), r.get("arm")], sort_keys=True)


def train_all(arms, patches, seeds, train_limit, device, precision, json_path: Path, command, resume=True,
              max_seconds=None, log=print, eval_limit=None, probe_seconds=6.0) -> list[dict]:
    """Every (arm, seed, K), interleaved by K within each seed (a drift of the machine's speed then falls on
    every K alike): one run, the best validation epoch kept, the test set evaluated once. The record is
    rewritten after every run (an interrupted study loses at most the run in progress); with `resume`, a row
    already in it is reused only where everything that made it is the same: arm, preset, K, seed, the whole
    model config and recipe, and the image limits. `max_seconds` caps each run (marked capped: no verdict)."""
    arms = [a if isinstance(a, Arm) else Arm.parse(a) for a in arms]
    dev = hardware.resolve_device(device)
    prec = hardware.resolve_precision(dev, precision)
    old = json.loads(json_path.read_text()) if resume and json_path.exists() else {}
    probes, calibrations = dict(old.get("probes", {})), dict(old.get("calibrations", {}))
    cost = costs(arms, patches)

    def set_aside():  # the record's rows this plan has not (yet) made: other parameters, another CPU's epochs
        return old.get("set_aside", []) + [r for key, r in done.items() if key not in used]
    done = {row_key(r): r for r in old.get("rows", [])}
    rows, reused, used = [], 0, set()
    for arm in sorted(arms, key=lambda a: bool(a.seconds)):  # equal epochs first: they time each K's epochs
        epochs = plan_epochs(arm, patches, dev, prec, probes, rows, train_limit, probe_seconds, log, calibrations)
        for s in seeds:
            for k in patches:
                model, recipe = config(arm.preset, k, epochs[k])
                wanted = json.loads(json.dumps(dict(arm=arm.label, preset=arm.preset, patch=k, seed=s,
                                                    model=model.to_dict(), recipe=recipe.to_dict(),
                                                    train_limit=train_limit, eval_limit=eval_limit)))
                r = done.get(row_key(wanted))
                used.add(row_key(wanted))
                from_record = r is not None
                reused += from_record
                if not from_record:
                    cfg = RunConfig(preset=arm.preset, seed=s, device=dev, precision=prec, train_limit=train_limit,
                                    eval_limit=eval_limit, max_seconds=max_seconds, live=False, progress=False)
                    result = run(model, recipe, cfg, log=quiet)
                    h = result.history
                    best = best_record(h)
                    r = dict(wanted, epochs=recipe.epochs, **cost[arm.preset, k],
                             sec_per_epoch=statistics.mean(e["seconds"] for e in h), epochs_run=len(h),
                             train_seconds=sum(e["seconds"] for e in h), capped=len(h) < recipe.epochs,
                             best_epoch=best["epoch"], val_acc=best["val_acc"], test_acc=result.test_acc,
                             hardware=hardware.describe(dev), history=h)
                rows.append(r)
                save(json_path, rows, command, dev, prec, arms, patches, seeds, train_limit, eval_limit,
                     probes=probes, calibrations=calibrations, set_aside=set_aside())
                log(f"{arm.label:>12} K={k} seed {s}: val {r['val_acc']:.4f}  test {r['test_acc']:.4f}  "
                    f"{r['sec_per_epoch']:.1f} s/epoch x {r['epochs_run']}" + ("  (capped)" if r.get("capped") else "")
                    + ("  (reused from the record)" if from_record else ""))
    if done:
        log(f"reused {reused} of {len(rows)} runs from {json_path} (same arm, preset, K, seed, model, recipe and "
            f"limits); its other {len(done) - reused} rows are kept in its set_aside list, not summarised")
    return rows


def save(json_path: Path, rows, command, dev, prec, arms, patches, seeds, train_limit, eval_limit=None,
         probes=None, calibrations=None, set_aside=None, **extra) -> dict:
    record = dict(command=command, git_commit=records.git_commit(), hardware=hardware.describe(dev), device=str(dev),
                  precision=prec, torch=torch.__version__, complete=bool(extra),
                  parameters=dict(arms=[a.label for a in arms], patches=patches, seeds=seeds, train_limit=train_limit,
                                  eval_limit=eval_limit),
                  probes=probes or {}, calibrations=calibrations or {}, rows=rows, set_aside=set_aside or [], **extra)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    records.atomic_write(json_path, json.dumps(record, indent=2))
    return record


def finish(json_path: Path, rows, command, dev, prec, arms, patches, seeds, train_limit, eval_limit, summary,
           verdicts) -> dict:
    """The complete record: the rows with their summary and verdicts, keeping the probes and calibrations that
    `train_all` wrote (a resumed study plans its epochs from them)."""
    old = json.loads(json_path.read_text())
    return save(json_path, rows, command, dev, prec, arms, patches, seeds, train_limit, eval_limit,
                probes=old.get("probes"), calibrations=old.get("calibrations"), set_aside=old.get("set_aside"),
                summary=summary, verdict=verdicts, rule=RULE)


def speed_cpu(rows, arm: str) -> str:
    """The CPU an arm's seconds are compared on: the one that ran most of its rows (the first such, on a tie).
    Accuracy pools every CPU's seeds; seconds from two CPUs never mix."""
    counts = {}
    for r in rows:
        if r["arm"] == arm:
            counts[r["hardware"]] = counts.get(r["hardware"], 0) + 1
    return max(counts, key=counts.get)


def summarize(rows) -> list[dict]:
    """Mean ± standard deviation over seeds for each (arm, K), in the order the rows were planned; seconds per
    epoch over the runs on the arm's `speed_cpu` only (`sec_runs` of them)."""
    summary = []
    for arm, k in dict.fromkeys((r["arm"], r["patch"]) for r in rows):
        rs = [r for r in rows if r["arm"] == arm and r["patch"] == k]
        cpu = speed_cpu(rows, arm)
        timed = [r for r in rs if r["hardware"] == cpu]
        (va, va_sd), (te, te_sd) = (records.mean_std(r[f] for r in rs) for f in ("val_acc", "test_acc"))
        sec, sec_sd = records.mean_std(r["sec_per_epoch"] for r in timed) if timed else (float("nan"), 0.0)
        summary.append(dict(arm=arm, preset=rs[0]["preset"], patch=k, patches=(28 // k) ** 2, runs=len(rs),
                            epochs=rs[0]["epochs"], params=rs[0]["params"], gflops=rs[0]["gflops"],
                            sec_per_epoch=sec, sec_std=sec_sd, sec_runs=len(timed), sec_hardware=cpu, val_acc=va,
                            val_std=va_sd, test_acc=te, test_std=te_sd, capped=any(r.get("capped") for r in rs)))
    return summary


def arm_of(r: dict) -> str:
    """A summary row's arm (records made before arms had one per preset)."""
    return r["arm"] if "arm" in r else r["preset"]


def judge(a: dict, b: dict, field: str, higher_is_better: bool, samples: tuple | None = None):
    """Two summary rows (K=4 first) by Welch's t-test (mlp/results.compare) on `field`: the Verdict, or None
    for a one-seed or capped row. `samples`: the two rows' per-round values from the speed table, which judge
    speed where the table timed both networks."""
    if a.get("capped") or b.get("capped"):
        return None
    if samples is not None:
        v = results.compare("a", samples[0], "b", samples[1], higher_is_better)
    else:
        sd = {"test_acc": "test_std", "val_acc": "val_std", "sec_per_epoch": "sec_std"}[field]
        n = "sec_runs" if field == "sec_per_epoch" else "runs"  # seconds: the runs on one CPU (summarize)
        v = results.compare_stats("a", (a[field], a.get(sd, 0.0), a.get(n, a["runs"])), "b",
                                  (b[field], b.get(sd, 0.0), b.get(n, b["runs"])), higher_is_better)
    return None if v.p is None else v


def compare(a: dict, b: dict, field: str, higher_is_better: bool, samples: tuple | None = None) -> str | None:
    """`judge` as "a", "b" or "tie"; None (no verdict) for a one-seed or capped row."""
    v = judge(a, b, field, higher_is_better, samples)
    return None if v is None else v.winner or "tie"


RULE = ("A K is more accurate than another only where Welch's two-sided t-test on test accuracy over seeds gives "
        "p < 0.05; faster likewise, on seconds per epoch over the development CPU's speed-table rounds where it "
        "timed both networks (`make speed`), else over the runs on one CPU (accuracy pools every CPU's seeds). "
        "Otherwise: no significant difference. One-seed and capped rows get no verdict.")


def table_speeds(rows, dev: dict | None) -> dict[int, list[float]]:
    """K -> seconds per epoch in each round of the development CPU's speed table, for the K the table timed
    (the rows' networks, found by their speed fingerprint); {} without a table or for a GPU study's rows."""
    if not dev:
        return {}
    out = {}
    for r in rows:
        fp = results.record_fingerprint(dict(r, precision="fp32")) if "model" in r else None
        name = next((n for n, row in dev["networks"].items() if row["fingerprint"] == fp), None)
        if name and str(r.get("device", "cpu")).startswith("cpu"):
            out.setdefault(r["patch"], results.seconds_per_epoch(name, dev))
    return {k: v for k, v in out.items() if v}


def verdict(summary, speeds: dict[int, list[float]] | None = None) -> list[str]:
    """For each arm: K=4 against each other K on test accuracy and on seconds per epoch, by `compare`; the
    claim holds where K=4 is both more accurate and faster than every other K."""
    out, speeds = [], speeds or {}
    for arm in dict.fromkeys(map(arm_of, summary)):
        rs = {r["patch"]: r for r in summary if arm_of(r) == arm}
        if 4 not in rs or len(rs) < 2:
            continue
        four, parts, holds = rs[4], [], True
        for k in (k for k in rs if k != 4):
            samples = (speeds[4], speeds[k]) if 4 in speeds and k in speeds else None
            accuracy = judge(four, rs[k], "test_acc", True)
            acc = None if accuracy is None else accuracy.winner or "tie"
            fast = compare(four, rs[k], "sec_per_epoch", False, samples)
            if acc is None or fast is None:
                why = ("capped" if four.get("capped") or rs[k].get("capped") else "one seed" if acc is None else
                       "fewer than two runs of each K timed on one CPU")
                parts.append(f"against K={k}: no verdict ({why})")
                holds = None
                continue
            words = {"a": "K=4 more accurate", "b": f"K={k} more accurate", "tie": "no significant difference"}
            speed = {"a": "K=4 faster", "b": f"K={k} faster", "tie": "no significant difference in speed"}
            secs = (f"{statistics.median(samples[0]):.1f} vs {statistics.median(samples[1]):.1f} s/epoch in the "
                    f"speed table" if samples else f"{four['sec_per_epoch']:.1f} vs {rs[k]['sec_per_epoch']:.1f} s/epoch")
            parts.append(f"against K={k}: {words[acc]} ({100 * (four['test_acc'] - rs[k]['test_acc']):+.2f} points, "
                         f"{results.p_text(accuracy.p)}), {speed[fast]} ({secs})")
            holds = holds and acc == "a" and fast == "a"
        claim = ("no verdict" if holds is None else "the claim holds" if holds else "the claim does not hold")
        timed = f"; seconds from {four.get('sec_runs', four['runs'])} of them on {four.get('sec_hardware', 'one CPU')}"
        out.append(f"`{arm}` (n={four['runs']} seeds per K{timed if not speeds else ''}): {'; '.join(parts)}: {claim}.")
    return out


def plot(summary, png_path: Path, prec, device_type):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for arm in dict.fromkeys(map(arm_of, summary)):
        rs = [r for r in summary if arm_of(r) == arm]
        ks = [r["patch"] for r in rs]
        ax1.errorbar(ks, [100 * r["test_acc"] for r in rs], yerr=[100 * r["test_std"] for r in rs], marker="o",
                     capsize=3, label=f"{arm} (n={rs[0]['runs']})")
        ax2.errorbar(ks, [r["sec_per_epoch"] for r in rs], yerr=[r.get("sec_std", 0.0) for r in rs], marker="o",
                     capsize=3, label=arm)
    ax1.set(xlabel="patch size K", ylabel="test accuracy (%)", xticks=ks, title="accuracy (mean ± sd over seeds)")
    ax2.set(xlabel="patch size K", ylabel="seconds per epoch", xticks=ks, title=f"training time ({prec}, {device_type})")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    return fig


def study(arms=("quick@10ep", "quick@600s"), patches=(2, 4, 7), seeds=(0, 1, 2), train_limit=None, eval_limit=None,
          device="auto", precision="auto", json_path="results/patch_study.json", png_path="results/patch_study.png",
          command="study.study()", resume=True, max_seconds=None, log=print, probe_seconds=6.0) -> dict:
    """The whole study: train, summarise, judge, plot, and write the complete record. Returns the record."""
    arms = [a if isinstance(a, Arm) else Arm.parse(a) for a in arms]
    patches, seeds = list(patches), list(seeds)
    json_path, png_path = Path(json_path), Path(png_path)
    dev = hardware.resolve_device(device)
    prec = hardware.resolve_precision(dev, precision)
    rows = train_all(arms, patches, seeds, train_limit, dev, prec, json_path, command, resume, max_seconds, log,
                     eval_limit, probe_seconds)
    summary = summarize(rows)
    record = finish(json_path, rows, command, dev, prec, arms, patches, seeds, train_limit, eval_limit, summary,
                    verdict(summary))
    record["figure"] = plot(summary, png_path, prec, dev.type)
    return record
