"""Where a run's numbers go: TensorBoard, CSV and a JSON-lines file, written by rank 0 only.

``logger`` configs choose TensorBoard (``logger: tensorboard``) and/or CSV (``logger: csv``);
``<output_dir>/metrics.jsonl`` is always written so every run can be read back without TensorBoard.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Optional

from util.files import atomic_write_text, temp_path
from util.schema import Section, Str


def write_json(path: str, payload: dict) -> None:
    """``payload`` as indented JSON (non-JSON values as their ``str``), written atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def _number(value: Any) -> Optional[float]:
    try:
        value = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None
    return value


_WRITER_SCHEMA = {"save_dir": Str(), "name": Str(nullable=True), "prefix": Str(empty=True, nullable=True)}
# the logger group: each logger optional; a chosen one gives every key
LOGGER_SCHEMA = {"tensorboard": Section(_WRITER_SCHEMA, required=False, nullable=True),
                 "csv": Section(_WRITER_SCHEMA, required=False, nullable=True)}


class RunLogger:
    def __init__(self, logger_cfg: Optional[dict], output_dir: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tb = None
        self.csv_path = None
        self.csv_fields: list[str] = []
        self.prefix = ""
        self.csv_prefix = ""
        self.jsonl_path = os.path.join(output_dir, "metrics.jsonl")
        if not enabled:
            return
        logger_cfg = logger_cfg or {}  # each logger of the group is optional; a chosen one gives every key
        tb_cfg = logger_cfg.get("tensorboard")
        if tb_cfg is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=os.path.join(tb_cfg["save_dir"], tb_cfg["name"] or ""))
            self.prefix = tb_cfg["prefix"] or ""
        csv_cfg = logger_cfg.get("csv")
        if csv_cfg is not None:
            folder = os.path.join(csv_cfg["save_dir"], csv_cfg["name"] or "")
            os.makedirs(folder, exist_ok=True)
            self.csv_path = os.path.join(folder, "metrics.csv")
            self.csv_prefix = csv_cfg["prefix"] or ""

    def log(self, metrics: dict, step: int, **context: Any) -> None:
        """Log scalar ``metrics`` at global ``step``; ``context`` (e.g. epoch) goes to JSON/CSV rows."""
        if not self.enabled:
            return
        scalars = {k: v for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(self.prefix + key, value, step)
        row = {"step": step, **context, **{k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}}
        with open(self.jsonl_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.csv_path is not None:
            row = {(k if k in ("step", *context) else self.csv_prefix + k): v for k, v in row.items()}
            new_fields = [k for k in row if k not in self.csv_fields]
            if new_fields:
                self.csv_fields += new_fields
                self._rewrite_csv_header()
            with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.csv_fields).writerow(row)

    def _rewrite_csv_header(self) -> None:
        rows = []
        if os.path.exists(self.csv_path):
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        with open(self.csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.csv_fields)
            writer.writeheader()
            writer.writerows(rows)

    def log_figure(self, tag: str, figure: Any, step: int, png_path: Optional[str] = None, dpi: int = 100) -> None:
        """A matplotlib figure to TensorBoard and, when ``png_path`` is given, to a PNG file (written
        whole or not at all)."""
        if not self.enabled:
            return
        if png_path is not None:
            os.makedirs(os.path.dirname(png_path), exist_ok=True)
            partial = temp_path(png_path)
            figure.savefig(partial, dpi=dpi, format="png")
            os.replace(partial, png_path)
        if self.tb is not None:
            self.tb.add_figure(self.prefix + tag, figure, step, close=False)

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_text(self.prefix + tag, text, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None
