"""Every GPU result in one command (on an H200, more than one 15-minute window: run it in parts with --skip;
docs/results.md says what one window held):

  1. `best` x 3 seeds            -> OUT/runs/best-gpu-seed{0,1,2}.json
  2. the `seed` network, 200 epochs, test accuracy per epoch (curve only) -> OUT/runs/seed-curve-gpu.json
  3. the patch-size study at equal epochs (3 seeds, K 2/4/7, `seed` then `quick`, 10 epochs each,
     interleaved by K; a study cut short keeps its rows so far) -> OUT/patch_study_gpu.json/.png (not
     patch_study.json: copied into results/, it must not replace the CPU study)
  4. the speed benchmark against the d2l-style loop on the same GPU -> OUT/bench_gpu.json

    make gpu-results                                  # python3 -m tools.gpu_results --out gpu-results
    FASHION_MNIST_DIR=data python3 -m tools.gpu_results --out gpu-results   # a machine without internet
    python -m tools.gpu_results --dry-run --out /tmp/g      # the same programme on the CPU, tiny (CI runs it)

Parts 1 and 2 run at once as separate processes on the one GPU (a run of these small networks cannot fill
it), each capped by --cap seconds of training (a capped run says so: `capped: true`, and is not the full
recipe). The study then runs alone, so that its seconds per epoch are not shared, under the same cap per
run (its verdict gives none where a row was capped); the benchmark runs last, alone (the dry run, which
times nothing, starts it first). Before anything trains, a probe times 30 steps of each network and
OUT/plan.json records the estimate against the caps. Whatever finishes is kept. Copy OUT/* into results/
and run `python -m tools.render` to put the numbers into README.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "gpu"


def probe_ms_per_step(preset, device, precision, steps=30, warmup=10) -> float:
    """Milliseconds per training step of a preset's network and batch, alone on the device."""
    from mlp import data, hardware
    from mlp.loop import Trainer, fit
    from mlp.recipe import get_preset
    from model import MLPNet
    dev = hardware.resolve_device(device)
    model, recipe = get_preset(preset, epochs=1, val_size=0)
    times = []
    for n in (warmup, steps) if warmup else (steps,):
        loaders = data.loaders(recipe, device=dev, train_limit=n * recipe.batch_size)
        h = fit(Trainer(MLPNet(model), recipe, loaders, dev, hardware.resolve_precision(dev, precision)),
                log=lambda s: None, progress=False)
        times.append(h[0]["seconds"] / len(loaders[0]))
    return 1000 * times[-1]


def plan(args, parts) -> dict:
    """Estimated training seconds of each part from the probe (alone; concurrent parts share the GPU)."""
    from mlp.recipe import get_preset
    steps = {}
    for preset in ("best", "seed", "quick"):
        _, r = get_preset(preset)
        steps[preset] = (r.epochs if not args.dry_run else 1, -(-(60000 - r.val_size) // r.batch_size))
    probe = dict(steps=1, warmup=0) if args.dry_run else {}  # the dry run checks the path, not the timing
    ms = {p: probe_ms_per_step(p, args.device, args.precision, **probe) for p in steps}
    est = {p: ms[p] * e * n / 1000 for p, (e, n) in steps.items()}
    out = dict(ms_per_step=ms, full_recipe_training_s=est, cap_s=args.cap, parts=list(parts),
               fits_in_cap={p: est[p] <= args.cap for p in est}, note="probe alone on the device; the parts "
               "run concurrently, so each gets a share of it")
    print(json.dumps(out, indent=1), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-results")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="auto")
    p.add_argument("--cap", type=float, default=300, help="training seconds per run, at most (default 300)")
    p.add_argument("--dry-run", action="store_true", help="the whole programme on the CPU with tiny sizes")
    p.add_argument("--skip", nargs="*", default=[], choices=["best", "curve", "study", "bench"])
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.cap = "cpu", 60
    out = Path(args.out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    from mlp import records
    records.git_commit()
    started = time.time()
    tiny = ["--epochs", "1", "--train-limit", "256", "--eval-limit", "128"] if args.dry_run else []
    common = ["--device", args.device, "--precision", args.precision, "--quiet", "--max-seconds", str(args.cap)]
    jobs = {}
    if "best" not in args.skip:
        for s in (0, 1) if args.dry_run else (0, 1, 2):  # (the dry run: two seeds show the path)
            jobs[f"best-seed{s}"] = ([sys.executable, "train.py", "--preset", "best", "--seed", str(s), *common, *tiny,
                                      "--out", str(out / "work" / f"best-{TAG}-seed{s}")], f"best-{TAG}-seed{s}")
    if "curve" not in args.skip:
        jobs["seed-curve"] = ([sys.executable, "train.py", "--preset", "seed", "--test-curve", *common, *tiny,
                               "--out", str(out / "work" / f"seed-curve-{TAG}")], f"seed-curve-{TAG}")
    study = None
    if "study" not in args.skip:
        params = dict(seeds=[0] if args.dry_run else [0, 1, 2], patches=[4, 7] if args.dry_run else [2, 4, 7],
                      arms=["seed@1ep", "quick@1ep"] if args.dry_run else ["seed@10ep", "quick@10ep"],  # the seed's own claim first
                      train_limit=256 if args.dry_run else None, eval_limit=128 if args.dry_run else None)
        code = ("from mlp import study; import json; study.study(**json.loads({!r}), device={!r}, precision={!r}, json_path={!r}, "
                "png_path={!r}, command={!r}, resume=False, max_seconds={!r})").format(
            json.dumps(params), args.device, args.precision, str(out / "patch_study_gpu.json"),
            str(out / "patch_study_gpu.png"), "python -m tools.gpu_results (patch study)", args.cap)
        study = [sys.executable, "-c", code]
    # The benchmark times the device alone, after the other parts; the dry run times nothing (tiny sizes on
    # the CPU) and starts it first, beside the probe and the parts.
    bench = None if "bench" in args.skip else (
        [sys.executable, "-m", "tools.bench", "--device", args.device, "--precision", args.precision,
         "--out", str(out / "bench_gpu.json")] + (["--quick"] if args.dry_run else ["--acc-epochs", "2"]))
    procs = {"bench": subprocess.Popen(bench, cwd=ROOT, stdout=open(out / "bench.log", "w"), stderr=subprocess.STDOUT)
             } if bench and args.dry_run else {}
    plan_record = plan(args, jobs)
    # The parts share the machine's cores: one thread pool each of its share, not one each of all of them.
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // max(1, len(jobs)))))
    procs.update({name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(out / f"{name}.log", "w"),
                                         stderr=subprocess.STDOUT) for name, (cmd, _) in jobs.items()})
    status = {name: p.wait() for name, p in procs.items()}
    if study:  # alone: its seconds per epoch are the device's, not a share of it
        status["study"] = subprocess.run(study, cwd=ROOT, stdout=open(out / "study.log", "w"),
                                         stderr=subprocess.STDOUT).returncode
    for name, (_, keep) in jobs.items():
        metrics = out / "work" / (keep or "") / "metrics.json"
        if keep and metrics.exists():
            m = json.loads(metrics.read_text())
            m["command"] = f"python -m tools.gpu_results ({m['command']})"
            records.atomic_write(out / "runs" / f"{keep}.json", json.dumps(m, indent=2))
    if bench and not args.dry_run:
        status["bench"] = subprocess.run(bench, cwd=ROOT, stdout=open(out / "bench.log", "w"),
                                         stderr=subprocess.STDOUT).returncode
    shutil.rmtree(out / "work", ignore_errors=True)  # checkpoints: not results
    summary = dict(plan=plan_record, exit_codes=status, wall_seconds=time.time() - started,
                   git_commit=records.git_commit(), dry_run=args.dry_run,
                   files=sorted(str(f.relative_to(out)) for f in out.rglob("*.json")))
    records.atomic_write(out / "gpu_results.json", json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("exit_codes", "wall_seconds", "files")}, indent=1))
    return 0 if all(c == 0 for c in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
