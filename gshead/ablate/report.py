"""Tables and plots of an ablation run: ``OUT/results.csv``, ``OUT/results.md`` and PNG plots.

One row per variant with a result (in matrix order): id, status, one column per axis, parameters
per component (``params.<kind>``, ``params.total``), Gaussian counts, median reconstruction time,
per render size the median frame time and FPS, ``quality.*`` columns, and the error of a failed
variant. The CSV holds raw numbers (seconds, counts); the markdown shows them rounded.

Plots (matplotlib, Agg backend; skipped with a note in ``results.md`` when it is not installed):
``fps_vs_params.png`` (driving FPS per render size against total parameters, log x) and, when
quality columns exist, ``quality_vs_encoder.png`` (each quality column against encoder parameters,
log x; with a ``seed`` axis, per-seed points and the mean over the seeds). With a ``seed`` axis,
``results.md`` ends with a table over the seeds (mean ± standard deviation [min, max] per group of
variants that differ only in the seed). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import statistics
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


SEED_AXIS = "seed"
"""The axis a matrix repeats runs over (the pipeline seed): rows that differ only in it are one group."""


def _groups(rows: list[dict[str, Any]], axes: list[str]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(other axes' values, ok rows) for each group of ok rows that differ only in the seed axis, in
    row order; empty unless the matrix has a ``seed`` axis."""
    if SEED_AXIS not in axes:
        return []
    others = [a for a in axes if a != SEED_AXIS]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault(tuple(r[a] for a in others), []).append(r)
    return [(dict(zip(others, key)), members) for key, members in groups.items()]


def _mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_summary(rows: list[dict[str, Any]], columns: list[str], axes: list[str]) -> str:
    """A markdown table over the seeds: per group of rows that differ only in the ``seed`` axis,
    the seeds, encoder parameters, and mean ± standard deviation [min, max] of every quality column
    and of the median driving frame time per render size. Empty without a seed axis."""
    groups = _groups(rows, axes)
    if not groups:
        return ""
    others = [a for a in axes if a != SEED_AXIS]
    quality = [c for c in columns if c.startswith("quality.")]
    frames = [c for c in columns if c.startswith("frame_s@")]
    head = [*others, "seeds", "params.encoder", "params.total", *quality, *frames]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for values, members in groups:
        cells = [str(values[a]) for a in others]
        cells.append(", ".join(str(r[SEED_AXIS]) for r in members))
        for c in ("params.encoder", "params.total"):
            counts = sorted({r[c] for r in members if r[c] != ""})
            cells.append(" / ".join(_cell(c, n) for n in counts))
        for c in [*quality, *frames]:
            got = [float(r[c]) for r in members if r[c] != ""]
            if not got:
                cells.append("")
                continue
            mean, sd = _mean_spread(got)
            scale, unit, digits = (1e3, " ms", 2) if c.startswith("frame_s@") else (1.0, "", 3)
            text = f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}{unit}"
            if len(got) > 1:
                text += f" [{min(got) * scale:.{digits}f}, {max(got) * scale:.{digits}f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _save(fig, path: Path) -> None:
    with atomic_output(path) as temporary:
        fig.savefig(temporary, dpi=120, bbox_inches="tight")


def write_plots(
    rows: list[dict[str, Any]], columns: list[str], out_dir: Path, axes: list[str] = ()
) -> tuple[list[Path], list[str]]:
    """PNG plots of the ok rows; (files written, notes). No matplotlib: no files, one note.

    With a ``seed`` axis, ``quality_vs_encoder.png`` also draws the mean over the seeds of each
    group (rows that differ only in the seed) as a line, and labels points by seed."""
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
        # Panels: the quality columns (those that are one value on every row, such as bad_steps 0,
        # only when nothing else is left), then the driving frame time per render size, which the
        # contract says must not depend on the encoder.
        varying = [c for c in quality_columns if len({r[c] for r in with_encoder if r[c] != ""}) > 1]
        panels = (varying or quality_columns) + [c for c in columns if c.startswith("frame_s@")]
        constant = [c for c in quality_columns if c not in panels]
        if constant:
            notes.append(f"quality_vs_encoder.png leaves out {', '.join(constant)} (one value on every row)")
        ncols = min(3, len(panels))
        nrows = -(-len(panels) // ncols)
        fig, plot_axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
        for ax in plot_axes.flat[len(panels) :]:
            ax.set_visible(False)
        groups = [
            (v, [r for r in m if r["params.encoder"] not in ("", 0)]) for v, m in _groups(ok, list(axes))
        ]

        def value(r, c):  # frame times in ms
            return r[c] * 1e3 if c.startswith("frame_s@") else r[c]

        for ax, c in zip(plot_axes.flat, panels):
            points = [(r["params.encoder"], value(r, c), r["id"]) for r in with_encoder if r[c] != ""]
            if groups:  # per-seed points, and the mean of each group as a line
                for seed in dict.fromkeys(r[SEED_AXIS] for r in with_encoder):
                    mine = [r for r in with_encoder if r[SEED_AXIS] == seed and r[c] != ""]
                    ax.scatter(
                        [r["params.encoder"] for r in mine],
                        [value(r, c) for r in mine],
                        s=18,
                        alpha=0.7,
                        label=f"seed {seed}",
                    )
                means = sorted(
                    (
                        statistics.fmean(r["params.encoder"] for r in m),
                        statistics.fmean(value(r, c) for r in m),
                    )
                    for _, m in groups
                    if m and all(r[c] != "" for r in m)
                )
                ax.plot([x for x, _ in means], [y for _, y in means], "k-o", ms=4, lw=1.2, label="mean")
                ax.legend(fontsize=7)
            else:
                ax.scatter([p[0] for p in points], [p[1] for p in points])
                for x, y, label in points:
                    ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("encoder parameters")
            ax.set_ylabel(
                f"driving ms / frame at {c[8:]} px" if c.startswith("frame_s@") else c[len("quality.") :]
            )
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle("Quality and driving time vs encoder size")
        fig.tight_layout()
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
        plots, notes = write_plots(rows, columns, out_dir, axes)
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
    text = to_markdown(columns, rows, notes, [p.name for p in plots])
    summary = seed_summary(rows, columns, axes)
    if summary:
        text += (
            "\n## Over the seeds\n\nmean ± standard deviation [min, max] over the seeds of each group.\n\n"
        )
        text += summary
    _write(paths["markdown"], text)
    paths.update({p.stem: p for p in plots})
    return paths


__all__ = ["seed_summary", "table_rows", "to_csv", "to_markdown", "write_plots", "write_report"]
