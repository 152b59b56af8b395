"""Grid multiruns and Optuna sweeps (the train command with -m, in the test process): one
folder per job named after what the sweep chose, a summary table of every job (failed ones
too), failing jobs do not stop the others."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_RUN_OVERRIDES
from tests.helpers.tasks import command_in_process


def sweep_dir(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "logs" / "quickstart" / "multiruns").glob("*")
    return sweep


def summary(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_grid_sweep_survives_a_failing_job_and_summarises_both(tmp_path: Path) -> None:
    # lr=1e30 makes the loss non-finite at the second step: a real failing job
    proc = command_in_process(
        "train", "-m", *TINY_RUN_OVERRIDES, "test=false", "optimizer.lr=1e30,1e-3", root=tmp_path
    )
    output = proc.stdout + proc.stderr
    sweep = sweep_dir(tmp_path)
    failed, completed = sweep / "0_optimizer.lr=1e+30", sweep / "1_optimizer.lr=0.001"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [failed.name, completed.name]
    assert not (failed / "metrics.json").exists()
    assert (completed / "metrics.json").is_file(), output[-2000:]
    rows = summary(sweep)
    assert [(r["job"], r["overrides"], r["status"]) for r in rows] == [
        (failed.name, "optimizer.lr=1e+30", "failed"),
        (completed.name, "optimizer.lr=0.001", "completed"),
    ]
    assert rows[0]["error"].startswith("non-finite training loss") and not rows[0]["val/rsum"]
    assert float(rows[1]["val/rsum"]) > 0 and rows[1]["run_dir"] == str(completed)
    assert (sweep / "summary.md").read_text().count("\n") == 4  # header, rule, two jobs
    # the failed job is one line, without a traceback, and the sweep exits 1
    assert proc.code == 1
    assert "Traceback" not in output
    assert output.count("non-finite training loss") == 2  # the job's log line, the sweep's


@pytest.mark.slow
def test_optuna_sweep_records_every_trial_and_prints_the_table_last(tmp_path: Path) -> None:
    # lr=1e30 diverges (non-finite loss); with seed 2 the sampler tries 1e30 first, then 1e-3
    proc = command_in_process(
        "train",
        "-m",
        "hparams_search=optuna_lr",
        *TINY_RUN_OVERRIDES,
        "test=false",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra.sweeper.sampler.seed=2",
        "optimizer.lr=choice(1e30, 1e-3)",
        root=tmp_path,
    )
    assert proc.code == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    rows = summary(sweep)
    assert [r["status"] for r in rows] == ["failed", "completed"]
    # each trial's folder and row name the values the sampler chose, the search space's keys
    for number, row in enumerate(rows):
        keys = {o.partition("=")[0] for o in row["overrides"].split()}
        assert keys == {
            "optimizer.lr",
            "optimizer.weight_decay",
            "model.tower_lr.image_encoder",
            "model/head",
        }
        assert row["job"].startswith(f"{number}_") and "model.head=" in row["job"]
        assert (sweep / row["job"] / "job.json").is_file()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["optimizer.lr"] == 1e-3
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"Sweep directory: {sweep}"
    assert any("Sweep: 2 jobs" in line for line in lines)
    assert "alembic" not in proc.stdout + proc.stderr
