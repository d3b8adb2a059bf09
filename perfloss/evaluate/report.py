"""What a run writes beside its result files: the table (CSV and Markdown) and the heat-maps.

``out/<protocol>.csv`` and ``out/<protocol>.md``: one row per configuration (network, layer, distance,
every metric, seconds). ``out/<protocol>_<metric>_<distance>.png``: one heat-map per protocol metric and
distance, like Pihlgren et al.'s figures: a row per network, a column per extraction point (the
network's layers in network order, shallow to deep), each cell labelled with its layer and value.
"""
import csv
import pathlib
from typing import Dict, List, Sequence

from perfloss import plots
from perfloss.checkpoint import atomic_write


def table_rows(results: Sequence[Dict]) -> List[Dict]:
    """One flat row per result: network, layer, distance, its metrics in their order, seconds."""
    return [{"network": r["network"], "layer": r["layer"], "distance": r["distance"], **r["metrics"],
             "seconds": r["seconds"]} for r in results]


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[Dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(out, protocol: str, results: Sequence[Dict]) -> List[pathlib.Path]:
    """``out/<protocol>.csv`` and ``.md``, each written atomically; returns their paths."""
    rows = table_rows(results)
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    paths = [pathlib.Path(out) / f"{protocol}.csv", pathlib.Path(out) / f"{protocol}.md"]
    atomic_write(paths[0], write_csv, keep_previous=False)
    text = markdown_table(rows)
    atomic_write(paths[1], lambda tmp: pathlib.Path(tmp).write_text(text), keep_previous=False)
    return paths


def write_heatmaps(out, protocol: str, metrics: Dict[str, str], results: Sequence[Dict]) -> List[pathlib.Path]:
    """One heat-map per metric of ``metrics`` (name -> label) and distance; returns their paths."""
    paths = []
    for distance in dict.fromkeys(r["distance"] for r in results):
        chosen = [r for r in results if r["distance"] == distance]
        layers: Dict[str, List[Dict]] = {}
        for r in chosen:
            layers.setdefault(r["network"], []).append(r)
        width = max(len(v) for v in layers.values())
        for metric, label in metrics.items():
            values = [[row[k]["metrics"][metric] if k < len(row) else None for k in range(width)]
                      for row in layers.values()]
            text = [[f"{row[k]['layer']}\n{row[k]['metrics'][metric]:.3g}" if k < len(row) else "" for k in range(width)]
                    for row in layers.values()]
            path = pathlib.Path(out) / f"{protocol}_{metric}_{distance}.png"
            plots.heatmap(path, values, rows=list(layers), columns=[str(k + 1) for k in range(width)],
                          title=f"perfloss evaluate {protocol}: {label}, {distance} distance",
                          xlabel="extraction point (shallow to deep)", ylabel="loss network",
                          colorbar_label=label, cell_text=text)
            paths.append(path)
    return paths
