"""Grid multiruns and Optuna sweeps: one dir per job, failing jobs do not stop the others."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_RUN_OVERRIDES, run_train


def sweep_jobs(tmp_path: Path) -> list[Path]:
    (sweep,) = (tmp_path / "logs" / "quickstart" / "multiruns").glob("*")
    return sorted(p for p in sweep.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_grid_sweep_survives_a_failing_job(tmp_path: Path) -> None:
    # lr=1e30 makes the loss non-finite at the second step: a real failing job
    proc = run_train(
        tmp_path, "-m", *TINY_RUN_OVERRIDES, "test=false", "optimizer.lr=1e30,1e-3", check=False
    )
    jobs = sweep_jobs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1"]
    assert not (jobs[0] / "metrics.json").exists()
    assert (jobs[1] / "metrics.json").is_file(), proc.stderr[-2000:]
    # Hydra's basic sweeper reports the failed job once every job has run
    assert proc.returncode != 0
    assert "non-finite training loss" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_optuna_sweep_two_trials(tmp_path: Path) -> None:
    run_train(
        tmp_path,
        "-m",
        "hparams_search=optuna_lr",
        *TINY_RUN_OVERRIDES,
        "test=false",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
    )
    jobs = sweep_jobs(tmp_path)
    assert len(jobs) == 2
    assert all((job / "metrics.json").is_file() for job in jobs)
    results = yaml.safe_load((jobs[0].parent / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and "optimizer.lr" in results["best_params"]


@pytest.mark.slow
def test_optuna_sweep_records_a_failing_trial_and_goes_on(tmp_path: Path) -> None:
    # lr=1e30 diverges (non-finite loss); with seed 2 the sampler tries 1e30 first, then 1e-3
    run_train(
        tmp_path,
        "-m",
        "hparams_search=optuna_lr",
        *TINY_RUN_OVERRIDES,
        "test=false",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra.sweeper.sampler.seed=2",
        "optimizer.lr=choice(1e30, 1e-3)",
    )
    jobs = sweep_jobs(tmp_path)
    assert len(jobs) == 2
    assert sum((job / "metrics.json").is_file() for job in jobs) == 1
    results = yaml.safe_load((jobs[0].parent / "optimization_results.yaml").read_text())
    assert results["best_params"]["optimizer.lr"] == 1e-3
