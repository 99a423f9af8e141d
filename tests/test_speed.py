"""The speed table (`make speed`, mlp/speed.py) on a tiny run: its schema, its interleaved rounds, the steal and
load readings and the repeat of a round taken under load; CPUs identified by model, flags and cores. Its
numbers are a benchmark's, not asserted here."""
import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from mlp import cpu, results, speed
from mlp.recipe import get_preset

TINY = ["--rounds", "2", "--seconds", "0.2", "--train-limit", "512"]


def test_the_speed_cli_writes_a_table_of_interleaved_rounds(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tools.speed", "--only", "softmax-60", "lenet-60", *TINY,
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (path,) = tmp_path.glob("*.json")
    t = json.loads(path.read_text())
    assert path.stem == t["key"] == cpu.key(cpu.identity()) and t["cpu"] == cpu.identity()
    assert t["schema"] == speed.SCHEMA and t["torch"] and t["command"].startswith("python -m tools.speed")
    assert len(t["rounds"]) >= 2 and all(rd["order"] == ["softmax-60", "lenet-60"] for rd in t["rounds"])
    for rd in t["rounds"]:
        assert rd["readable"] and 0 <= rd["steal"] <= 1 and 0 <= rd["others"] <= 1
        assert rd["under_load"] == (rd["steal"] > speed.STEAL or rd["others"] > speed.OTHERS)
    assert set(t["rounds_used"]) <= {rd["index"] for rd in t["rounds"]}
    for name in ("softmax-60", "lenet-60"):
        row = t["networks"][name]
        model, recipe = get_preset(name)
        assert row["fingerprint"] == results.fingerprint(model.to_dict(), recipe.to_dict(), "fp32")
        assert row["train_epoch_s"]["n"] == len(t["rounds_used"]) or t["under_load"]
        assert 0 < row["train_epoch_s"]["min"] <= row["train_epoch_s"]["median"] <= row["train_epoch_s"]["max"]
        assert row["eval_s"]["median"] > 0 and row["views"] == model.views
    again = subprocess.run([sys.executable, "-m", "tools.speed", "--only", "softmax-60", *TINY, "--out",
                            str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    merged = json.loads(path.read_text())["networks"]
    assert set(merged) == {"softmax-60", "lenet-60"}, "a partial table keeps the networks it did not time"


def test_an_unknown_network_is_refused_naming_the_choices(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tools.speed", "--only", "resnet", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown network(s) ['resnet']: choose from" in r.stderr and "quick" in r.stderr
    assert not list(tmp_path.iterdir())


def test_a_round_under_load_is_flagged_and_repeated():
    """Another process busy on the CPU during the first round: that round is flagged, another is taken, and the
    medians come from the rounds without load."""
    busy = []

    def timer(model, recipe, precision, seconds):
        if not busy:  # the first round's first network: a second process spins while it is timed
            busy.append(subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\n"
                                          "while time.time() - t < 3: pass"]))
            busy[0].wait()
        start = time.perf_counter()
        while time.perf_counter() - start < 0.05:
            pass
        return dict(train_epoch_s=1.0, eval_s=0.5, eval_one_s=0.25, steps=1)
    nets = {"softmax-60": get_preset("softmax-60")}
    t = speed.measure(nets, rounds=2, seconds=0.1, timer=timer, log=lambda *_: None)
    first = t["rounds"][0]
    assert first["under_load"] and first["others"] > speed.OTHERS, first
    clean = [r["index"] for r in t["rounds"] if not r["under_load"]]
    assert len(t["rounds"]) == (4 if len(clean) < 2 else 3 if len(clean) == 2 and clean[-1] == 2 else len(t["rounds"]))
    if t["under_load"]:  # the host stayed busy (another job): every round is used, and the table says so
        assert len(clean) < 2 and t["rounds_used"] == [r["index"] for r in t["rounds"]] and len(t["rounds"]) == 4
    else:
        assert t["rounds_used"] == clean and 0 not in clean and len(clean) == 2


def test_cpus_are_identified_by_model_flags_and_cores():
    epyc = "model name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n"
    zen4 = "model name\t: AMD EPYC\nflags\t\t: avx2 avx512f avx512_bf16\n"
    ident = cpu.identity(epyc, cores=2, env={})
    assert ident == dict(model="AMD EPYC", cores=2, flags=["avx2"], isa="AVX2", caps=[]) and cpu.is_dev(ident)
    assert cpu.key(ident) == "amd-epyc-2c-avx2"
    assert not cpu.is_dev(cpu.identity(zen4, cores=2, env={})), "AVX-512 is another CPU"
    assert not cpu.is_dev(cpu.identity(epyc, cores=4, env={})), "so are four cores"
    capped = cpu.identity(epyc, cores=2, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not cpu.is_dev(capped) and cpu.key(capped) == "amd-epyc-2c-avx2-onednn-max-cpu-isa-avx2"
    assert cpu.is_dev("AMD EPYC (2 cores, 2 threads, AVX2)")
    assert not cpu.is_dev("AMD EPYC (2 cores, 2 threads, AVX2, ONEDNN_MAX_CPU_ISA=AVX2)")
    assert not cpu.is_dev("Intel(R) Xeon(R) Processor (2 cores, 2 threads, AMX)")
    assert not cpu.is_dev("NVIDIA H200") and cpu.from_hardware("NVIDIA H200") is None
    assert cpu.from_hardware("Intel(R) Xeon(R) Processor (2 cores, 2 threads, AMX)")["isa"] == "AMX"


def test_steal_and_other_processes_are_read_as_shares_of_the_hosts_time():
    before = dict(busy=100.0, idle=100.0, steal=0.0, total=200.0)
    after = dict(busy=160.0, idle=120.0, steal=20.0, total=300.0)
    load = cpu.load_between(before, after, own=40.0)  # 100 s of host time: 20 stolen, 60 busy of which 40 ours
    assert load == pytest.approx(dict(steal=0.2, others=0.2, readable=True))
    assert cpu.load_between(None, after, 1.0) == dict(steal=0.0, others=0.0, readable=False)
    now = cpu.stat_times()
    assert now is None or (now["total"] >= now["busy"] + now["steal"] and now["steal"] >= 0)


def test_a_one_step_epoch_is_timed_by_its_start_alone():
    """An epoch of a single step has no steps after its first to take a rate from (it divided by zero)."""
    import torch

    from mlp import data
    from mlp.loop import Trainer
    from mlp.nets import build_net
    model, recipe = get_preset("softmax-60")
    loaders = data.loaders(recipe, train_limit=recipe.batch_size, eval_limit=64)
    trainer = Trainer(build_net(model), recipe, loaders, torch.device("cpu"), "fp32")
    assert len(trainer.train_iter) == 1 and speed.epoch_seconds(trainer, 0.5) > 0
