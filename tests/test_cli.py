"""`perfloss bench` end to end on a tiny configuration, through the console entry point."""
import csv
import json

from perfloss.cli import main


def test_bench_writes_table_json_and_csv(tmp_path, capsys):
    json_path, csv_path = tmp_path / "bench.json", tmp_path / "bench.csv"
    code = main(["bench", "--loss", "content", "style", "--engine", "eager", "lean", "checkpoint", "compile",
                 "--size", "16", "--batch", "2", "--repeat", "1", "--warmup", "1",
                 "--json", str(json_path), "--csv", str(csv_path), "--plot", str(tmp_path / "bench.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert "held MB" in out and "lean" in out and "compile" in out
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # labels: tests/test_plots.py
    results = json.loads(json_path.read_text())
    rows = results["results"]
    assert {(r["loss"], r["engine"]) for r in rows} == {
        (loss, engine) for loss in ("content", "style") for engine in ("eager", "lean", "checkpoint", "compile")}
    assert results["environment"]["torch"]
    held = {(r["loss"], r["engine"]): r["held_for_backward_mb"] for r in rows}
    for r in rows:
        assert r["median_ms"] > 0 and r["peak_mb"] is not None
        assert (r["held_for_backward_mb"] is None) == (r["engine"] == "checkpoint")
    for loss in ("content", "style"):
        assert 0 < held[(loss, "lean")] < held[(loss, "eager")]
    with open(csv_path) as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_bench_under_autocast(tmp_path):
    json_path = tmp_path / "bench.json"
    assert main(["bench", "--loss", "l1", "--engine", "eager", "lean", "--size", "16", "--batch", "1",
                 "--repeat", "1", "--warmup", "0", "--autocast", "bfloat16", "--json", str(json_path)]) == 0
    rows = json.loads(json_path.read_text())["results"]
    assert [r["autocast"] for r in rows] == ["bfloat16", "bfloat16"]
    assert rows[1]["held_for_backward_mb"] < rows[0]["held_for_backward_mb"]
