"""perfloss.plots and the figures drawn with it (bench --plot, the PGN grid, the benchmark scripts):
each file is written and readable, and the Figure has the title, axis labels, legend entries and the
data it was given. matplotlib renders with Agg (files only)."""
import csv
import json
import os
import sys

import pytest
import torch
from PIL import Image

pytest.importorskip("matplotlib")

from perfloss import bench, plots  # noqa: E402
from perfloss.pgn import visualize  # noqa: E402

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
pytestmark = pytest.mark.usefixtures("one_thread")


def _png_size(path):
    with Image.open(path) as f:
        assert f.format == "PNG"
        return f.size


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_curves(tmp_path):
    curves = {"eager": ([0, 10, 20], [3.0, 2.0, 1.0]), "lean": ([0, 10, 20], [3.0, 2.5, 0.5])}
    fig = plots.plot_curves(tmp_path / "c.png", curves, title="Loss", xlabel="step", ylabel="loss (MSE)", logy=True)
    assert _png_size(tmp_path / "c.png")[0] > 100
    (ax,) = fig.axes
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("Loss", "step", "loss (MSE)")
    assert _legend(ax) == ["eager", "lean"] and ax.get_yscale() == "log"
    assert ax.lines[1].get_xydata().tolist() == [[0, 3.0], [10, 2.5], [20, 0.5]]
    plots.plot_curves(tmp_path / "c.svg", curves, title="Loss", xlabel="step", ylabel="loss")
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"curves\['x'\] must be \(xs, ys\) of one length"):
        plots.plot_curves(tmp_path / "bad.png", {"x": ([1, 2], [1])}, title="t", xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.plot_curves(tmp_path / "bad.png", {}, title="t", xlabel="x", ylabel="y")


def test_plot_panels_bars_and_log_ticks(tmp_path):
    bars = {"eager": (["content", "style"], [10.0, 20.0]), "lean": (["content", "style"], [8.0, 25.0])}
    sweep = {"eager": ([1, 2, 4, 8], [5.0, 9.0, 17.0, 33.0])}
    fig = plots.plot_panels(tmp_path / "p.png", [
        plots.Panel(bars, "time", "loss", "time (ms)", kind="bar"),
        plots.Panel(sweep, "peak", "batch size", "peak MiB", logx=True, xticks=[1, 2, 4, 8]),
    ], title="both")
    _png_size(tmp_path / "p.png")
    left, right = fig.axes
    assert fig.get_suptitle() == "both" and _legend(left) == ["eager", "lean"]
    heights = [[p.get_height() for p in c] for c in left.containers]
    assert heights == [[10.0, 20.0], [8.0, 25.0]]
    assert [t.get_text() for t in left.get_xticklabels()] == ["content", "style"]
    assert right.get_xscale() == "log" and [t.get_text() for t in right.get_xticklabels()] == ["1", "2", "4", "8"]
    with pytest.raises(ValueError, match="kind must be 'line' or 'bar'"):
        plots.plot_panels(tmp_path / "x.png", [plots.Panel(sweep, "t", "x", "y", kind="pie")])


def test_image_grid(tmp_path):
    generated, target = torch.rand(3, 3, 8, 10), torch.rand(3, 1, 4, 5)
    fig = plots.image_grid(tmp_path / "g.png", {"generated": generated, "low resolution": target}, title="grid")
    _png_size(tmp_path / "g.png")
    assert len(fig.axes) == 6 and fig.get_suptitle() == "grid"
    assert [ax.get_title() for ax in fig.axes[:2]] == ["generated", "low resolution"]
    # row 1, column 0 shows sample 1 of "generated", pixel for pixel
    shown = torch.as_tensor(fig.axes[2].images[0].get_array().data)
    torch.testing.assert_close(shown, generated[1].permute(1, 2, 0))
    with pytest.raises(ValueError, match="column 'b' has 2 images, the first column 3"):
        plots.image_grid(tmp_path / "x.png", {"a": generated, "b": generated[:2]})
    with pytest.raises(ValueError, match=r"column 'a' must be a \(B, 3, H, W\)"):
        plots.image_grid(tmp_path / "x.png", {"a": generated[0]})


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install perfloss\[plot\]"):
        plots.require_matplotlib()


def test_visualize_labels_its_columns(tmp_path, monkeypatch):
    figures = []
    draw = plots.image_grid
    monkeypatch.setattr(plots, "image_grid", lambda *a, **k: figures.append(draw(*a, **k)))
    n, h, w = 3, 8, 10
    y_hat, y, proxy = (torch.rand(n, 3, h, w) * 2 - 1 for _ in range(3))
    g_pred, g_true = torch.randn(n, 3, h, w), torch.randn(n, 3, h, w)
    path = visualize(y_hat, y, proxy, g_pred, g_true, tmp_path / "v.png", input_range=(-1, 1))
    assert path == str(tmp_path / "v.png") and _png_size(path)
    (fig,) = figures
    assert [ax.get_title() for ax in fig.axes[:5]] == ["generated", "target", "proxy", "predicted gradient",
                                                         "true gradient"]
    # the reference mapping: [-1, 1] -> [0, 1]; gradients 0.5 - 0.5 g / m, m the 99th percentile of |g|
    # over the row's predicted and true gradient
    torch.testing.assert_close(torch.as_tensor(fig.axes[0].images[0].get_array().data),
                               ((y_hat[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0))
    m = torch.cat([g_pred[2].flatten(), g_true[2].flatten()]).abs().quantile(0.99)
    torch.testing.assert_close(torch.as_tensor(fig.axes[2 * 5 + 4].images[0].get_array().data),
                               (0.5 - 0.5 * g_true[2] / m).clamp(0, 1).permute(1, 2, 0))
    visualize(y_hat, y, proxy, g_pred, None, tmp_path / "v2.png")
    assert len(figures[1].axes) == n * 4  # no true gradient: its column is left out
    with pytest.raises(ValueError, match="g_pred must have the shape of y_hat"):
        visualize(y_hat, y, proxy, torch.rand(n, 3, h, w + 1), None, tmp_path / "v3.png")


def test_bench_plot(tmp_path):
    rows = [{"loss": loss, "backbone": "vgg16", "engine": engine, "batch": 2, "size": 16, "dtype": "float32",
             "autocast": "", "device": "cpu", "median_ms": ms, "peak_mb": mb}
            for loss, engine, ms, mb in [("content", "eager", 4.0, 30.0), ("content", "lean", 5.0, 6.0),
                                         ("style", "eager", 7.0, 40.0), ("style", "lean", 8.0, 12.0)]]
    fig = bench.plot(rows, {"torch": "2.x", "machine": "x86_64"}, tmp_path / "b.png")
    _png_size(tmp_path / "b.png")
    time_ax, peak_ax = fig.axes
    assert time_ax.get_ylabel() == "time (ms)" and peak_ax.get_ylabel() == "peak memory above resident (MiB)"
    assert _legend(time_ax) == _legend(peak_ax) == ["eager", "lean"]
    assert [[p.get_height() for p in c] for c in peak_ax.containers] == [[30.0, 40.0], [6.0, 12.0]]
    assert "vgg16" in fig.get_suptitle() and "batch 2" in fig.get_suptitle()


@pytest.fixture
def benchmark_script(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import importlib
    return importlib.import_module


def test_pgn_cpu_replot(tmp_path, benchmark_script):
    pgn_cpu = benchmark_script("pgn_cpu")
    with open(tmp_path / "t_pgn_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "minutes", "cosine", "online_cosine", "train_cosine"])
        w.writerows([[0, 0.0, -0.3, 0.4, ""], [25, 0.5, 0.5, 0.7, 0.6]])
    with open(tmp_path / "t_generators.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["generator_gradient", "step", "teacher_loss", "seconds"])
        w.writerows([[k, s, v, 1.0] for k in ("pgn", "true", "pixel_l1") for s, v in ((0, 0.6), (10, 0.3))])
    summary = {"config": {"size": 64, "batch_size": 4}, "teacher": "vgg19 (random weights)",
               "pgn": {"arch": "resnet4", "output": "sigmoid", "train_steps": 25,
                       "heldout_cosine_of_pixel_mse_gradient": 0.79},
               "generators": {"steps": 10}}
    (tmp_path / "t_summary.json").write_text(json.dumps(summary))
    fig = pgn_cpu.main(["--replot", "--out", str(tmp_path), "--prefix", "t"])
    _png_size(tmp_path / "t_curves.png")
    cos_ax, loss_ax = fig.axes
    assert cos_ax.get_xlabel() == "PGN training time (minutes of wall clock)"
    assert _legend(cos_ax) == ["fixed held-out pairs", "held-out images through the online generators",
                               "pixel-MSE gradient on the fixed pairs (reference)"]
    assert _legend(loss_ax) == ["PGN gradient (ProxyTargetLoss)", "true teacher gradient", "pixel L1 (reference)"]
    assert loss_ax.get_yscale() == "log" and loss_ax.get_xlabel() == "generator step"
    assert cos_ax.lines[0].get_xydata().tolist() == [[0.0, -0.3], [0.5, 0.5]]
