"""results/render.py renders README tables from JSON and refuses malformed files."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "results"))
import render  # noqa: E402

MAKE_RUN = dict(test_acc=0.8912, val_acc=0.8976, best_epoch=6, epochs=6, train_seconds=351.2,
                notebook_wall_seconds=380, hardware="AMD EPYC (2 cores, 2 threads)", precision="fp32",
                params=160910, torch="2.14.1", git_commit="abc123")
README = "intro\n<!-- results:make_run -->\nold table\n<!-- /results:make_run -->\noutro\n"


def test_renders_the_table_from_json(tmp_path):
    (tmp_path / "make_run_cpu.json").write_text(json.dumps(MAKE_RUN))
    out = render.render(README, tmp_path)
    assert "old table" not in out and out.startswith("intro\n") and out.endswith("outro\n")
    assert "| test accuracy (10,000 test images, evaluated once) | 89.12 % |" in out
    assert "epoch 6" in out and "351 s" in out and "380 s" in out and "160,910" in out
    assert render.render(out, tmp_path) == out, "rendering is idempotent"


@pytest.mark.parametrize("content,message", [("{not json", "is not valid JSON"),
                                             (json.dumps({"test_acc": 0.9}), "lacks")])
def test_malformed_json_fails_with_the_file_named(tmp_path, content, message):
    (tmp_path / "make_run_cpu.json").write_text(content)
    with pytest.raises(render.ResultsError, match=message) as e:
        render.render(README, tmp_path)
    assert "make_run_cpu.json" in str(e.value)


def test_cli_reports_malformed_file_and_leaves_readme_alone(tmp_path):
    (tmp_path / "make_run_cpu.json").write_text("{")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    script = tmp_path / "render.py"
    script.write_text((ROOT / "results" / "render.py").read_text())
    r = subprocess.run([sys.executable, str(script), "--readme", str(readme)], capture_output=True, text=True)
    assert r.returncode == 1 and "not valid JSON" in r.stderr
    assert readme.read_text() == README


def test_committed_readme_is_rendered_from_committed_results():
    r = subprocess.run([sys.executable, "results/render.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
