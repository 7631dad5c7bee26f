"""Where a run's numbers go: TensorBoard, CSV, Weights & Biases, MLflow and a JSON-lines file,
written by rank 0 only.

The ``logger`` group chooses any of ``tensorboard``, ``csv``, ``wandb`` and ``mlflow`` (``logger=many_loggers``:
csv + tensorboard; ``logger=[csv,tensorboard,wandb]``: a list); ``<output_dir>/metrics.jsonl`` is always
written so every run can be read back without any of them. wandb and mlflow are optional packages,
imported only when chosen; ``check_installed`` refuses a chosen one that is missing before any work.
"""
from __future__ import annotations

import csv
import importlib
import json
import math
import os
import re
from typing import Any, Optional

from util.errors import ConfigError
from util.files import atomic_write_text, temp_path
from util.schema import Bool, List, Section, Str


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
_PREFIX = Str(empty=True, nullable=True)
_WANDB_SCHEMA = {"project": Str(), "name": Str(nullable=True), "save_dir": Str(), "offline": Bool(),
                 "tags": List(Str(), nullable=True), "group": Str(nullable=True), "prefix": _PREFIX}
_MLFLOW_SCHEMA = {"experiment_name": Str(), "run_name": Str(nullable=True), "tracking_uri": Str(),
                  "tags": Section({}, closed=False, nullable=True), "prefix": _PREFIX}
# the logger group: each logger optional; a chosen one gives every key
LOGGER_SCHEMA = {"tensorboard": Section(_WRITER_SCHEMA, required=False, nullable=True),
                 "csv": Section(_WRITER_SCHEMA, required=False, nullable=True),
                 "wandb": Section(_WANDB_SCHEMA, required=False, nullable=True),
                 "mlflow": Section(_MLFLOW_SCHEMA, required=False, nullable=True)}
OPTIONAL_LOGGERS = ("wandb", "mlflow")  # each the name of its logger config and of its pip package


def import_logger_package(name: str) -> Any:
    """The package of the optional logger ``name`` (``wandb`` | ``mlflow``); ``ConfigError`` when it
    cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"logger={name} needs the {name} package, which cannot be imported ({e}): "
                          f"pip install {name}, or choose logger=tensorboard, logger=csv or logger=many_loggers"
                          ) from None


def check_installed(logger_cfg: Optional[dict]) -> None:
    """Import the package of every chosen optional logger now, so a missing one stops the run before
    any work (``ConfigError``: exit code 2)."""
    for name in OPTIONAL_LOGGERS:
        if (logger_cfg or {}).get(name) is not None:
            import_logger_package(name)


def _flat_params(node: Any, prefix: str = "") -> dict:
    """A config as ``{"a.b.c": str(value)}`` for ``mlflow.log_params`` (lists as one value; names
    outside MLflow's characters and values over its oldest length limit shortened)."""
    if isinstance(node, dict):
        out: dict = {}
        for key, value in node.items():
            out.update(_flat_params(value, prefix + re.sub(r"[^\w./ -]", "_", str(key)) + "."))
        return out
    return {prefix[:-1][:250]: str(node)[:250]}


class RunLogger:
    """``run_config``: the composed config, given to wandb (``config``) and mlflow (``log_params``)."""

    def __init__(self, logger_cfg: Optional[dict], output_dir: str, enabled: bool = True,
                 run_config: Optional[dict] = None) -> None:
        self.enabled = enabled
        self.tb = None
        self.wandb_run: Any = None
        self.wandb_prefix = ""
        self.mlflow: Any = None  # the mlflow module while its run is active
        self.mlflow_prefix = ""
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
        plain = json.loads(json.dumps(run_config, default=str)) if run_config is not None else None
        wandb_cfg = logger_cfg.get("wandb")
        if wandb_cfg is not None:
            wandb = import_logger_package("wandb")
            os.makedirs(wandb_cfg["save_dir"], exist_ok=True)
            self.wandb_run = wandb.init(project=wandb_cfg["project"], name=wandb_cfg["name"],
                                        dir=wandb_cfg["save_dir"], mode="offline" if wandb_cfg["offline"] else "online",
                                        tags=list(wandb_cfg["tags"] or []) or None, group=wandb_cfg["group"],
                                        config=plain)
            self.wandb_prefix = wandb_cfg["prefix"] or ""
        mlflow_cfg = logger_cfg.get("mlflow")
        if mlflow_cfg is not None:
            mlflow = import_logger_package("mlflow")
            mlflow.set_tracking_uri(mlflow_cfg["tracking_uri"])
            mlflow.set_experiment(mlflow_cfg["experiment_name"])
            tags = {str(k): str(v) for k, v in (mlflow_cfg["tags"] or {}).items()}
            mlflow.start_run(run_name=mlflow_cfg["run_name"], tags=tags or None)
            self.mlflow, self.mlflow_prefix = mlflow, mlflow_cfg["prefix"] or ""
            if plain:
                params = list(_flat_params(plain).items())
                for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
                    mlflow.log_params(dict(params[i:i + 100]))

    def log(self, metrics: dict, step: int, **context: Any) -> None:
        """Log scalar ``metrics`` at global ``step``; ``context`` (e.g. epoch) goes to JSON/CSV rows."""
        if not self.enabled:
            return
        scalars = {k: v for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(self.prefix + key, value, step)
        numbers = {k: v for k, v in ((k, _number(v)) for k, v in context.items()) if v is not None}
        if self.wandb_run is not None:
            self.wandb_run.log({**numbers, **{self.wandb_prefix + k: v for k, v in scalars.items()}}, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({**numbers, **{self.mlflow_prefix + k: v for k, v in scalars.items()}}, step=step)
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
        if self.wandb_run is not None:
            run, self.wandb_run = self.wandb_run, None
            run.finish()
        if self.mlflow is not None:
            mlflow, self.mlflow = self.mlflow, None
            mlflow.end_run()
