"""Sweeps (``-m``): job folders named after what the sweep chose, and one table of all jobs.

``hydra.sweep.subdir`` is ``${sweep_job_name:}``: the job number and the overrides the sweep
chose for the job (``0_optimizer.lr=0.001``), the ones given to every job left out.
:class:`SweepSummary`, a Hydra callback (``hydra.callbacks``), records each job's outcome in
its folder and writes ``summary.csv`` and ``summary.md`` into the sweep folder, one row per job
(grid job or Optuna trial): its swept overrides (read from its ``.hydra/overrides.yaml``),
status, validation and test figures and folder. At the end of the sweep it prints the table and
the sweep folder, last.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

JOB_FILE = "job.json"
METRICS_FILE = "metrics.json"
SUMMARY = "summary"
# the figures of a row, where a job has them
FIGURES = (
    "val/rsum",
    "test/rsum",
    *(f"test/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)),
)
# of those, the ones the printed table shows
SHOWN_FIGURES = ("val/rsum", "test/rsum", "test/i2t_r1", "test/t2i_r1")
# a folder name stays well below the file systems' 255-byte limit
MAX_NAME = 120


class FailedJob(CompactHydraException):
    """A sweep job stopped by a user error whose line was already logged: the sweeper records
    the failure, and Hydra prints the line alone, without a traceback."""


def swept_keys(sweeper_params: Mapping[str, Any] | None) -> set[str]:
    """The keys the sweep varies: sweeps on the command line (``lr=1e-3,1e-2``,
    ``lr=choice(...)``) and the sweeper's own search space (``hydra.sweeper.params``)."""
    given = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    overrides = OverridesParser.create().parse_overrides(given)
    return {o.key_or_group for o in overrides if o.is_sweep_override()} | set(sweeper_params or ())


def swept_overrides(task_overrides: list[str], keys: Collection[str]) -> list[Override]:
    """Those of a job's overrides whose key is in ``keys``."""
    parsed = OverridesParser.create().parse_overrides(task_overrides)
    return [o for o in parsed if o.key_or_group in keys]


def _text(override: Override, short: bool = False) -> str:
    """``key=value``; ``short`` keeps 4 significant digits of a float (Optuna's have 17)."""
    value = override.value()
    shown = f"{value:.4g}" if short and isinstance(value, float) else None
    return f"{override.key_or_group}={shown or override.get_value_element_as_str()}"


def job_name() -> str:
    """``${sweep_job_name:}``: ``<job number>_<swept overrides>``, safe as a folder name."""
    hydra = HydraConfig.get()
    chosen = swept_overrides(list(hydra.overrides.task), swept_keys(hydra.sweeper.get("params")))
    text = ",".join(_text(o, short=True) for o in chosen).replace("/", ".")
    name = re.sub(r"[^\w.=,+-]", "_", text)[:MAX_NAME]
    return f"{hydra.job.num}_{name}" if name else str(hydra.job.num)


def register_job_name_resolver() -> None:
    """``${sweep_job_name:}``, used by ``hydra.sweep.subdir`` (conf/hydra/default.yaml)."""
    if not OmegaConf.has_resolver("sweep_job_name"):
        OmegaConf.register_new_resolver("sweep_job_name", job_name)


class SweepSummary(Callback):
    """Writes each job's outcome into its folder and the sweep's table into the sweep folder."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_sweep(config):
            return
        failed = job_return.status == JobStatus.FAILED
        # job_return.return_value would re-raise the job's exception
        error = str(job_return._return_value).strip().splitlines() if failed else []
        record = {
            "status": "failed" if failed else "completed",
            "error": error[0] if error else None,
        }
        folder = Path(config.hydra.runtime.output_dir)
        (folder / JOB_FILE).write_text(json.dumps(record, indent=2) + "\n")
        # also there if the sweep stops at a failed job (the end rewrites it)
        write_summary(folder.parent, swept_keys(config.hydra.sweeper.get("params")))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        rows = write_summary(sweep_dir, swept_keys(config.hydra.sweeper.get("params")))
        print_summary(rows)
        print(f"Sweep directory: {sweep_dir}")


def _is_sweep(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode", default=None) == RunMode.MULTIRUN


def job_rows(sweep_dir: Path, keys: Collection[str]) -> list[dict[str, Any]]:
    """One row per job folder of ``sweep_dir`` that recorded its outcome, in job order; the
    overrides shown are those of ``keys`` (:func:`swept_keys`)."""
    rows = []
    for record_path in sweep_dir.glob(f"*/{JOB_FILE}"):
        folder = record_path.parent
        record = json.loads(record_path.read_text())
        metrics = _read_json(folder / METRICS_FILE)
        given = folder / ".hydra" / "overrides.yaml"  # Hydra's record of the job's overrides
        overrides = list(OmegaConf.load(given)) if given.is_file() else []
        rows.append(
            {
                "job": folder.name,
                "overrides": " ".join(_text(o) for o in swept_overrides(overrides, keys)),
                "status": record["status"],
                **{key: metrics.get(key) for key in FIGURES},
                "error": record["error"],
                "run_dir": str(folder),
            }
        )
    return sorted(rows, key=lambda row: int(row["job"].partition("_")[0]))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_summary(sweep_dir: Path, keys: Collection[str]) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``summary.md`` from the job folders; returns the rows."""
    rows = job_rows(sweep_dir, keys)
    columns = _columns(rows, [*FIGURES])
    with (sweep_dir / f"{SUMMARY}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    (sweep_dir / f"{SUMMARY}.md").write_text("\n".join(lines) + "\n")
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    """The rows as a console table: job number, overrides, status and the main figures (the
    job folder is ``<number>_<overrides>``)."""
    table = Table(title=f"Sweep: {len(rows)} jobs")
    columns = [c for c in _columns(rows, [*SHOWN_FIGURES]) if c not in ("error", "run_dir")]
    for column in columns:
        label = {"job": "#"}.get(column, column.replace("/", " ").replace("_r1", " R@1"))
        # a long override list folds onto more lines instead of being cut
        table.add_column(label, justify="right" if "/" in column else "left", overflow="fold")
    for row in rows:
        number = row["job"].partition("_")[0]
        table.add_row(number, *(_cell(row[c]) for c in columns[1:]))
    Console(highlight=False).print(table)


def _columns(rows: list[dict[str, Any]], figures: list[str]) -> list[str]:
    """The row keys to show: figures only where some job has them."""
    present = [f for f in figures if any(row[f] is not None for row in rows)]
    return ["job", "overrides", "status", *present, "error", "run_dir"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if isinstance(value, float) else str(value).replace("|", "\\|")
