"""The layout README describes: the top level, and imports that point one way (CLIs, notebooks and tools/ on
top, the library mlp/ below them, the networks model.py and baselines.py at the bottom; nothing imports my_utils.py or results/)."""
import ast
import json

from conftest import ROOT

LAYERS = {"model": 0, "baselines": 0, "mlp": 1, "train": 2, "predict": 2, "tools": 2, "my_utils": 2}  # a module imports lower only


def project_imports(path):
    """The project modules a file imports (first name of each import: mlp, model, my_utils, results, ...)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & (set(LAYERS) | {"results", "data", "loop", "recipe", "checkpoint", "hardware", "study", "bench"})


def layer(path):
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_the_top_level_holds_what_readme_says():
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["baselines.py", "model.py", "my_utils.py", "predict.py",
                                                          "train.py"]
    for d in ("notebooks", "mlp", "tools", "results", "docs", "tests"):
        assert (ROOT / d).is_dir(), d
    assert not list((ROOT / "results").rglob("*.py")), "results/ holds recorded data only"


def test_imports_point_one_way():
    files = [*ROOT.glob("*.py"), *(ROOT / "mlp").glob("*.py"), *(ROOT / "tools").glob("*.py")]
    wrong = []
    for f in files:
        for name in project_imports(f):
            if name not in LAYERS or name == "my_utils" or LAYERS[name] >= LAYERS[layer(f)] and name != layer(f):
                wrong.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong
    for bottom in ("model.py", "baselines.py"):
        assert not project_imports(ROOT / bottom), f"{bottom} is the bottom: it imports nothing of the project"


def test_the_notebooks_import_the_facade_and_the_library_only():
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        tree = ast.parse(code)
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert not names & {"results", "tools", "train", "data", "loop", "recipe", "study"}, (nb.name, names)
