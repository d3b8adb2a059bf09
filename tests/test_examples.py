"""examples/: both training scripts run through main(argv) on tiny images with random loss weights;
resume, the engines' agreement, the degradation and the metrics against independent references; the
README's training-loop snippet runs as written."""
import csv
import json
import math
import pathlib
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # the scripts import their shared module as `common`

import style_transfer  # noqa: E402
import super_resolution  # noqa: E402
from perfloss.checkpoint import read_training_state  # noqa: E402
from perfloss.evaluate.sr import gaussian_blur  # noqa: E402
from perfloss.models import SuperResolutionNet, TransformNet  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:perfloss. .* has random weights")

SIZE = 32


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Five smooth random photographs-to-be (PNG and JPEG, a sub-folder), larger than the crops."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        coarse = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((44 + 2 * k, 40), Image.BICUBIC)
        image.save(root / ("sub" if k == 4 else ".") / (f"photo{k}.jpg" if k == 3 else f"photo{k}.png"))
    return root


def run(script, out, folder, *extra, steps=2, engine="lean"):
    argv = ["--weights", "random", "--images", str(folder), "--size", str(SIZE), "--batch-size", "2",
            "--holdout", "1", "--steps", str(steps), "--engine", engine, "--out", str(out), "--no-progress",
            "--device", "cpu", *extra]
    assert script.main(argv) == 0


def checkpoint(out):
    """(step, generator state dict, history) of a run's checkpoint."""
    state = read_training_state(pathlib.Path(out) / "checkpoint.pt")
    return state["step"], state["objects"]["generator"], state["extra"]["history"]


def test_style_transfer_trains_and_writes_its_outputs(one_thread, tmp_path, image_folder):
    run(style_transfer, tmp_path, image_folder, "--sample-every", "1", "--norm", "batch",
        "--style", str(image_folder / "photo3.jpg"))
    with open(tmp_path / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["engine"] == "lean" and history["args"]["size"] == SIZE
    assert [r["loss"] for r in history["losses"]] == [float(r["loss"]) for r in rows]
    assert (tmp_path / "samples" / "step_000001.png").is_file() and (tmp_path / "samples" / "step_000002.png").is_file()
    assert (tmp_path / "loss_curve.png").is_file()
    step, generator, _ = checkpoint(tmp_path)
    assert step == 2
    torch.manual_seed(0)
    initial = TransformNet(norm="batch")
    trained = TransformNet(norm="batch")
    trained.load_state_dict(generator)  # the batch-norm variant's keys, all present
    assert not torch.equal(trained.to_rgb[1].weight, initial.to_rgb[1].weight)


def test_style_transfer_defaults_to_the_scikit_image_photographs(one_thread, tmp_path):
    argv = ["--weights", "random", "--size", str(SIZE), "--batch-size", "1", "--steps", "1",
            "--style-size", "40", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    assert style_transfer.main(argv) == 0
    assert (tmp_path / "samples" / "step_000001.png").is_file()


@pytest.mark.parametrize("loss", ["johnson", "basicsr"])
def test_super_resolution_trains_and_measures_psnr_ssim(one_thread, tmp_path, image_folder, loss):
    run(super_resolution, tmp_path, image_folder, "--loss", loss, steps=1)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["loss"] == super_resolution.LOSS_LABELS[loss]
    (evaluation,) = history["evaluations"]
    # PSNR recomputed here from the formula, on the held-out image: the folder's first, centre-cropped.
    with Image.open(image_folder / "photo0.png") as image:
        w, h = image.size
        left, top = (w - SIZE) // 2, (h - SIZE) // 2
        crop = np.asarray(image.convert("RGB").crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32)
    target = torch.from_numpy(crop / 255).permute(2, 0, 1)[None]
    net = SuperResolutionNet(4)
    net.load_state_dict(checkpoint(tmp_path)[1])
    with torch.no_grad():
        output = net.eval()(super_resolution.low_resolution(target, 4, 1.0))
    mse = (output.double() - target.double()).square().mean().item()
    assert evaluation["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert 0 < evaluation["ssim"] < 1 and 0 < evaluation["bicubic_ssim"] < 1
    assert evaluation["bicubic_psnr"] > evaluation["psnr"]  # one step from random init: bicubic is far better


def test_psnr_ssim_wiring():
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 24, 24, generator=gen)
    noisy = (target + 0.05 * torch.randn(2, 3, 24, 24, generator=gen)).clamp(0, 1)
    got = super_resolution.psnr_ssim(noisy, target)
    mse = (noisy.double() - target.double()).square().mean(dim=(1, 2, 3))
    assert got["psnr"] == pytest.approx((10 * torch.log10(1 / mse)).mean().item(), rel=1e-9)
    # SSIM of colour images: the mean of the channels' SSIM with a data range of 1
    per_channel = [structural_similarity(t.numpy().astype(np.float64), n.numpy().astype(np.float64), data_range=1.0)
                   for b in range(2) for t, n in zip(target[b], noisy[b])]
    assert got["ssim"] == pytest.approx(np.mean(per_channel), rel=1e-9)
    with np.errstate(divide="ignore"):  # the PSNR of identical images is infinite
        assert super_resolution.psnr_ssim(target, target)["ssim"] == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0])
def test_gaussian_blur_matches_scipy(sigma):
    from scipy import ndimage

    x = torch.rand(2, 3, 20, 26, dtype=torch.float64)
    expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    torch.testing.assert_close(gaussian_blur(x, sigma), torch.from_numpy(expected),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("factor", [2, 4])
def test_low_resolution_is_blur_then_pillow_bicubic(factor):
    from scipy import ndimage

    x = torch.rand(1, 3, 40, 48)
    blurred = ndimage.gaussian_filter(x[0].double().numpy(), sigma=(0, 1.0, 1.0), mode="mirror", truncate=3.0)
    expected = np.stack([np.asarray(Image.fromarray(c.astype(np.float32)).resize((48 // factor, 40 // factor),
                                                                                  Image.BICUBIC))
                         for c in blurred]).clip(0, 1)
    got = super_resolution.low_resolution(x, factor, 1.0)
    assert got.shape == (1, 3, 40 // factor, 48 // factor)
    torch.testing.assert_close(got[0], torch.from_numpy(expected), rtol=0, atol=1e-5)


def test_resume_continues_to_the_same_parameters(one_thread, tmp_path, image_folder):
    run(super_resolution, tmp_path / "straight", image_folder, steps=3)
    run(super_resolution, tmp_path / "resumed", image_folder, "--checkpoint-every", "1", steps=2)
    with pytest.raises(SystemExit, match="--resume"):  # never overwrites a run by accident
        run(super_resolution, tmp_path / "resumed", image_folder, steps=3)
    run(super_resolution, tmp_path / "resumed", image_folder, "--resume", steps=3)
    _, straight, straight_history = checkpoint(tmp_path / "straight")
    step, resumed, resumed_history = checkpoint(tmp_path / "resumed")
    assert step == 3 and (tmp_path / "resumed" / "checkpoint.pt.prev").is_file()
    for key, value in straight.items():  # parameters and batch-norm statistics
        assert torch.equal(resumed[key], value), key
    assert [r["loss"] for r in resumed_history["losses"]] == [r["loss"] for r in straight_history["losses"]]
    assert [e["step"] for e in resumed_history["evaluations"]] == [2, 3]


@pytest.mark.parametrize("script", [style_transfer, super_resolution], ids=["style", "sr"])
def test_eager_and_lean_train_to_the_same_parameters(one_thread, tmp_path, image_folder, script):
    for engine in ("eager", "lean"):
        run(script, tmp_path / engine, image_folder, "--sample-every", "3", "--measure-peak", steps=3, engine=engine)
    (_, eager, eager_history), (_, lean, lean_history) = checkpoint(tmp_path / "eager"), checkpoint(tmp_path / "lean")
    assert eager.keys() == lean.keys()
    for key in eager:
        torch.testing.assert_close(lean[key], eager[key], rtol=1e-5, atol=1e-5, msg=key)
    # the second step's peak: the same generator, a loss network that keeps less for backward
    assert eager_history["peak_memory"]["step"] == lean_history["peak_memory"]["step"] == 2
    assert 0 < lean_history["peak_memory"]["bytes"] < eager_history["peak_memory"]["bytes"]


@pytest.mark.parametrize("script, argv, file", [
    (style_transfer, [], "vgg16-397923af.pth"),
    (super_resolution, ["--loss", "basicsr"], "vgg19-dcbb9e9d.pth"),
])
def test_missing_imagenet_weights_stop_with_the_offline_option(tmp_path, monkeypatch, script, argv, file):
    from perfloss.backbones import weights

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights, "download", offline)
    with pytest.raises(SystemExit) as err:
        script.main([*argv, "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert file in str(err.value.code) and "--weights random" in str(err.value.code)
    assert not (tmp_path / "out").exists()  # it stopped before any work


@pytest.mark.parametrize("script, option", [(style_transfer, "--style"), (super_resolution, "--loss")])
def test_help_lists_the_options(capsys, script, option):
    with pytest.raises(SystemExit) as err:
        script.main(["--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    for name in ("--engine", "--device", "--steps", "--batch-size", "--size", "--out", "--images", "--weights",
                 "--resume", option):
        assert name in text


@pytest.mark.parametrize("script, argv, option", [
    (super_resolution, ["--size", "30"], "--size"),
    (super_resolution, ["--blur-sigma", "-1"], "--blur-sigma"),
    (style_transfer, ["--steps", "0"], "--steps"),
    (style_transfer, ["--engine", "fast"], "--engine"),
    (style_transfer, ["--images", "/nonexistent/folder"], "--images"),
    (style_transfer, ["--style", "/nonexistent/style.jpg"], "--style"),
])
def test_bad_arguments_name_the_option(capsys, tmp_path, script, argv, option):
    with pytest.raises(SystemExit) as err:
        script.main([*argv, "--weights", "random", "--out", str(tmp_path), "--device", "cpu"])
    assert err.value.code == 2
    assert option in capsys.readouterr().err


def test_readme_training_loop_runs(one_thread):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Training loop"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the snippet uses random weights, which warn
        exec(compile(code, "README training loop", "exec"), {})
