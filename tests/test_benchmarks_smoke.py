"""The benchmark scripts run end to end at tiny sizes (--quick) and write their results files.

Numbers are not checked beyond being positive: benchmarks report, tests do not time.
"""
import importlib
import json
import mmap
import os

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def benchmark_script(monkeypatch):
    """Import a script from benchmarks/ (which imports its sibling _timing) as a module."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    return importlib.import_module


def read_results(out):
    for ext in (".md", ".csv", ".json"):
        assert os.path.getsize(out + ext) > 0
    with open(out + ".json") as f:
        results = json.load(f)
    assert {"date", "torch", "threads", "device", "command"} <= set(results["environment"])
    return results["results"]


def test_peak_batch_sweep_quick(one_thread, benchmark_script, tmp_path):
    pytest.importorskip("matplotlib")
    sweep = benchmark_script("peak_batch_sweep")
    out = str(tmp_path / "sweep")
    # torch.compile is left out: compiling takes longer than this whole test may.
    assert sweep.main(["--quick", "--device", "cpu", "--engines", "eager", "lean", "checkpoint", "--out", out]) == 0
    rows = read_results(out)
    assert len(rows) == 4 * 3 * 2  # losses x engines x batches
    assert all(r["peak_mib"] > 0 and 0 < r["host_ms"] <= r["median_ms"] and not r["note"] for r in rows)
    assert os.path.getsize(out + ".png") > 0
    with open(out + ".md") as f:
        text = f.read()
    assert "eager/lean peak" in text and "host ms" not in text  # CPU: host time is the whole time
    args = sweep.parse_args(["--quick", "--engines", "eager", "lean", "checkpoint"])
    args.batches, args.size, args.repeat, args.target_pass = [1, 2], 32, 1, "split"
    assert "| lean host ms |" in sweep.markdown(rows, args, torch.device("cuda"))


def test_peak_batch_sweep_target_pass_ride(one_thread, benchmark_script, tmp_path):
    """--target-pass ride runs CUDA's schedule on a CPU (target images in each chunk's batch, one level),
    every row says which way ran, and the walk's default comes back after."""
    pytest.importorskip("matplotlib")
    from perfloss.engine import walk

    sweep = benchmark_script("peak_batch_sweep")
    default = walk.SPLIT_TARGET_PASS_DEVICES
    peaks = {}
    for way in ("split", "ride"):
        out = str(tmp_path / way)
        assert sweep.main(["--quick", "--device", "cpu", "--losses", "content", "--engines", "eager", "lean:1",
                           "lean:2", "--batches", "2", "--target-pass", way, "--out", out]) == 0
        assert walk.SPLIT_TARGET_PASS_DEVICES == default
        rows = read_results(out)
        assert {r["target_pass"] for r in rows} == {way}
        peaks[way] = {r["engine"]: r["peak_mib"] for r in rows}
        with open(out + ".md") as f:
            text = f.read()
        assert "eager/lean:1 peak" in text and "lean:2/eager time" in text
    # in chunks of one, riding targets double each chunk's batch: a larger peak than their own pass's
    assert peaks["ride"]["lean:1"] > peaks["split"]["lean:1"]


def test_page_faults_count_fresh_pages(benchmark_script):
    """A step that fills a new 64 MiB anonymous mapping and keeps it faults in at least that many 2 MiB
    huge pages; a step that allocates nothing faults in fewer. The mapping comes from the kernel itself,
    so its pages are fresh whatever the C allocator and torch keep (a 64 MiB torch.ones after the other
    tests here once faulted in 11 pages, twice in a row, not reproduced)."""
    _timing = benchmark_script("_timing")
    size, kept = 64 << 20, []

    def fresh():
        kept.append(mmap.mmap(-1, size))
        torch.frombuffer(kept[-1], dtype=torch.uint8).fill_(1)

    steps = {"fresh": fresh, "idle": lambda: None}
    faults = {name: t.page_faults for name, t in _timing.interleaved_medians(steps, 3, torch.device("cpu")).items()}
    assert faults["fresh"] >= size // (2 << 20) > faults["idle"]


def test_rounds_alternate_order_and_ratios_pair_them(benchmark_script):
    """Every other round runs the steps in reverse order; each round's time is kept in order; the
    paired ratio is the median of the rounds' ratios with their quartiles (statistics' exclusive method:
    ratios 1, 2, 3, 4 have quartiles 1.25 and 3.75)."""
    _timing = benchmark_script("_timing")
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = _timing.interleaved_medians(steps, 4, torch.device("cpu"))
    assert "".join(calls) == "abccbaabccba"
    assert all(len(t.round_ms) == 4 and min(t.round_ms) > 0 for t in times.values())
    assert _timing.paired_ratio([1.0, 4.0, 9.0, 16.0], [1.0, 2.0, 3.0, 4.0]) == "2.50 (1.25-3.75)"
    assert _timing.paired_ratio([3.0, 2.0], [2.0, 2.0]) == "1.25"  # fewer than 4 rounds: no range
    assert _timing.paired_ratio(None, [1.0]) == "-"


def test_environment_names_the_c_allocator(benchmark_script, monkeypatch):
    _timing = benchmark_script("_timing")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967296")
    env = _timing.environment(torch.device("cpu"), "sweep.py", [])
    assert env["malloc"] == "MALLOC_MMAP_THRESHOLD_=4294967296"
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert _timing.environment(torch.device("cpu"), "sweep.py", [])["malloc"] == "default"


def test_train_step_quick(one_thread, benchmark_script, tmp_path):
    train_step = benchmark_script("train_step")
    out = str(tmp_path / "train")
    assert train_step.main(["--quick", "--device", "cpu", "--out", out]) == 0
    rows = read_results(out)
    assert len(rows) == 2 * 4  # workloads x (3 engines + generator alone)
    for r in rows:
        assert r["peak_mib"] > 0 and r["median_ms"] > 0
        assert r["largest_batch_within_budget"] >= 1
        assert all(p > 0 for p in r["peak_mib_by_batch"].values())


def test_examples_benchmark_short(one_thread, benchmark_script, tmp_path):
    pytest.importorskip("skimage")
    examples = benchmark_script("examples_cpu")
    out = str(tmp_path / "examples")
    assert examples.main(["--steps", "2", "--size", "32", "--batch-size", "2", "--device", "cpu", "--out", out]) == 0
    rows = read_results(out)
    assert [(r["example"], r["engine"]) for r in rows] == [(e, g) for e in examples.EXAMPLES for g in examples.ENGINES]
    assert all(r["peak_mib"] > 0 and r["median_s_per_step"] > 0 for r in rows)
    assert all(r["max_relative_curve_gap"] < 1e-4 for r in rows)  # two steps: equal to rounding
    for example in examples.EXAMPLES:
        assert os.path.getsize(f"{out}_{example}_curves.png") > 0 and os.path.getsize(f"{out}_{example}_samples.png") > 0


def test_compat_peers_quick(one_thread, benchmark_script, tmp_path):
    pytest.importorskip("DISTS_pytorch")
    compat_peers = benchmark_script("compat_peers")
    out = str(tmp_path / "peers")
    assert compat_peers.main(["--quick", "--device", "cpu", "--out", out]) == 0
    rows = read_results(out)
    assert {(r["case"], r["impl"]) for r in rows} == {(c, i) for c in compat_peers.CASES for i in ("peer", "perfloss")}
    assert all(r["peak_mib"] > 0 and r["median_ms"] > 0 for r in rows)


def test_chunk_host_time_quick(one_thread, benchmark_script, tmp_path):
    chunk_host_time = benchmark_script("chunk_host_time")
    out = str(tmp_path / "host")
    assert chunk_host_time.main(["--device", "cpu", "--batch", "2", "--repeat", "1", "--out", out]) == 0
    rows = read_results(out)
    assert {(r["target_pass"], r["chunk_size"]) for r in rows} == {(w, c) for w in ("split", "ride") for c in (1, 2)}
    assert all(0 < r["host_ms"] <= r["median_ms"] for r in rows)
    with open(out + ".md") as f:
        assert "ms per chunk beyond chunks of 2" in f.read()


def test_op_profile_lists_each_engines_ops(one_thread, benchmark_script, tmp_path):
    op_profile = benchmark_script("op_profile")
    out = str(tmp_path / "ops")
    assert op_profile.main(["--device", "cpu", "--loss", "content", "--batch", "2", "--size", "32", "--repeat", "1",
                            "--out", out]) == 0
    ops = {(r["engine"], r["op"]): r for r in read_results(out)}
    # VGG-16 to relu2_2 has 4 convolutions: eager runs them on the input and on the target images
    assert ops[("eager", "aten::convolution")]["calls"] == 8
    assert ("lean", "perfloss::lean_backward") in ops and ("eager", "perfloss::lean_backward") not in ops
    assert all(r["self_ms"] >= 0 for r in ops.values())
    with open(out + ".md") as f:
        assert f.read().count("| all ops |") == 2


def test_peak_batch_sweep_channels_last(one_thread, benchmark_script, tmp_path):
    pytest.importorskip("matplotlib")
    sweep = benchmark_script("peak_batch_sweep")
    out = str(tmp_path / "cl")
    assert sweep.main(["--quick", "--device", "cpu", "--losses", "content", "--engines", "eager", "lean", "--batches",
                       "2", "--channels-last", "--out", out]) == 0
    rows = read_results(out)
    assert [r["channels_last"] for r in rows] == [True, True] and all(r["peak_mib"] > 0 for r in rows)
    with open(out + ".md") as f:
        assert "fp32, channels_last" in f.read()


def test_recorded_engines_with_a_stand_in_capture(one_thread, benchmark_script, tmp_path, monkeypatch):
    """The +graphs engines and --graphs, through the CPU stand-in for a CUDA graph capture
    (test_chunk_recording.TracingCapture): each recorded step replays, its peak adds the (here empty)
    pools, and the walk's switch comes back off after."""
    pytest.importorskip("matplotlib")
    from test_chunk_recording import TracingCapture
    from perfloss import cuda_graphs
    from perfloss.engine import walk

    capture = TracingCapture()
    monkeypatch.setitem(cuda_graphs.CAPTURE, "cpu", capture)
    sweep = benchmark_script("peak_batch_sweep")
    out = str(tmp_path / "recorded")
    assert sweep.main(["--quick", "--device", "cpu", "--losses", "l1", "--engines", "eager", "lean:1",
                       "lean:1+graphs", "--batches", "2", "--target-pass", "ride", "--out", out]) == 0
    rows = read_results(out)
    assert [r["engine"] for r in rows] == ["eager", "lean:1", "lean:1+graphs"] and all(r["peak_mib"] > 0 for r in rows)
    with open(out + ".md") as f:
        assert "eager/lean:1+graphs peak" in f.read()
    assert capture.captures == 4 and walk.CHUNK_RECORDING_DEVICES == ()  # the warm-up's and the peak run's
    host = benchmark_script("chunk_host_time")
    assert host.main(["--device", "cpu", "--batch", "2", "--chunks", "1", "--repeat", "1", "--graphs",
                      "--out", str(tmp_path / "host")]) == 0
    assert {r["target_pass"] for r in read_results(str(tmp_path / "host"))} == {"split", "ride", "split+graphs",
                                                                                 "ride+graphs"}


def test_engine_names(benchmark_script):
    import argparse

    sweep = benchmark_script("peak_batch_sweep")
    for good in ("eager", "lean", "checkpoint", "compile", "lean:2", "lean+graphs", "lean:1+graphs", "lean+onelevel",
                 "lean:2+onelevel+graphs"):
        assert sweep.engine_name(good) == good
    for bad in ("lean:", "lean:0", "eager+graphs", "lean:x+graphs", "lean+graph", "eager+onelevel",
                "lean+graphs+onelevel", "lean:+onelevel"):
        with pytest.raises(argparse.ArgumentTypeError):
            sweep.engine_name(bad)


def test_one_level_engine_walks_without_deeper_levels(one_thread, benchmark_script, tmp_path):
    """+onelevel: inside its step the walk forms no deeper level where it otherwise does, and after it the
    walk's setting is back; the sweep gives its growth line next to lean's."""
    from perfloss.engine import plan_for, walk

    sweep = benchmark_script("peak_batch_sweep")
    loss = sweep.build_loss("l1", "lean", 64, torch.device("cpu"))
    plan, x = plan_for(loss.backbone), torch.rand(4, 3, 64, 64)
    levels = walk.levels_for(plan, x, 1, (), x)
    with sweep.one_level(True):
        assert walk.levels_for(plan, x, 1, (), x) == ((0, 1),)
    assert len(levels) > 1 and walk.levels_for(plan, x, 1, (), x) == levels
    out = str(tmp_path / "sweep")
    assert sweep.main(["--quick", "--losses", "content", "--engines", "eager", "lean", "lean+onelevel",
                       "--threads", "1", "--out", out]) == 0
    assert {r["engine"] for r in read_results(out)} == {"eager", "lean", "lean+onelevel"}
    with open(out + ".md") as f:
        text = f.read()
    assert "lean 1->2:" in text and "lean+onelevel 1->2:" in text
