"""What a training run reports: a progress bar, scalars (CSV, TensorBoard), image grids.

Files under the run folder:

- ``scalars.csv``: one row per logged step (``step``, ``loss``, each loss term, ``lr``,
  ``grad_norm``, ``bad_steps``, ``it_per_s``); a resumed run first drops rows past its checkpoint,
  so the file always describes one consistent run;
- ``tensorboard/``: the same scalars and the image grids, when ``tensorboard`` is installed
  (``pip install tensorboard``; otherwise a one-time warning and CSV only);
- ``images/step-NNNNNN.png``: rows of source | target | coarse render | output, written atomically.

Only rank 0 makes a ``RunLogger`` that writes; other ranks get one with ``enabled=False``.
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

CSV_FILE = "scalars.csv"
IMAGES_DIR = "images"
TENSORBOARD_DIR = "tensorboard"


def image_grid(columns: list[Tensor], pad: int = 2) -> Tensor:
    """One image [3, H', W'] from equal-height columns, each [R, 3, h_c, w_c] (R rows); every cell
    is resized to the first column's cell size, with ``pad`` white pixels between cells."""
    import torch.nn.functional as F

    rows = columns[0].shape[0]
    h, w = columns[0].shape[-2:]
    cells = []
    for col in columns:
        col = col.detach().float().cpu().clamp(0, 1)[:rows]
        if col.shape[-2:] != (h, w):
            col = F.interpolate(col, size=(h, w), mode="bilinear", align_corners=False)
        cells.append(col)
    grid = torch.ones(3, rows * (h + pad) + pad, len(cells) * (w + pad) + pad)
    for c, col in enumerate(cells):
        for r in range(rows):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            grid[:, top : top + h, left : left + w] = col[r]
    return grid


def write_png(path: Path, image: Tensor) -> None:
    """Write [3, H, W] in [0, 1] as an 8-bit PNG, atomically."""
    import numpy as np
    from PIL import Image

    from gshead.io.media import atomic_output

    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


class RunLogger:
    """Progress bar, CSV and TensorBoard scalars, image grids for one run (rank 0 only)."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, quiet: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.quiet = quiet or not enabled
        self._bar = None
        self._tb = None
        self._tb_tried = False
        self._fields: list[str] | None = None

    # -- progress bar -----------------------------------------------------------------
    def start(self, first_step: int, total_steps: int) -> None:
        """Open the bar at ``first_step`` of ``total_steps`` (tqdm shows it/s itself)."""
        from tqdm import tqdm

        self._bar = tqdm(
            total=total_steps,
            initial=first_step,
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=self.quiet,
        )

    def advance(self, loss: float, bad_steps: int) -> None:
        if self._bar is not None:
            postfix = f"loss={loss:.4f}" + (f" bad={bad_steps}" if bad_steps else "")
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update()

    def message(self, text: str) -> None:
        """A line on stderr that does not break the bar (not shown with --quiet)."""
        if self.enabled and not self.quiet:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # -- scalars -------------------------------------------------------------------------
    @property
    def csv_path(self) -> Path:
        return self.run_dir / CSV_FILE

    def truncate_after(self, step: int) -> None:
        """Drop CSV rows with step > ``step`` (a resumed run rewrites them)."""
        if not self.enabled or not self.csv_path.is_file():
            return
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
        from gshead.io.media import atomic_output

        with atomic_output(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Append a CSV row and TensorBoard scalars for ``step``."""
        if not self.enabled:
            return
        row = {"step": step, **values}
        if self._fields is None:
            if self.csv_path.is_file() and self.csv_path.stat().st_size > 0:
                with open(self.csv_path, newline="") as f:
                    self._fields = next(csv.reader(f))
            else:
                self._fields = list(row)
                with open(self.csv_path, "w", newline="") as f:
                    csv.writer(f).writerow(self._fields)
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self._fields])
        tb = self._tensorboard()
        if tb is not None:
            for key, value in values.items():
                tb.add_scalar(f"train/{key}", value, step)

    def _tensorboard(self):
        if self._tb_tried:
            return self._tb
        self._tb_tried = True
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                "tensorboard is not installed: scalars go to scalars.csv only (pip install 'gshead[train]')",
                stacklevel=2,
            )
            return None
        self._tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))
        return self._tb

    # -- images --------------------------------------------------------------------------
    def images(
        self, step: int, source: Tensor, target: Tensor, coarse: Tensor, output: Tensor
    ) -> Path | None:
        """Write the grid for ``step``: rows are target frames; columns source | target | coarse | output.

        ``source`` [1, 3, S, S] (repeated down the rows); the others [R, 3, h, w]."""
        if not self.enabled:
            return None
        rows = min(target.shape[0], 4)
        grid = image_grid([source.expand(rows, -1, -1, -1), target[:rows], coarse[:rows, :3], output[:rows]])
        folder = self.run_dir / IMAGES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step:06d}.png"
        write_png(path, grid)
        tb = self._tensorboard()
        if tb is not None:
            tb.add_image("train/grid", grid, step)
        return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)
