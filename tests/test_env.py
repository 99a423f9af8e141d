"""The environment the repo declares: floors that the code needs, and the tested versions that `make` installs."""
import importlib.metadata
import re
import tomllib

import pytest
import torch

from conftest import ROOT


def pins(name):
    """{package: (operator, version)} of a requirements-style file."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pkg, op, version = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(>=|==)\s*([0-9][^\s,;]*)", line).groups()
            out[pkg.lower()] = (op, version)
    return out


def version(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def floors() -> dict:
    """{package: (operator, version)} of pyproject.toml's dependencies and extras (the project's own extra,
    `mlp-fashion-mnist[notebook]` inside `test`, is not a package to pin)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    out = {}
    for line in lines:
        if line.startswith(project["name"]):
            continue
        pkg, op, version = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(>=|==)\s*([0-9][^\s,;]*)", line).groups()
        out[pkg.lower()] = (op, version)
    return out


def test_the_floors_admit_only_releases_the_code_runs_on():
    """torch.optim.Muon (recipe.Muon's base class) first shipped in torch 2.9; torchvision 0.24 is its match."""
    req = floors()
    assert all(op == ">=" for op, _ in req.values()), "pyproject.toml holds lower bounds only"
    assert version(req["torch"][1]) >= (2, 9) and version(req["torchvision"][1]) >= (0, 24)
    assert hasattr(torch.optim, "Muon")


def test_make_installs_the_tested_versions_of_everything_it_requires():
    req, tested = floors(), pins("constraints.txt")
    assert set(req) <= set(tested), f"not pinned in constraints.txt: {sorted(set(req) - set(tested))}"
    for pkg, (op, v) in tested.items():
        assert op == "==", f"constraints.txt: {pkg} must be pinned with =="
        assert importlib.metadata.version(pkg) == v, f"{pkg}: installed {importlib.metadata.version(pkg)}, tested {v}"
        if pkg in req:
            assert version(v) >= version(req[pkg][1]), f"{pkg}: the tested {v} is below the floor {req[pkg][1]}"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'pip install .*-e "\.\[test\]" -c constraints\.txt', makefile)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert importlib.metadata.version(project["name"]) == project["version"], "make installs the project itself"


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_a_gpu_takes_bf16_only_where_it_runs_natively(monkeypatch, native, expected):
    """A V100 or T4 reports bf16 as supported by emulation only: there `auto` is fp16 (no GPU here, so the GPU's
    answer is set: emulation counts unless the caller excludes it, as torch's own function does)."""
    from mlp import hardware
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert hardware.resolve_precision(torch.device("cuda"), "auto") == expected
    assert hardware.native_bf16(torch.device("cuda")) is native
