"""perfloss.evaluate and ``perfloss evaluate`` on data the tests make in tmp_path: BAPPS-format folders of
scikit-image's photographs distorted at two strengths, class-per-folder sets, image folders. References
are computed here (the lpips repository's 2AFC formula in numpy, scikit-image's PSNR / SSIM, scipy's
optimiser for the linear probe), never by the code under test."""
import csv
import io
import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import perfloss
from perfloss.cli import main as cli_main
from perfloss.evaluate import LossConfig, Settings, evaluate, loss_configs, write_heatmaps, write_table
from perfloss.evaluate import autoencoder as autoencoder_protocol
from perfloss.evaluate import sr as sr_protocol
from perfloss.evaluate import twoafc
from perfloss.evaluate.folders import bapps_triplets, class_folders
from perfloss.evaluate.probe import fit_linear_probe
from perfloss.images import sample_photographs, write_image
from perfloss.models.autoencoder import ConvAutoencoder

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:perfloss.*random weights")]

SIZE = 48  # the 2AFC patches' side (BAPPS: 64)
# (weak, strong) strength of each distortion
DISTORTIONS = {"blur": (0.7, 2.0), "noise": (0.03, 0.12), "jpeg": (60, 8)}


def _distort(image: Image.Image, kind: str, strength, rng) -> Image.Image:
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(strength))
    if kind == "noise":
        pixels = np.asarray(image, dtype=np.float64) / 255 + rng.normal(0, strength, (image.height, image.width, 3))
        return Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=strength)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def make_bapps(root: pathlib.Path, size: int = SIZE, seed: int = 0) -> dict:
    """A BAPPS-format folder: each photograph x each distortion is a triplet whose p0 / p1 are the weak and
    strong versions in random order; judge = the fraction preferring p1 = 1 where p1 is the weak one.
    Returns stem -> "p0" or "p1", the weak one."""
    rng = np.random.default_rng(seed)
    for name in ("ref", "p0", "p1", "judge"):
        (root / name).mkdir(parents=True)
    weak_is = {}
    for k, photo in enumerate(sample_photographs(size)):
        ref = Image.fromarray((photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        for kind, (weak, strong) in DISTORTIONS.items():
            stem = f"{k:02d}_{kind}"
            versions = [_distort(ref, kind, weak, rng), _distort(ref, kind, strong, rng)]
            weak_first = bool(rng.integers(2))
            p0, p1 = versions if weak_first else versions[::-1]
            ref.save(root / "ref" / f"{stem}.png")
            p0.save(root / "p0" / f"{stem}.png")
            p1.save(root / "p1" / f"{stem}.png")
            np.save(root / "judge" / f"{stem}.npy", np.array([0.0 if weak_first else 1.0]))
            weak_is[stem] = "p0" if weak_first else "p1"
    return weak_is


@pytest.fixture(scope="module")
def bapps(tmp_path_factory):
    root = tmp_path_factory.mktemp("bapps")
    return root, make_bapps(root)


def _photo_folder(root: pathlib.Path, photos, names) -> pathlib.Path:
    root.mkdir(parents=True)
    for name, photo in zip(names, photos):
        write_image(root / f"{name}.png", photo)
    return root


# -- configurations -----------------------------------------------------------------------------------
def test_loss_configs():
    configs = loss_configs(["vgg16", "resnet18"], "study", ["mse", "l1"])
    assert configs[:2] == [LossConfig("vgg16", "relu1_2", "mse"), LossConfig("vgg16", "relu1_2", "l1")]
    assert [c.layer for c in configs if c.distance == "mse"] == ["relu1_2", "relu2_2", "relu3_3", "relu5_3",
                                                                 "relu", "layer1", "layer2", "layer4"]
    named = loss_configs(["vgg16", "resnet18"], ["layer1", "relu2_2"], ["mse"])  # each network takes its own
    assert [(c.network, c.layer) for c in named] == [("vgg16", "relu2_2"), ("resnet18", "layer1")]
    assert len(loss_configs(["alexnet"], "all")) == 5
    for args, match in [((["vgg16"], ["relu9_9"]), "relu9_9"), ((["nonet"],), "unknown backbone"),
                        ((["vgg16"], "study", ["cosh"]), "distance"), ((["vgg16", "resnet18"], ["relu2_2"]),
                                                                        "none of the layers")]:
        with pytest.raises(ValueError, match=match):
            loss_configs(*args)


# -- 2AFC -----------------------------------------------------------------------------------------------
def test_score_2afc_formula():
    d0, d1 = [0.1, 0.5, 0.3, 0.2], [0.2, 0.4, 0.3, 0.9]
    judge = [0.25, 0.75, 0.6, 1.0]
    # by hand: p0 closer -> 1 - judge; p1 closer -> judge; a tie -> 1/2
    assert twoafc.score_2afc(d0, d1, judge) == pytest.approx((0.75 + 0.75 + 0.5 + 0.0) / 4)


@pytest.mark.parametrize("network, layer", [("vgg16", "relu2_2"), ("alexnet", "relu2"), ("resnet18", "layer1"),
                                            ("squeezenet1_1", "fire5")])
def test_2afc_ranks_the_weaker_distortion_closer(tmp_path, bapps, network, layer):
    """Random-weight networks, 33 triplets (11 photographs x blur, noise, JPEG), judgements 0 / 1, so the
    score is the fraction of triplets ranked right. Measured with these data (seed 0, 48x48, MSE): 1.000
    for each network here, and for every study tap of all 14 networks but squeezenet1_1 fire9 (0.939)
    and efficientnet_b7 stage7 (0.970). The threshold, 0.8 (27 of 33), leaves room for other random
    networks and Pillow versions, while a harness that mixed up p0 / p1 or the judgements would score
    about 1 - 0.8 or less, and one that paired files of different stems about 0.5."""
    root, weak_is = bapps
    config = LossConfig(network, layer, "mse")
    (result,) = evaluate([config], Settings("2afc", test=str(root), weights="none", size=SIZE), tmp_path,
                         progress=False)
    score = result["metrics"]["2afc"]
    print(f"2AFC {network} {layer}: {score:.3f}")
    assert result["metrics"]["triplets"] == len(weak_is) == 33
    # the same score from distances computed here, with the formula in numpy, the judgements from the files
    loss_fn = perfloss.PerceptualLoss(network, [layer], weights=None, reduction="none")
    triplets = bapps_triplets(root)
    stack = lambda part: torch.stack([perfloss.images.read_image(getattr(t, part)) for t in triplets])  # noqa: E731
    with torch.no_grad():
        d0, d1 = loss_fn(stack("p0"), stack("ref")).numpy(), loss_fn(stack("p1"), stack("ref")).numpy()
    judge = np.array([np.load(root / "judge" / f"{t.stem}.npy")[0] for t in triplets])
    expected = np.mean((d0 < d1) * (1 - judge) + (d1 < d0) * judge + (d0 == d1) * 0.5)
    assert score == pytest.approx(expected, abs=1e-12)
    weak_closer = np.mean([(d0[i] < d1[i]) == (weak_is[t.stem] == "p0") for i, t in enumerate(triplets)])
    assert score == pytest.approx(weak_closer)  # judgements of 0 / 1: the score is the fraction ranked right
    assert score >= 0.8


def test_bapps_layout_errors(tmp_path, bapps):
    root, _ = bapps
    with pytest.raises(FileNotFoundError, match="nowhere"):
        bapps_triplets(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.* has no ref/, p0/, p1/, judge/ sub-folder"):
        bapps_triplets(tmp_path / "empty")
    partial = tmp_path / "partial"
    for name in ("ref", "p0", "judge"):
        (partial / name).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"has no p1/ sub-folder"):
        bapps_triplets(partial)
    (partial / "p1").mkdir()
    with pytest.raises(ValueError, match=r"ref.* holds no"):  # the image sub-folders are empty
        bapps_triplets(partial)
    for name in ("ref", "p0", "p1"):
        for stem in ("a", "b"):
            (partial / name / f"{stem}.png").write_bytes((root / name / "00_blur.png").read_bytes())
    with pytest.raises(ValueError, match=r"judge.* holds no .npy"):
        bapps_triplets(partial)
    np.save(partial / "judge" / "a.npy", np.array([0.5]))
    with pytest.raises(ValueError, match=r"judge/ has no file for the stems b"):
        bapps_triplets(partial)
    np.save(partial / "judge" / "b.npy", np.array([1.5]))
    with pytest.raises(ValueError, match=r"b.npy.* one number in \[0, 1\]"):
        bapps_triplets(partial)
    np.save(partial / "judge" / "b.npy", np.array([0.25]))
    assert [(t.stem, t.judge) for t in bapps_triplets(partial)] == [("a", 0.5), ("b", 0.25)]
    (partial / "p0" / "a.jpg").write_bytes(b"")  # a second file of stem "a"
    with pytest.raises(ValueError, match=r"p0.* two files with the stem 'a'"):
        bapps_triplets(partial)


# -- super-resolution ------------------------------------------------------------------------------------
def test_sr_measures_against_scikit_image(tmp_path):
    """PSNR / SSIM of the test images, recomputed with scikit-image on a generator that upsamples by
    bicubic interpolation: the protocol's network-free baseline must equal it."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    photos = sample_photographs(40)[:2]
    test = _photo_folder(tmp_path / "test", photos, ["a", "b"])
    data = sr_protocol.load(Settings("sr", test=str(test), train=str(test), factor=4, size=32))
    psnr, ssim = [], []
    for photo in data.test:
        ref = photo[None]
        out = sr_protocol.bicubic_upsample(sr_protocol.low_resolution(ref, 4), 4)[0].double().numpy()
        psnr.append(peak_signal_noise_ratio(ref[0].double().numpy(), out, data_range=1.0))
        ssim.append(structural_similarity(ref[0].double().numpy(), out, data_range=1.0, channel_axis=0))
    got = sr_protocol.psnr_ssim(torch.stack([sr_protocol.bicubic_upsample(sr_protocol.low_resolution(p[None], 4), 4)[0]
                                             for p in data.test]), torch.stack(data.test))
    assert got["psnr"] == pytest.approx(np.mean(psnr)) and got["ssim"] == pytest.approx(np.mean(ssim))


def test_sr_end_to_end(tmp_path):
    photos = sample_photographs(40)
    train = _photo_folder(tmp_path / "train", photos[2:6], "cdef")
    test = _photo_folder(tmp_path / "test", photos[:2], "ab")
    configs = [LossConfig("vgg16", "relu2_2", "mse"), LossConfig("squeezenet1_1", "fire2", "l1")]
    settings = Settings("sr", test=str(test), train=str(train), weights="none", steps=2, batch_size=2, size=32)
    results = evaluate(configs, settings, tmp_path / "out", progress=False)
    for result in results:
        metrics = result["metrics"]
        assert 0 < metrics["ssim"] < 1 and 0 < metrics["psnr"] < metrics["bicubic_psnr"]  # 2 steps: far from bicubic
        assert np.isfinite(metrics["final_loss"])
    assert results[0]["metrics"]["psnr"] != results[1]["metrics"]["psnr"]  # each loss trained its own network
    paths = write_heatmaps(tmp_path / "out", "sr", sr_protocol.METRICS, results)
    assert sorted(p.name for p in paths) == ["sr_psnr_l1.png", "sr_psnr_mse.png", "sr_ssim_l1.png", "sr_ssim_mse.png"]


# -- autoencoder -----------------------------------------------------------------------------------------
def test_conv_autoencoder_shapes_and_parameters():
    net = ConvAutoencoder(image_size=32, code_size=16, channels=8, depth=2)
    x = torch.rand(3, 3, 32, 32)
    code = net.encode(x)
    assert code.shape == (3, 16) and net(x).shape == x.shape and 0 <= net(x).min() and net(x).max() <= 1
    conv_bn = lambda c_in, c_out, k: c_in * c_out * k * k + c_out + 2 * c_out  # noqa: E731  conv + bias, BN
    expected = (conv_bn(3, 8, 3) + conv_bn(8, 16, 3) + (16 * 8 * 8 * 16 + 16) + (16 * 16 * 8 * 8 + 16 * 8 * 8)
                + conv_bn(16, 8, 3) + conv_bn(8, 8, 3) + (8 * 3 * 9 + 3))
    assert sum(p.numel() for p in net.parameters()) == expected
    with pytest.raises(ValueError, match="image_size"):
        ConvAutoencoder(image_size=36, depth=3)
    with pytest.raises(ValueError, match="32x32"):
        net.encode(torch.rand(1, 3, 40, 40))


def test_linear_probe_matches_scipy():
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(60, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 0.5, 1])
    labels = (codes[:, 0] + 0.5 * codes[:, 1] > 0).long() + (codes[:, 2] > 2).long()
    probe = fit_linear_probe(codes, labels, 3, l2=0.1)
    x = ((codes - codes.mean(0)) / codes.std(0, unbiased=False)).numpy()
    y = labels.numpy()

    def objective(theta):  # mean cross-entropy + 0.05 ||W||^2, and its gradient
        w, b = theta[:15].reshape(3, 5), theta[15:]
        z = x @ w.T + b
        p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        value = -np.mean(z[np.arange(60), y] - logsumexp(z, axis=1)) + 0.05 * np.sum(w ** 2)
        dz = (p - np.eye(3)[y]) / 60
        return value, np.concatenate([(dz.T @ x + 0.1 * w).ravel(), dz.sum(0)])

    reference = minimize(objective, np.zeros(18), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000})
    got = np.concatenate([probe.weight.numpy().ravel(), probe.bias.numpy()])
    np.testing.assert_allclose(got, reference.x, atol=1e-5)
    assert probe.accuracy(codes, labels) == pytest.approx(np.mean(np.argmax(x @ reference.x[:15].reshape(3, 5).T
                                                                            + reference.x[15:], 1) == y))


def _class_folder(root: pathlib.Path, per_class: int, seed: int) -> pathlib.Path:
    """Three classes told apart by colour: mostly red, green or blue noise images."""
    gen = torch.Generator().manual_seed(seed)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            image = 0.35 * torch.rand(3, 16, 16, generator=gen)
            image[c] += 0.6
            write_image(root / name / f"{k}.png", image)
    return root


def test_autoencoder_end_to_end(tmp_path):
    """Classes that differ in colour: the codes of a barely trained autoencoder keep the colour, so a
    linear probe must read the class off the held-out images' codes (chance: 1/3)."""
    train, test = _class_folder(tmp_path / "train", 6, 0), _class_folder(tmp_path / "test", 3, 1)
    settings = Settings("autoencoder", test=str(test), train=str(train), weights="none", steps=2, batch_size=4,
                        size=16, code_size=16)
    (result,) = evaluate([LossConfig("vgg16", "relu1_2", "mse")], settings, tmp_path / "out", progress=False)
    print("autoencoder probe accuracy", result["metrics"])
    assert result["metrics"]["classes"] == 3
    assert result["metrics"]["accuracy"] >= 8 / 9 and result["metrics"]["train_accuracy"] == 1.0


def test_class_folder_layout_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.* at least two classes; found none"):
        class_folders(tmp_path / "empty")
    one = _class_folder(tmp_path / "one", 1, 0)
    for name in ("green", "blue"):
        for f in (one / name).iterdir():
            f.unlink()
        (one / name).rmdir()
    with pytest.raises(ValueError, match=r"found only 'red'"):
        class_folders(one)
    (one / "green").mkdir()
    with pytest.raises(ValueError, match=r"class 'green' of .*one.* has no images"):
        class_folders(one)
    train = _class_folder(tmp_path / "train", 1, 0)
    other = _class_folder(tmp_path / "other", 1, 0)
    (other / "blue").rename(other / "purple")
    with pytest.raises(ValueError, match=r"classes the training folder .* lacks: purple"):
        autoencoder_protocol.load(Settings("autoencoder", test=str(other), train=str(train), size=16))


# -- the run: result files, resume, the table, the command ------------------------------------------------
def test_results_are_reused_and_checked(tmp_path, bapps, monkeypatch):
    root, _ = bapps
    configs = [LossConfig("alexnet", "relu1", "mse"), LossConfig("alexnet", "relu2", "mse")]
    settings = Settings("2afc", test=str(root), weights="none", size=SIZE)
    first = evaluate(configs, settings, tmp_path, progress=False)
    files = sorted((tmp_path / "results").iterdir())
    assert [f.name for f in files] == ["2afc-alexnet-relu1-mse.json", "2afc-alexnet-relu2-mse.json"]
    assert json.loads(files[0].read_text())["metrics"] == first[0]["metrics"]

    def fail(*args, **kwargs):
        raise AssertionError("a configuration with a result file ran again")

    monkeypatch.setattr(twoafc, "run", fail)
    assert evaluate(configs, settings, tmp_path, progress=False) == first  # read back, nothing run
    with pytest.raises(AssertionError, match="ran again"):
        evaluate(configs, settings, tmp_path, overwrite=True, progress=False)
    with pytest.raises(ValueError, match=r"2afc-alexnet-relu1-mse.json.* other settings \(size: 48 there, 32 now"):
        evaluate(configs, Settings("2afc", test=str(root), weights="none", size=32), tmp_path, progress=False)
    files[0].write_text("{not json")
    with pytest.raises(ValueError, match="is not a perfloss evaluate result"):
        evaluate(configs, settings, tmp_path, progress=False)


def test_table_and_heatmap(tmp_path):
    results = [{"network": n, "layer": l, "distance": "mse", "metrics": {"2afc": v, "triplets": 9}, "seconds": 1.5}
               for n, l, v in [("vgg16", "relu1_2", 0.5), ("vgg16", "relu2_2", 0.75), ("resnet18", "layer1", 0.625)]]
    csv_path, md_path = write_table(tmp_path, "2afc", results)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["network"], r["layer"], float(r["2afc"])) for r in rows] == [
        ("vgg16", "relu1_2", 0.5), ("vgg16", "relu2_2", 0.75), ("resnet18", "layer1", 0.625)]
    assert md_path.read_text().splitlines()[:3] == ["| network | layer | distance | 2afc | triplets | seconds |",
                                                    "| --- | --- | --- | --- | --- | --- |",
                                                    "| vgg16 | relu1_2 | mse | 0.5 | 9 | 1.5 |"]
    (png,) = write_heatmaps(tmp_path, "2afc", twoafc.METRICS, results)
    assert png.name == "2afc_2afc_mse.png" and png.stat().st_size > 0
    fig = perfloss.plots.heatmap(tmp_path / "h.png", [[0.5, 0.75], [0.625, None]], rows=["vgg16", "resnet18"],
                                 columns=["1", "2"], title="t", xlabel="x", ylabel="y", colorbar_label="score")
    ax, bar = fig.axes
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), bar.get_ylabel()) == ("t", "x", "y", "score")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["vgg16", "resnet18"]
    assert [t.get_text() for t in ax.texts] == ["0.5", "0.75", "0.625"]  # the blank cell has no label


def test_cli_end_to_end(tmp_path, bapps, capsys):
    root, _ = bapps
    out = tmp_path / "out"
    argv = ["evaluate", "2afc", "--test", str(root), "--networks", "alexnet", "squeezenet1_1", "--layers", "relu2",
            "fire2", "--distances", "mse", "l1", "--weights", "none", "--size", str(SIZE), "--out", str(out),
            "--no-progress", "--device", "cpu"]
    assert cli_main(argv) == 0
    assert "| alexnet | relu2 | mse |" in capsys.readouterr().out
    with open(out / "2afc.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["network"], r["layer"], r["distance"]) for r in rows] == [
        ("alexnet", "relu2", "mse"), ("alexnet", "relu2", "l1"), ("squeezenet1_1", "fire2", "mse"),
        ("squeezenet1_1", "fire2", "l1")]
    for row in rows:  # the table holds what the result files hold
        saved = json.loads((out / "results" / f"2afc-{row['network']}-{row['layer']}-{row['distance']}.json")
                           .read_text())
        assert float(row["2afc"]) == saved["metrics"]["2afc"]
    assert sorted(p.name for p in out.glob("*.png")) == ["2afc_2afc_l1.png", "2afc_2afc_mse.png"]


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "sr", "--test", "{bapps}"], "give --train"),
    (["evaluate", "2afc", "--test", "{bapps}", "--train", "{bapps}"], "--train is not used"),
    (["evaluate", "2afc", "--test", "{bapps}", "--networks", "nonet"], "unknown backbone"),
    (["evaluate", "2afc", "--test", "{bapps}", "--size", "8", "--networks", "vgg16"], "too small for vgg16 relu5_3"),
    (["evaluate", "2afc", "--test", "{tmp}", "--networks", "alexnet"], "has no ref/, p0/, p1/, judge/"),
    (["evaluate", "sr", "--test", "{bapps}/ref", "--train", "{tmp}", "--networks", "alexnet"], "holds no .jpg"),
])
def test_cli_errors_name_the_problem(tmp_path, bapps, capsys, argv, message):
    argv = [a.format(bapps=bapps[0], tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as err:
        cli_main([*argv, "--weights", "none", "--out", str(tmp_path / "out"), "--no-progress"])
    assert err.value.code != 0
    assert message in capsys.readouterr().err + str(err.value.code)
