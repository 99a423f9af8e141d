"""predict.py on real test images saved as PNG: same answers as in memory; bad files; light backgrounds."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT
from predict import load_image, load_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    r = subprocess.run([sys.executable, "train.py", "--epochs", "1", "--batch-size", "64", "--train-limit", "3000",
                        "--quiet", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out / "model.pt"


def predict(*args):
    return subprocess.run([sys.executable, "predict.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_png_round_trip_matches_in_memory_predictions(arrays, checkpoint, tmp_path):
    images = arrays["test_x"][:16]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"test{i}.png")
        Image.fromarray(img.numpy(), mode="L").save(paths[-1])
    r = predict("--checkpoint", str(checkpoint), "--json", *map(str, paths))
    assert r.returncode == 0, r.stderr
    answers = json.loads(r.stdout)
    net = load_model(checkpoint)
    with torch.no_grad():
        probs = torch.softmax(net(images.unsqueeze(1).float() / 255), dim=1)
    top = probs.topk(3, dim=1)
    for a, values, idx in zip(answers, top.values, top.indices):
        assert [t["label"] for t in a["top"]] == [["t-shirt", "trouser", "pullover", "dress", "coat", "sandal",
                                                    "shirt", "sneaker", "bag", "ankle boot"][int(i)] for i in idx]
        assert [t["prob"] for t in a["top"]] == pytest.approx(values.tolist(), abs=1e-5)
        assert a["inverted"] is False


def test_unreadable_files_get_an_error_and_the_others_answers(arrays, checkpoint, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(arrays["test_x"][0].numpy(), mode="L").save(good)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    cut = tmp_path / "cut.jpg"
    Image.fromarray(arrays["test_x"][1].numpy(), mode="L").resize((200, 200)).save(cut)
    cut.write_bytes(cut.read_bytes()[:200])
    r = predict("--checkpoint", str(checkpoint), str(text), str(good), str(cut), str(tmp_path / "missing.png"))
    assert r.returncode == 1
    assert f"{good}: 1. " in r.stdout and r.stdout.count("\n") == 1
    for bad in (text, cut, tmp_path / "missing.png"):
        assert f"error: {bad}: not a readable PNG/JPEG image" in r.stderr
    assert "Traceback" not in r.stderr


def test_light_background_colour_photo_is_inverted_to_look_like_the_data(arrays, tmp_path):
    img = arrays["test_x"][0]
    # a dark object on white, in colour, 4x larger: what a phone photo of a garment on paper looks like
    rgb = Image.fromarray((255 - img).numpy(), mode="L").convert("RGB").resize((112, 112), Image.Resampling.NEAREST)
    rgb.save(tmp_path / "photo.jpg", quality=95)
    x, inverted = load_image(tmp_path / "photo.jpg")
    assert inverted and x.shape == (1, 28, 28)
    assert (x[0] - img.float() / 255).abs().mean() < 0.03


def test_non_square_image_keeps_its_aspect_ratio(tmp_path):
    im = Image.new("L", (60, 20), color=0)          # a 3:1 dark image with a light bar inside
    im.paste(255, (2, 2, 58, 18))
    im.save(tmp_path / "wide.png")
    x, inverted = load_image(tmp_path / "wide.png")
    assert not inverted and x.shape == (1, 28, 28)
    rows = (x[0] > 0.05).any(dim=1).nonzero().flatten()
    assert 7 <= len(rows) <= 10, "a 3:1 image becomes 28 x ~9, not 28 x 28"
    assert rows.min() >= 8 and rows.max() <= 19 and x[0, :8].max() == 0, "centred, padded with background"
