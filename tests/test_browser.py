"""The notebook as a person sees it: JupyterLab (started by `make lab`) in headless Chromium, all cells run,
the live figure watched while it trains. Needs Debian's chromium and Playwright for Python: `make test`
installs both where it can; elsewhere this test skips with one line saying how to enable it, and in CI
(CI=true) it fails instead of skipping."""
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, check_live_curves

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KERNEL_READY = """() => { const w = window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }"""
PARAMS = dict(epochs=2, batch_size=64, train_limit=6000, eval_limit=500, precision="fp32")


def need(ok: bool, how: str):
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {how}")
        pytest.skip(how)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """`make lab` on a free port with a token, no browser of its own; stopped with its kernels at the end."""
    port, token = free_port(), secrets.token_hex(16)
    args = (f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token} "
            f"--LabApp.expose_app_in_browser=True --LabApp.news_url=None --LabApp.check_for_updates_class="
            f"jupyterlab.NeverCheckForUpdate --LabApp.workspaces_dir={tmp_path / 'workspaces'}")
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(["make", "lab", f"LAB_ARGS={args}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
            assert time.time() < deadline, "JupyterLab did not start within 120 s"
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", token
    os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    time.sleep(1)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)  # no process of the session is left behind


def training_cell_state(page):
    """(running, [image data of the training cell's outputs], its text) from the DOM."""
    return page.evaluate("""() => {
        const cells = [...document.querySelectorAll('.jp-CodeCell')];
        const cell = cells.find(c => c.querySelector('.jp-InputArea').textContent.includes('result = run('));
        if (!cell) return [false, [], ''];
        cell.scrollIntoView({block: 'start'});  // what a person watching the training would look at
        const prompt = cell.querySelector('.jp-InputPrompt').textContent;
        const imgs = [...cell.querySelectorAll('.jp-OutputArea img')].map(i => i.src);
        return [prompt.includes('*'), imgs, cell.querySelector('.jp-Cell-outputWrapper').textContent];
    }""")


@pytest.fixture
def run_dir(tmp_path):
    """The run's directory: under JupyterLab's root (the checkout) so that the notebook opens by URL, and moved
    into tmp_path when the test ends, so that the user's runs/ (and their TensorBoard) never lists it."""
    (ROOT / "runs").mkdir(exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="browser-test-", dir=ROOT / "runs"))
    yield d
    shutil.move(str(d), str(tmp_path / "browser-run"))


def test_notebook_in_jupyterlab_shows_live_curves_widgets_and_the_venv_kernel(lab, run_dir):
    need(Path(CHROMIUM).exists(), "no chromium: on Debian/Ubuntu `apt-get install chromium` (make test does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "no playwright: `.venv/bin/pip install -r requirements.txt`")
    url, token = lab
    nb = nbformat.read(ROOT / "notebooks" / "fashion_mnist_mlp.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in dict(PARAMS, out_dir=str(run_dir)).items())
    nbformat.write(nb, run_dir / "notebook.ipynb")
    rel = (run_dir / "notebook.ipynb").relative_to(ROOT)
    shots, seen, widgets = [], [], 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/{rel}?token={token}")
            page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-NotebookPanel')",
                                   timeout=120_000)
            page.wait_for_function(KERNEL_READY, timeout=120_000)  # connected to its kernel, idle
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")  # no await
            no = page.get_by_role("button", name="No", exact=True)
            if no.count():
                no.first.click()  # JupyterLab's "get news?" question
            deadline, started = time.time() + 600, False
            while time.time() < deadline:
                running, imgs, text = training_cell_state(page)
                started = started or running
                if running and imgs and imgs[-1] not in seen:
                    if not seen:
                        assert "epoch   1 " not in text, "the figure appears within the first epoch, not after it"
                    seen.append(imgs[-1])
                    shot = run_dir / f"jupyterlab-live-{min(len(seen), 3)}.png"  # 1, 2, then the latest
                    page.screenshot(path=str(shot), full_page=False)
                    shots.append(shot)
                    widgets += page.locator(".jp-OutputArea .widget-progress, .jp-OutputArea .progress-bar").count()
                if started and not running:
                    break
                time.sleep(0.1)
            page.wait_for_function("""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                .every(p => /\\[\\d+\\]/.test(p.textContent))""", timeout=300_000)
            page.screenshot(path=str(run_dir / "jupyterlab-done.png"), full_page=True)
            _, imgs, text = training_cell_state(page)
            body = page.evaluate("() => document.body.textContent")  # offscreen cells too
        finally:
            browser.close()
    assert widgets >= 1, "the tqdm progress bar renders as a widget while training"
    assert len(seen) >= 2, f"the live figure changed {len(seen)} time(s) while training; expected several"
    assert len(imgs) == 1, f"the training cell shows {len(imgs)} images; one figure updated in place"
    final = base64.b64decode(imgs[0].split(",", 1)[1])
    assert final == (run_dir / "curves.png").read_bytes(), "the figure ends with every epoch drawn (= curves.png)"
    assert f"epoch   {PARAMS['epochs']}" in text and "best val acc" in text, "the log reads under the figure"
    assert "Error displaying widget" not in body and "Traceback" not in body
    assert f"kernel: {ROOT / '.venv' / 'bin' / 'python'}" in body, "the kernel is the project's venv"
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["epochs"] == PARAMS["epochs"] and m["train_limit"] == PARAMS["train_limit"]
    check_live_curves(m)
    assert "warn" not in text.lower(), "no warning the user did not cause under the training cell"
    assert all(s.stat().st_size > 10_000 for s in shots)
