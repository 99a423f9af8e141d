"""Side-by-side training benchmark: the d2l-chapter reference loop vs ours, MFU, time to 90 % (`default` and
`sprint`), peak memory.

    python -m tools.bench              # full (its longest part trains `quick` to 90 % validation)
    python -m tools.bench --quick      # CI-sized: a few batches each, no time-to-90 run

Everything is measured in this one process on this one machine; speed is reported as a ratio against the
reference measured in the same run. Writes bench.json (see --out).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mlp import data, hardware, plots, records
from mlp.evaluate import Views, evaluate_accuracy
from mlp.loop import Trainer, fit
from mlp.optim import Muon, MuonAdamW, orthogonalise
from mlp.recipe import get_preset
from mlp.runner import RunConfig, quiet, run
from model import Dropout, MLPNet, train_flops_per_image

ROOT = Path(__file__).resolve().parents[1]


def with_torch_dropout(net: nn.Module) -> nn.Module:
    """The network as the d2l chapter builds it: torch's nn.Dropout in place of model.Dropout's cheaper mask."""
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))
    return net


def reference_run(model, recipe, device, batches=None, epochs=1, warmup=5, train_limit=None, root=None) -> dict:
    """The d2l chapter's way (train_ch6): ToTensor dataset, 4 workers, each batch moved to `device`, float(loss)
    and a host-side accuracy every batch.

    `batches`: time that many batches after `warmup` ones. Otherwise train `epochs` whole epochs, timed from
    the first batch, and report the test accuracy (d2l's evaluation: ToTensor, DataLoader)."""
    from torchvision import datasets, transforms
    raw = data.fetch_fashion_mnist(root)
    sets = [datasets.FashionMNIST(str(raw.parent.parent), train=t, transform=transforms.ToTensor()) for t in (1, 0)]
    if train_limit:
        sets = [torch.utils.data.Subset(d, range(min(train_limit, len(d)))) for d in sets]
    loader = torch.utils.data.DataLoader(sets[0], recipe.batch_size, shuffle=True, num_workers=4)
    torch.manual_seed(0)
    net, loss_f = with_torch_dropout(MLPNet(model)).to(device), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    seen, step, t0 = 0, 0, time.perf_counter()
    for _ in range(epochs if batches is None else 10 ** 6):
        net.train()
        for X, y in loader:
            if batches is not None and step == warmup:
                t0, seen = time.perf_counter(), 0
            if batches is not None and step == warmup + batches:
                break
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            loss = loss_f(y_hat, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()                                 # the per-batch host syncs of d2l's Accumulator:
            float((y_hat.argmax(1) == y).sum())        # and d2l's accuracy(), a count read on the host
            seen, step = seen + len(y), step + 1
        if batches is not None and step >= warmup + batches:
            break
    out = dict(img_s=seen / (time.perf_counter() - t0), test_acc=None)
    if batches is None:
        test = torch.utils.data.DataLoader(sets[1], 256, num_workers=4)
        out["test_acc"] = evaluate_accuracy(net, test, device, views=Views.of(model))  # our views: loops compared
    return out


def ours_run(model, recipe, device, precision, batches=None, epochs=1, warmup=5, train_limit=None) -> dict:
    """Our training loop, the same network and batch size. `batches`: img/s of a fit on that many batches,
    after a warm-up fit; otherwise `epochs` whole epochs on all 60,000 training images (no validation split,
    like the reference), img/s over all of them, and the test accuracy."""
    runs = [warmup, batches] if batches is not None else [None]
    for n in runs:
        r = dataclasses.replace(recipe, epochs=epochs if batches is None else 1, val_size=0)
        limit = n * r.batch_size if n is not None else train_limit
        loaders = data.loaders(r, device=device, train_limit=limit, eval_limit=train_limit)  # the reference's test images
        torch.manual_seed(0)
        net = MLPNet(model)
        h = fit(Trainer(net, r, loaders, device, precision), log=lambda s: None, progress=False)
    out = dict(img_s=loaders[0].num_examples * len(h) / sum(r["seconds"] for r in h), test_acc=None)
    if batches is None:
        out["test_acc"] = evaluate_accuracy(net, loaders[2], device, precision, Views.of(model))
    return out


def speedup(ours_img_s, reference_img_s) -> float | None:
    """How many times the reference loop's images per second ours trains (None without a reference)."""
    return ours_img_s / reference_img_s if reference_img_s else None


def mfu(img_s, model_gflops, peak_gflops) -> float:
    """Model FLOPs utilisation: the training FLOP/s achieved over the measured matmul peak."""
    return img_s * model_gflops / peak_gflops


def matmul_peak_gflops(device, dtype, n=2048, seconds=2.0) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def reached_90(record: dict) -> bool:
    return record["val_acc"] >= 0.90


def time_to_90(preset, device, precision):
    """Train a preset's recipe, validating after every epoch (whatever its val_every and val_from); wall seconds
    (train + validation) until validation accuracy first >= 90 % (training stops there)."""
    model, recipe = get_preset(preset, val_every=1, val_from=1)
    cfg = RunConfig(preset=preset, device=device, precision=precision, live=False, progress=False)
    history = run(model, recipe, cfg, log=quiet, until=reached_90).history
    seconds, epoch = records.time_to_accuracy(history, 0.90)
    return dict(time_to_90_s=seconds, epoch_90=epoch), history


def profile_step(preset, device, precision, steps=10, top=8) -> dict:
    """Where one training step of `preset` spends its time: torch.profiler's top ops by self time."""
    from torch.profiler import ProfilerActivity, profile
    model, recipe = get_preset(preset)
    net = MLPNet(model).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    X = torch.rand(recipe.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (recipe.batch_size,), device=device)

    def step():
        with hardware.autocast(device, precision):
            loss = nn.functional.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events)
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return dict(preset=preset, step_ms=total / steps / 1e3,
                top_ops=[dict(op=e.key, share=getattr(e, key) / total, calls=e.count) for e in rows])


def live_overhead(device, precision, preset="quick") -> dict:
    """What the notebook's live curves cost inside one training epoch, against the epoch: the extra reads of
    the on-device sums (host syncs), and redrawing the figure and encoding it as PNG (what a Jupyter update
    does) each time."""
    from types import SimpleNamespace
    model, recipe = get_preset(preset, epochs=1)
    trainer = Trainer(MLPNet(model), recipe, data.loaders(recipe, device=device), device, precision)
    animator, drawing, syncs, reduce = plots.training_animator(1), [], [], trainer._reduced

    def timed_reduce(sums):
        t = time.perf_counter()
        out = reduce(sums)
        syncs.append(time.perf_counter() - t)
        return out

    def on_progress(x, loss, acc):
        t = time.perf_counter()
        animator.add(x, (loss, acc, None))
        animator.png()
        drawing.append(time.perf_counter() - t)
    trainer._reduced = timed_reduce
    r = trainer.fit_epoch(1, SimpleNamespace(requested=False), on_progress=on_progress)
    extra_sync_s = sum(syncs[:-1])  # the last read ends the epoch: not extra
    return dict(preset=preset, epoch_s=r["seconds"], updates=len(drawing), sync_s=extra_sync_s,
                sync_share=extra_sync_s / r["seconds"], update_s=sum(drawing), share=sum(drawing) / r["seconds"],
                device=str(device), hardware=hardware.describe(device), precision=precision,
                git_commit=records.git_commit(), command="python -m tools.bench --live-overhead")


def muon_ns_cost(device, preset="default", steps=20) -> dict:
    """One Muon step of a preset's backbone matrices (random gradients) with Newton-Schulz in bf16, as
    torch.optim.Muon always does, and in fp32; and which of the two MuonAdamW takes on this device."""
    model, recipe = get_preset(preset)
    opt = MuonAdamW(MLPNet(model).to(device), recipe)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ms = {}
    for name in ("bf16", "fp32"):
        matrices = [p.detach().clone().requires_grad_() for g in opt.muon.param_groups for p in g["params"]]
        muon = Muon(matrices, ns_dtype=hardware.DTYPES[name], lr=recipe.lr, adjust_lr_fn="match_rms_adamw")
        for p in matrices:
            p.grad = torch.randn_like(p)
        for _ in range(3):
            muon.step()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            muon.step()
        sync()
        ms[name] = (time.perf_counter() - t0) / steps * 1e3
    group = opt.muon.param_groups[0]  # the orthogonalisation itself, on a 128 x 384 feature matrix
    m, n = 128, 384
    flops = group["ns_steps"] * 2 * (2 * m * m * n + m ** 3)  # per iteration: X X^T (m x m), A A, B X (m x n)
    gflops = {}
    for name in ("bf16", "fp32"):
        x = torch.randn(m, n, device=device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            orthogonalise(x, group["ns_coefficients"], group["ns_steps"], group["eps"], hardware.DTYPES[name])
            reps += 1
        sync()
        gflops[name] = flops * reps / (time.perf_counter() - t0) / 1e9
    steps_per_epoch = -(-(60_000 - recipe.val_size) // recipe.batch_size)  # Fashion-MNIST's training set
    return dict(preset=preset, matrices=len(matrices), step_ms=ms, matmul_gflops=gflops, steps_per_epoch=steps_per_epoch,
                used="bf16" if opt.muon.ns_dtype == torch.bfloat16 else "fp32", device=str(device),
                hardware=hardware.describe(device), torch=torch.__version__, git_commit=records.git_commit(),
                command="python -m tools.bench --muon-ns")


def peak_rss_mb_of_training(args) -> float:
    """Peak resident memory of one separate `train.py` default run, that child alone (os.wait4's rusage; the
    reference's DataLoader workers are other children and do not count)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "train.py", "--preset", "default", "--epochs", "1", "--quiet", "--out", out,
               "--device", args.device]
        if args.quick:
            cmd += ["--train-limit", "256", "--eval-limit", "64"]
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few batches each; skip the time-to-90 %% run")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=hardware.PRECISIONS)
    p.add_argument("--out", default="bench.json")
    p.add_argument("--acc-epochs", type=int, default=2,
                   help="whole epochs of the seed network in both loops, for speed and test accuracy")
    p.add_argument("--live-overhead", action="store_true",
                   help="only measure what the live curves cost within one `quick` epoch (writes it to --out)")
    p.add_argument("--muon-ns", action="store_true",
                   help="only time a Muon step with Newton-Schulz in bf16 and in fp32 (writes it to --out)")
    p.add_argument("--profile-only", action="store_true",
                   help="only profile one training step of each preset (writes the profile to --out)")
    args = p.parse_args(argv)
    records.git_commit()  # read now: the code this run starts with
    device = hardware.resolve_device(args.device)
    precision = hardware.resolve_precision(device, args.precision)
    if args.live_overhead:
        result = live_overhead(device, precision)
        records.atomic_write(args.out, json.dumps(result, indent=2))
        print(f"live curves in a {result['epoch_s']:.1f} s epoch: {result['updates']} extra host syncs "
              f"{result['sync_s'] * 1e3:.2f} ms ({result['sync_share']:.3%}); drawing + PNG {result['update_s']:.2f} s "
              f"({result['share']:.2%})")
        return result
    if args.muon_ns:
        result = muon_ns_cost(device)
        records.atomic_write(args.out, json.dumps(result, indent=2))
        print(f"a Muon step of {result['matrices']} matrices: {result['step_ms']['bf16']:.1f} ms with bf16 "
              f"Newton-Schulz, {result['step_ms']['fp32']:.1f} ms with fp32; MuonAdamW uses {result['used']} here")
        return result
    if args.profile_only:
        prof = dict(device=str(device), hardware=hardware.describe(device), precision=precision, torch=torch.__version__,
                    git_commit=records.git_commit(), profiles=[profile_step(p, device, precision) for p in ("seed", "default")])
        records.atomic_write(args.out, json.dumps(prof, indent=2))
        for pr in prof["profiles"]:
            print(f"{pr['preset']}: {pr['step_ms']:.0f} ms/step; " +
                  ", ".join(f"{o['op']} {o['share']:.0%}" for o in pr["top_ops"]))
        return prof
    batches, warmup = (4, 2) if args.quick else (60, 5)
    # seed: whole epochs of both loops, so that their accuracies can be compared; default: img/s only
    plans = {"seed": dict(epochs=1 if args.quick else args.acc_epochs, train_limit=512 if args.quick else None),
             "default": dict(batches=batches, warmup=warmup)}
    rows = {}
    for preset, plan in plans.items():
        model, recipe = get_preset(preset)
        ref = reference_run(model, recipe, device, **plan)
        ours = ours_run(model, recipe, device, precision, **plan)
        rows[preset] = dict(reference_img_s=ref["img_s"], ours_img_s=ours["img_s"],
                            speedup=speedup(ours["img_s"], ref["img_s"]),
                            reference_test_acc=ref["test_acc"], ours_test_acc=ours["test_acc"],
                            model_gflops=train_flops_per_image(model) / 1e9, **plan)
        if recipe.optimizer == "muon":  # what Muon's orthogonalisation costs: the same run with AdamW instead
            rows[preset]["ours_adamw_img_s"] = ours_run(model, dataclasses.replace(recipe, optimizer="adamw"), device,
                                                        precision, **plan)["img_s"]
        acc = (f"   test acc after {plan['epochs']} epoch(s): reference {ref['test_acc'] or float('nan'):.4f}, "
               f"ours {ours['test_acc']:.4f}" if "epochs" in plan else "")
        print(f"{preset:>8}: reference {ref['img_s'] or float('nan'):8.0f} img/s   ours {ours['img_s']:8.0f} img/s"
              f"   speedup {rows[preset]['speedup'] or float('nan'):.2f}x" + acc, flush=True)
    peak = matmul_peak_gflops(device, hardware.DTYPES[precision], seconds=0.5 if args.quick else 2.0)
    d = rows["default"]
    utilisation = mfu(d["ours_img_s"], d["model_gflops"], peak)
    result = dict(device=str(device), hardware=hardware.describe(device), precision=precision,
                  torch=torch.__version__, python=platform.python_version(), quick=args.quick,
                  git_commit=records.git_commit(), batches=batches,
                  reference_img_s=rows["seed"]["reference_img_s"], ours_img_s=rows["seed"]["ours_img_s"],
                  speedup=rows["seed"]["speedup"], presets=rows, peak_gflops=peak,
                  model_gflops=d["model_gflops"], mfu=utilisation)
    if args.quick:
        result.update(time_to_90_s=None, epoch_90=None)
    else:
        hit, history = time_to_90("default", device, precision)  # what `make run` trains
        result.update(hit, time_to_90_history=history)
        hit, history = time_to_90("sprint", device, precision)   # the fastest measured route to 90 %
        result["sprint"] = dict(hit, time_to_90_history=history)
    result["peak_rss_mb"] = peak_rss_mb_of_training(args)
    records.atomic_write(args.out, json.dumps(result, indent=2))
    print(f"peak matmul {peak:.0f} GFLOP/s ({precision}); default preset {d['model_gflops'] * 1e3:.1f} MFLOP "
          f"per training image -> MFU {utilisation:.1%}")
    sprint = f", sprint {result['sprint']['time_to_90_s']} s" if "sprint" in result else ""
    print(f"time to 90 % val: {result['time_to_90_s']} s (epoch {result['epoch_90']}){sprint}; "
          f"peak RSS of a training run {result['peak_rss_mb']:.0f} MB. Wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
