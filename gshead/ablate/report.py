"""Tables and plots of an ablation run: ``OUT/results.csv``, ``OUT/results.md`` and PNG plots.

One row per variant with a result (in matrix order): id, status, one column per axis, parameters
per component (``params.<kind>``, ``params.total``), Gaussian counts, median reconstruction time,
per render size the median frame time and FPS, ``quality.*`` columns, and the error of a failed
variant. The CSV holds raw numbers (seconds, counts); the markdown shows them rounded.

Plots (matplotlib, Agg backend; skipped with a note in ``results.md`` when it is not installed):
``fps_vs_params.png`` (driving FPS per render size against total parameters, log x) and, when
quality columns exist, ``quality_vs_encoder.png`` (each quality column against encoder parameters,
log x). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from gshead.ablate.matrix import LoadedMatrix
from gshead.core.components import KINDS
from gshead.io.media import atomic_output


def table_rows(results: list[dict[str, Any]], axes: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): one flat row per result, columns in a fixed order (absent values empty)."""
    sizes: list[str] = []
    quality: list[str] = []
    for r in results:
        for s in r.get("driving", {}):
            if s not in sizes:
                sizes.append(s)
        for q in r.get("quality", {}):
            if q not in quality:
                quality.append(q)
    sizes.sort(key=int)
    columns = ["id", "status", *axes]
    columns += [f"params.{k}" for k in KINDS] + ["params.total", "gaussians.static", "gaussians.driven"]
    columns += ["reconstruct_s"]
    for s in sizes:
        columns += [f"frame_s@{s}", f"fps@{s}"]
    columns += [f"quality.{q}" for q in quality] + ["error"]
    rows = []
    for r in results:
        row: dict[str, Any] = {c: "" for c in columns}
        row["id"], row["status"] = r["id"], r.get("status", "")
        for a in axes:
            row[a] = r.get("axes", {}).get(a, "")
        for k, n in r.get("parameters", {}).items():
            if f"params.{k}" in row:
                row[f"params.{k}"] = n
        for k, n in r.get("gaussians", {}).items():
            row[f"gaussians.{k}"] = n
        if "reconstruct_s" in r:
            row["reconstruct_s"] = r["reconstruct_s"]
        for s, d in r.get("driving", {}).items():
            row[f"frame_s@{s}"], row[f"fps@{s}"] = d["frame_median_s"], d["fps"]
        for q, v in r.get("quality", {}).items():
            row[f"quality.{q}"] = v
        row["error"] = r.get("error", "")
        rows.append(row)
    return columns, rows


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: (repr(v) if isinstance(v, float) else v) for c, v in row.items()})
    return buffer.getvalue()


def _cell(column: str, value: Any) -> str:
    if value == "" or value is None:
        return ""
    if column.startswith("params."):
        return f"{value / 1e6:.3f} M"
    if column == "reconstruct_s":
        return f"{value * 1e3:.1f} ms"
    if column.startswith("frame_s@"):
        return f"{value * 1e3:.2f} ms"
    if column.startswith("fps@"):
        return f"{value:.1f}"
    if column.startswith("quality."):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def to_markdown(
    columns: list[str], rows: list[dict[str, Any]], notes: list[str], images: list[str] = ()
) -> str:
    # Hide columns with nothing to say: empty everywhere, or parameter counts that are 0 everywhere.
    shown = [
        c
        for c in columns
        if c in ("id", "status")
        or any(row[c] not in ("", None) and not (c.startswith("params.") and row[c] == 0) for row in rows)
    ]
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row[c]) for c in shown) + " |")
    text = "# Ablation results\n\n" + "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    for name in images:
        text += f"\n![{Path(name).stem}]({name})\n"
    return text


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _save(fig, path: Path) -> None:
    with atomic_output(path) as temporary:
        fig.savefig(temporary, dpi=120, bbox_inches="tight")


def write_plots(
    rows: list[dict[str, Any]], columns: list[str], out_dir: Path
) -> tuple[list[Path], list[str]]:
    """PNG plots of the ok rows; (files written, notes). No matplotlib: no files, one note."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ["plots skipped: matplotlib is not installed (pip install matplotlib)"]
    ok = [r for r in rows if r["status"] == "ok" and r["params.total"] != ""]
    written: list[Path] = []
    notes: list[str] = []
    fps_columns = [c for c in columns if c.startswith("fps@")]
    if ok and fps_columns:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for c in fps_columns:
            points = [(r["params.total"], r[c], r["id"]) for r in ok if r[c] != ""]
            ax.scatter([p[0] for p in points], [p[1] for p in points], label=f"{c[4:]} px")
            for x, y, label in points:
                ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("parameters (all components)")
        ax.set_ylabel("driving FPS (1 / median frame time)")
        ax.set_title("Driving speed vs model size")
        ax.legend(title="render size")
        ax.grid(True, which="both", alpha=0.3)
        path = out_dir / "fps_vs_params.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    quality_columns = [c for c in columns if c.startswith("quality.")]
    with_encoder = [r for r in ok if r["params.encoder"] not in ("", 0)]
    if with_encoder and quality_columns:
        fig, axes = plt.subplots(
            1, len(quality_columns), figsize=(5.5 * len(quality_columns), 4.2), squeeze=False
        )
        for ax, c in zip(axes[0], quality_columns):
            points = [(r["params.encoder"], r[c], r["id"]) for r in with_encoder if r[c] != ""]
            ax.scatter([p[0] for p in points], [p[1] for p in points])
            for x, y, label in points:
                ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("encoder parameters")
            ax.set_ylabel(c[len("quality.") :])
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle("Quality vs encoder size")
        path = out_dir / "quality_vs_encoder.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    elif ok and not quality_columns:
        notes.append("no quality columns: quality_vs_encoder.png not drawn")
    return written, notes


def write_report(
    results: list[dict[str, Any]], loaded: LoadedMatrix, out_dir: str | Path, plots: bool = True
) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and (unless ``plots`` is False) the plots into
    ``out_dir``; their paths by name."""
    out_dir = Path(out_dir)
    axes = list(loaded.variants[0].axes) if loaded.variants else []
    columns, rows = table_rows(results, axes)
    if plots:
        plots, notes = write_plots(rows, columns, out_dir)
    else:
        plots, notes = [], ["plots not drawn (--no-plots)"]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        notes.insert(0, f"{len(failed)} variant(s) failed; tracebacks in variants/<id>.traceback.txt")
    missing = [v.id for v in loaded.variants if v.id not in {r["id"] for r in rows}]
    if missing:
        notes.append(f"not run yet: {', '.join(missing)}")
    source = f"matrix: {loaded.path}" if loaded.path else "matrix: (in memory)"
    notes.append(source)
    paths = {"csv": out_dir / "results.csv", "markdown": out_dir / "results.md"}
    _write(paths["csv"], to_csv(columns, rows))
    _write(paths["markdown"], to_markdown(columns, rows, notes, [p.name for p in plots]))
    paths.update({p.stem: p for p in plots})
    return paths


__all__ = ["table_rows", "to_csv", "to_markdown", "write_plots", "write_report"]
