"""Dataset statistics: records per split, labels per rank, top orders; and charts of them.

Computed once at conversion from the whole metadata table and kept in the manifest (``statistics``),
so the card, ``bioscan5m-hf stats`` and the charts agree with the data. Charts are drawn with Pillow
(already a dependency), as PNG files the dataset card embeds.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .. import schema

TOP_ORDERS = 10
CHART_DIR = "assets"
CHARTS = {"records_per_split": "records per split", "top_orders": f"records of the {TOP_ORDERS} largest orders"}


def compute(table: pa.Table) -> dict:
    """Statistics of the whole release (all splits), JSON-able."""
    n = table.num_rows
    split_counts = pc.value_counts(table.column("split")).to_pylist()
    per_split = {s: 0 for s in schema.SPLITS}
    for item in split_counts:
        per_split[item["values"]] = item["counts"]
    ranks = {}
    for name in schema.LABEL_COLUMNS:
        column = table.column(name)
        labelled = n - column.null_count
        ranks[name] = {"distinct": len(pc.unique(column).drop_null()), "labelled": labelled,
                       "fraction": round(labelled / n, 4) if n else 0.0}
    orders = pc.value_counts(table.column("order").drop_null()).to_pylist()
    orders.sort(key=lambda item: (-item["counts"], item["values"]))
    return {"num_records": n, "records_per_split": per_split, "ranks": ranks,
            "top_orders": {item["values"]: item["counts"] for item in orders[:TOP_ORDERS]}}


def format_stats(stats: dict) -> str:
    """The statistics as plain text tables (``bioscan5m-hf stats``)."""
    lines = [f"{stats['num_records']:,} records", "", f"{'split':<15}{'records':>12}"]
    lines += [f"{s:<15}{n:>12,}" for s, n in stats["records_per_split"].items()]
    lines += ["", f"{'rank':<12}{'distinct':>10}{'labelled':>12}{'fraction':>10}"]
    lines += [f"{r:<12}{v['distinct']:>10,}{v['labelled']:>12,}{v['fraction']:>10.1%}"
              for r, v in stats["ranks"].items()]
    lines += ["", f"{'order':<24}{'records':>12}"]
    lines += [f"{o:<24}{n:>12,}" for o, n in stats["top_orders"].items()]
    return "\n".join(lines)


def bar_chart(values: dict[str, int], title: str, path: Path, width: int = 720) -> None:
    """A horizontal bar chart as PNG."""
    from PIL import Image, ImageDraw

    row, label_w, pad = 26, 170, 12
    height = pad * 3 + 20 + row * len(values)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=(20, 20, 20))
    top = max(values.values(), default=1) or 1
    for k, (name, value) in enumerate(values.items()):
        y = pad * 2 + 20 + k * row
        draw.text((pad, y + 5), str(name)[:26], fill=(40, 40, 40))
        bar = int((width - label_w - 110) * value / top)
        draw.rectangle([label_w, y + 3, label_w + max(1, bar), y + row - 5], fill=(62, 124, 177))
        draw.text((label_w + bar + 8, y + 5), f"{value:,}", fill=(40, 40, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False)


def write_charts(stats: dict, folder: Path) -> list[Path]:
    """Draw the charts into ``folder/assets``; returns their paths."""
    paths = []
    for key, title in CHARTS.items():
        path = Path(folder) / CHART_DIR / f"{key}.png"
        bar_chart(stats[key], f"BIOSCAN-5M: {title}", path)
        paths.append(path)
    return paths
