"""predict.py on real test images saved as PNG: same answers as in memory; bad files; light backgrounds."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT, main_here, train_here
from mlp.checkpoint import load_model
from mlp.evaluate import Views, logits
from predict import load_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    r = train_here("--epochs", "1", "--batch-size", "64", "--train-limit", "3000", "--eval-limit", "500", "--quiet",
                   "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out / "model.pt"


def predict(*args):
    return subprocess.run([sys.executable, "predict.py", *args], cwd=ROOT, capture_output=True, text=True)


def predict_here(*args):
    """predict.py's command line in this process (refusals and load errors: the process boundary is not what
    those tests check; a new process spends ~4 s importing torch)."""
    return main_here("predict", *args)


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
        probs = torch.softmax(logits(net, images.unsqueeze(1).float() / 255, Views.of(net.cfg)), dim=1)  # its views
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
    r = predict_here("--checkpoint", str(checkpoint), str(text), str(good), str(cut), str(tmp_path / "missing.png"))
    assert r.returncode == 1
    assert f"{good}: 1. " in r.stdout and r.stdout.count("\n") == 1
    for bad in (text, cut):
        assert f"error: {bad}: not a readable image" in r.stderr
    assert f"error: {tmp_path / 'missing.png'}: no such file" in r.stderr
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


def bomb_png(path, side=30_000):
    """A valid PNG of side x side 1-bit pixels, all zero: ~110 KB on disk, 900 megapixels declared."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    z, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_hostile_inputs_each_get_one_line_and_bounded_memory(arrays, checkpoint, tmp_path):
    """A decompression bomb, a truncated JPEG, a 16-bit PNG, a CMYK JPEG, an animated GIF, text named .png, a
    directory and a missing path: one error line for each unreadable one, an answer for each readable one
    (the same as the plain 8-bit image's), every file answered, exit 1."""
    img = arrays["test_x"][0].numpy()
    gray = Image.fromarray(img, mode="L")
    files = {}
    files["bomb"] = tmp_path / "bomb.png"
    bomb_png(files["bomb"])
    assert files["bomb"].stat().st_size < 300_000
    files["plain"] = tmp_path / "plain.png"
    gray.save(files["plain"])
    files["cut"] = tmp_path / "cut.jpg"
    gray.resize((200, 200)).save(files["cut"])
    files["cut"].write_bytes(files["cut"].read_bytes()[:300])
    files["deep"] = tmp_path / "deep.png"
    Image.fromarray(img.astype("uint16") * 257).save(files["deep"])  # 16 bits per pixel
    assert Image.open(files["deep"]).mode.startswith("I")
    files["cmyk"] = tmp_path / "cmyk.jpg"
    gray.convert("CMYK").resize((112, 112)).save(files["cmyk"], quality=95)
    files["gif"] = tmp_path / "anim.gif"
    other = Image.fromarray(arrays["test_x"][1].numpy(), mode="L")
    gray.save(files["gif"], save_all=True, append_images=[other], duration=100, loop=0)
    files["text"] = tmp_path / "notes.png"
    files["text"].write_text("hello")
    files["dir"] = tmp_path / "a-folder.png"
    files["dir"].mkdir()
    files["missing"] = tmp_path / "missing.png"
    p = subprocess.Popen([sys.executable, "predict.py", "--checkpoint", str(checkpoint), "--json",
                          *map(str, files.values())], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 1 and "Traceback" not in stderr
    answers = {r["file"]: r for r in json.loads(stdout)}
    assert list(answers) == list(map(str, files.values())), "every file answered, in order"
    errors = {k: answers[str(f)].get("error") for k, f in files.items()}
    assert "more than the 40 megapixels" in errors["bomb"] and "900000000 pixels" in errors["bomb"]
    assert errors["cut"].startswith("not a readable image") and errors["text"].startswith("not a readable image")
    assert errors["dir"] == "is a directory, not an image file" and errors["missing"] == "no such file"
    for k in ("bomb", "cut", "text", "dir", "missing"):
        assert stderr.count(f"error: {files[k]}: ") == 1, k
    top1 = lambda k: answers[str(files[k])]["top"][0]  # noqa: E731
    for k in ("deep", "cmyk", "gif"):
        assert "error" not in answers[str(files[k])], k
        assert top1(k)["label"] == top1("plain")["label"], f"{k}: the same answer as the 8-bit image"
    assert top1("deep")["prob"] == pytest.approx(top1("plain")["prob"], abs=1e-4), "16 bits scaled, not clipped"


def test_decoding_memory_is_bounded_for_a_bomb(checkpoint, tmp_path):
    """The bomb is refused from its header: the process peaks at what torch's import takes, far below the
    900 MP x 4 bytes the image would decode to."""
    import os
    bomb_png(tmp_path / "bomb.png")
    p = subprocess.Popen([sys.executable, "predict.py", "--checkpoint", str(checkpoint), str(tmp_path / "bomb.png")],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert usage.ru_maxrss / 1024 < 2000, f"peak RSS {usage.ru_maxrss / 1024:.0f} MB"


def test_top_must_be_between_1_and_10(checkpoint, tmp_path):
    r = predict_here("--checkpoint", str(checkpoint), "--top", "11", "x.png")
    assert r.returncode == 2 and "--top 11: there are 10 classes; give 1 to 10" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_old_layout_checkpoint_is_one_clear_line(tmp_path):
    old = tmp_path / "model.pt"
    torch.save({"config": {"patch": 4, "epochs": 7}, "preset": "quick", "state_dict": {}}, old)
    r = predict_here("--checkpoint", str(old), "x.png")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "written by an older version of this repo" in r.stderr


def saved_with(checkpoint, tmp_path, change):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"] = change(dict(ckpt["model"]))
    torch.save(ckpt, tmp_path / "model.pt")
    return tmp_path / "model.pt"


def huge(m):
    """dim 2**31 throughout: a few bytes in the file, terabytes if built."""
    big = 2 ** 31
    return dict(m, dim=big, blocks=[dict(tokens=b["tokens"], features=[big, b["features"][1], big]) for b in m["blocks"]])


@pytest.mark.parametrize("change,lines", [
    (lambda m: dict(m, act="swish"), ["act='swish' is not one of ('relu', 'gelu')"]),
    (lambda m: dict(m, widht=3, depth=2), ["unknown model config fields ['depth', 'widht']"]),
    (lambda m: dict(m, dim="wide"), ["dim='wide' should be an int"]),
    (huge, ["stem.embed.weight: the file holds [64, 16], the config makes [2147483648, 16]",
            "classifier.head.weight: the file holds [10, 64], the config makes [10, 2147483648]"]),
])
def test_a_model_pt_with_a_bad_config_is_named_line_by_line_before_the_net_is_built(checkpoint, tmp_path, change,
                                                                                   lines):
    bad = saved_with(checkpoint, tmp_path, change)
    if change is huge:  # in a process of its own: were the net built, it would ask for terabytes
        p = subprocess.Popen([sys.executable, "predict.py", "--checkpoint", str(bad), str(tmp_path / "x.png")],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, stderr = p.communicate(timeout=120)
        code = p.returncode
    else:
        r = predict_here("--checkpoint", str(bad), str(tmp_path / "x.png"))
        code, stderr = r.returncode, r.stderr
    assert code == 1 and "Traceback" not in stderr and f"error: cannot load {bad}" in stderr
    for line in lines:
        assert f"\n  {line}" in stderr, stderr


def test_a_file_is_decoded_only_by_the_allowed_formats(arrays, checkpoint, tmp_path, monkeypatch):
    """An EPS file named photo.png would have Pillow run Ghostscript on it: it is refused before any EPS code
    runs, with one line naming the formats read, and the other files still get answers."""
    from PIL import EpsImagePlugin

    from predict import predict_files
    eps = tmp_path / "photo.png"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n0 0 moveto 28 28 lineto stroke\nshowpage\n%%EOF\n")
    with Image.open(eps) as im:
        assert im.format == "EPS", "Pillow alone takes it for what it is"
    opened = []
    original = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or original(self))
    good = tmp_path / "good.png"
    Image.fromarray(arrays["test_x"][0].numpy(), mode="L").save(good)
    results = predict_files(load_model(checkpoint), [eps, good])
    assert opened == [], "no EPS code ran"
    assert results[0]["error"].startswith("not a readable image") and "PNG, JPEG, GIF, BMP, TIFF, WebP" in results[0]["error"]
    assert "top" in results[1]


@pytest.mark.parametrize("error", [NotImplementedError, OverflowError, MemoryError, __import__("struct").error])
def test_what_pillows_own_fuzzing_expects_is_one_bad_file_not_an_aborted_batch(arrays, checkpoint, tmp_path,
                                                                               monkeypatch, error):
    """Pillow's fuzzers treat these exceptions from a hostile file as expected; such a file cannot be made to
    order, so the decoder step raises it here."""
    import predict
    files = []
    for i in range(2):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(arrays["test_x"][i].numpy(), mode="L").save(files[-1])
    real = predict.to_gray8
    calls = []

    def decode(im):
        calls.append(1)
        if len(calls) == 1:
            raise error("hostile")
        return real(im)
    monkeypatch.setattr(predict, "to_gray8", decode)
    results = predict.predict_files(load_model(checkpoint), files)
    assert results[0]["error"].startswith(f"not a readable image ({error.__name__}") and "top" in results[1]
