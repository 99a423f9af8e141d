"""The patch-size study: train presets at K x K patches for K in {2, 4, 7} over seeds, and judge the original's
claim that 4x4 beats 2x2 and 7x7 on training time and test accuracy. notebooks/patch_size_study.ipynb and
tools/gpu_results.py run it; results/patch_study.json holds the record that README renders.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from mlp import hardware, records
from mlp.loop import best_record
from mlp.recipe import Recipe, get_preset
from mlp.runner import RunConfig, quiet, run
from model import MLPNet, count_params, train_flops_per_image


def config(preset, k, epochs=None):
    return get_preset(preset, patch=k, epochs=epochs)


def costs(presets, patches, epochs) -> dict:
    """Parameters and training FLOPs per image (forward + backward, counted by torch) of each (preset, K)."""
    out = {}
    for p in presets:
        for k in patches:
            model, _ = config(p, k, epochs.get(p))
            out[p, k] = dict(params=count_params(MLPNet(model)), gflops=train_flops_per_image(model) / 1e9)
    return out


def train_all(presets, patches, seeds, epochs, train_limit, device, precision, json_path: Path, command,
              resume=True, max_seconds=None, log=print, eval_limit=None) -> list[dict]:
    """Every (preset, K, seed): one run, the best validation epoch kept, the test set evaluated once. The record
    is rewritten after every run (an interrupted study loses at most the run in progress); with `resume`, a row
    already in it is reused only where everything that made it is the same: preset, K, seed, the whole model
    config and recipe, and the image limits. `max_seconds` caps each run (marked capped)."""
    dev = hardware.resolve_device(device)
    prec = hardware.resolve_precision(dev, precision)
    cost = costs(presets, patches, epochs)
    def key(r):
        recipe = r.get("recipe") and Recipe(**r["recipe"]).to_dict()  # (fields newer than the row: their defaults)
        return json.dumps([r["preset"], r["patch"], r["seed"], r.get("model"), recipe, r["train_limit"],
                           r.get("eval_limit")], sort_keys=True)
    done = {}
    if resume and json_path.exists():
        done = {key(r): r for r in json.loads(json_path.read_text())["rows"]}
    rows, reused = [], 0
    for p in presets:
        for k in patches:
            for s in seeds:
                model, recipe = config(p, k, epochs.get(p))
                wanted = dict(preset=p, patch=k, seed=s, model=model.to_dict(), recipe=recipe.to_dict(),
                              train_limit=train_limit, eval_limit=eval_limit)
                r = done.get(key(json.loads(json.dumps(wanted))))  # (as JSON: tuples become lists)
                from_record = r is not None
                reused += from_record
                if not from_record:
                    cfg = RunConfig(preset=p, seed=s, device=dev, precision=prec, train_limit=train_limit,
                                    eval_limit=eval_limit, max_seconds=max_seconds, live=False, progress=False)
                    result = run(model, recipe, cfg, log=quiet)
                    h = result.history
                    best = best_record(h)
                    r = dict(wanted, epochs=recipe.epochs, **cost[p, k],
                             sec_per_epoch=statistics.mean(e["seconds"] for e in h), epochs_run=len(h),
                             capped=len(h) < recipe.epochs, best_epoch=best["epoch"], val_acc=best["val_acc"],
                             test_acc=result.test_acc, history=h)
                rows.append(r)
                save(json_path, rows, command, dev, prec, presets, patches, seeds, epochs, train_limit,
                     eval_limit=eval_limit)
                log(f"{p:>6} K={k} seed {s}: val {r['val_acc']:.4f}  test {r['test_acc']:.4f}  "
                    f"{r['sec_per_epoch']:.1f} s/epoch" + ("  (capped)" if r.get("capped") else "")
                    + ("  (reused from the record)" if from_record else ""))
    if done:
        log(f"reused {reused} of {len(rows)} runs from {json_path} (same preset, K, seed, model, recipe and limits); "
            f"its other {len(done) - reused} rows were left out")
    return rows


def save(json_path: Path, rows, command, dev, prec, presets, patches, seeds, epochs, train_limit, eval_limit=None,
         **extra) -> dict:
    record = dict(command=command, git_commit=records.git_commit(), hardware=hardware.describe(dev), device=str(dev),
                  precision=prec, torch=torch.__version__, complete=bool(extra),
                  parameters=dict(presets=presets, patches=patches, seeds=seeds, epochs=epochs, train_limit=train_limit,
                                  eval_limit=eval_limit),
                  rows=rows, **extra)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    records.atomic_write(json_path, json.dumps(record, indent=2))
    return record


def summarize(rows, presets, patches) -> list[dict]:
    """Mean ± standard deviation over seeds for each (preset, K)."""
    summary = []
    for p in presets:
        for k in patches:
            rs = [r for r in rows if r["preset"] == p and r["patch"] == k]
            (va, va_sd), (te, te_sd), (sec, _) = (records.mean_std(r[f] for r in rs)
                                                  for f in ("val_acc", "test_acc", "sec_per_epoch"))
            summary.append(dict(preset=p, patch=k, patches=(28 // k) ** 2, runs=len(rs), epochs=rs[0]["epochs"],
                                params=rs[0]["params"], gflops=rs[0]["gflops"], sec_per_epoch=sec, val_acc=va,
                                val_std=va_sd, test_acc=te, test_std=te_sd,
                                capped=any(r.get("capped") for r in rs)))
    return summary


def verdict(summary) -> list[str]:
    """For each preset: is K=4 the most accurate (mean test accuracy) and the fastest (seconds per epoch)?"""
    out = []
    for p in dict.fromkeys(r["preset"] for r in summary):
        rs = {r["patch"]: r for r in summary if r["preset"] == p}
        if 4 not in rs or len(rs) < 2:
            continue
        others = [k for k in rs if k != 4]
        acc = all(rs[4]["test_acc"] > rs[k]["test_acc"] for k in others)
        fast = all(rs[4]["sec_per_epoch"] < rs[k]["sec_per_epoch"] for k in others)
        best_acc = max(rs, key=lambda k: rs[k]["test_acc"])
        fastest = min(rs, key=lambda k: rs[k]["sec_per_epoch"])
        n_ep, n_seed = rs[4]["epochs"], rs[4]["runs"]
        out.append(f"`{p}` ({n_ep} epoch{'s' * (n_ep != 1)}, {n_seed} seed{'s' * (n_seed != 1)}): 4×4 is "
                   f"{'the most accurate' if acc else f'not the most accurate (K={best_acc} is)'} and "
                   f"{'the fastest' if fast else f'not the fastest (K={fastest} is)'}; the claim "
                   f"{'holds' if acc and fast else 'holds for accuracy only' if acc else 'holds for time only' if fast else 'does not hold'}.")
    return out


def plot(summary, png_path: Path, prec, device_type):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for p in dict.fromkeys(r["preset"] for r in summary):
        rs = [r for r in summary if r["preset"] == p]
        ks = [r["patch"] for r in rs]
        ax1.errorbar(ks, [100 * r["test_acc"] for r in rs], yerr=[100 * r["test_std"] for r in rs], marker="o",
                     capsize=3, label=f"{p} ({rs[0]['epochs']} epochs)")
        ax2.plot(ks, [r["sec_per_epoch"] for r in rs], marker="o", label=p)
    ax1.set(xlabel="patch size K", ylabel="test accuracy (%)", xticks=ks, title="accuracy")
    ax2.set(xlabel="patch size K", ylabel="seconds per epoch", xticks=ks, title=f"training time ({prec}, {device_type})")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    return fig


def study(presets=("seed", "quick"), patches=(2, 4, 7), seeds=(0, 1, 2), epochs=None, train_limit=None,
          eval_limit=None, device="auto", precision="auto", json_path="results/patch_study.json", png_path="results/patch_study.png",
          command="study.study()", resume=True, max_seconds=None, log=print) -> dict:
    """The whole study: train, summarise, judge, plot, and write the complete record. Returns the record."""
    presets, patches, seeds, epochs = list(presets), list(patches), list(seeds), dict(epochs or {})
    json_path, png_path = Path(json_path), Path(png_path)
    dev = hardware.resolve_device(device)
    prec = hardware.resolve_precision(dev, precision)
    rows = train_all(presets, patches, seeds, epochs, train_limit, dev, prec, json_path, command, resume,
                     max_seconds, log, eval_limit)
    summary = summarize(rows, presets, patches)
    record = save(json_path, rows, command, dev, prec, presets, patches, seeds, epochs, train_limit, eval_limit,
                  summary=summary, verdict=verdict(summary))
    record["figure"] = plot(summary, png_path, prec, dev.type)
    return record
