"""``python -m clip_lightning.eval ckpt_path=CKPT wise_ft.alphas=[0,0.25,0.5,0.75,1]``: the
WiSE-FT curve of a fine-tuned checkpoint (:mod:`clip_lightning.wise_ft`).

Each θ(α) is scored on the target task (retrieval on ``dataset`` under ``protocol``) and, when
``images=IMAGEFOLDER`` is given, by zero-shot classification: the trade-off between the task
fine-tuned for and what the pretrained model knew. One table comes out, as ``wise_ft.json``,
``wise_ft.csv`` and on the console, with a plot (``wise_ft.png``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from clip_lightning.cli.eval import evaluate_retrieval, evaluate_zeroshot
from clip_lightning.cli.eval_model import EvalModel
from clip_lightning.cli.loading import load_model
from clip_lightning.cli.task import run_dir
from clip_lightning.errors import ConfigError
from clip_lightning.plots import wise_ft_curve
from clip_lightning.utils.results import write_json
from clip_lightning.wise_ft import WeightSpaceEnsemble

RESULTS_NAME = "wise_ft.json"


def evaluate_wise_ft(cfg: DictConfig) -> dict[str, Any]:
    """Score θ(α) for every α of ``cfg.wise_ft.alphas``; write the table and the plot."""
    if cfg.get("model") is not None:
        raise ConfigError(
            "WiSE-FT interpolates a fine-tuned checkpoint with its pretrained start: pass "
            "ckpt_path=CKPT instead of model=..."
        )
    options = cfg.wise_ft
    ensemble = WeightSpaceEnsemble(load_model(cfg.ckpt_path), options.get("base"))
    rows, retrieval = [], {}
    for alpha in [float(a) for a in options.alphas]:
        candidate = EvalModel(ensemble.at(alpha), {"checkpoint": str(cfg.ckpt_path)})
        retrieval = evaluate_retrieval(cfg, candidate, show=False)
        row: dict[str, Any] = {"alpha": alpha, **retrieval["metrics"]}
        if cfg.get("images"):
            zeroshot = evaluate_zeroshot(cfg, candidate, show=False)
            row.update({f"zeroshot/top{k}": zeroshot[f"top{k}"] for k in cfg.zeroshot.top_k})
        rows.append(row)
    results = {
        "task": "wise_ft",
        "checkpoint": str(cfg.ckpt_path),
        "base": options.get("base") or "pretrained start recorded in the checkpoint",
        **{key: retrieval[key] for key in ("dataset", "protocol", "split", "images", "captions")},
        "zeroshot_images": str(cfg.images) if cfg.get("images") else None,
        "rows": rows,
    }
    folder = run_dir(cfg)
    write_json(folder / RESULTS_NAME, results)
    write_csv(folder / "wise_ft.csv", rows, results["protocol"])
    print_table(results)
    wise_ft_curve(rows, results["split"], folder / "wise_ft.png")
    print(f"Results: {folder / RESULTS_NAME}")
    return results


def write_csv(path: Path, rows: list[dict[str, Any]], protocol: str) -> None:
    """One row per α, one column per figure, and the protocol they were scored by (the split
    prefixes the figures' names; the numbers of images and captions are figures too)."""
    table = [{"alpha": row["alpha"], "protocol": protocol, **row} for row in rows]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def print_table(results: dict[str, Any]) -> None:
    """α against R@1 both ways, RSUM and, when scored, zero-shot top-1."""
    split = results["split"]
    table = Table(
        title=(
            f"WiSE-FT, {results['dataset']} protocol {results['protocol']} ({split} split: "
            f"{results['images']} images, {results['captions']} captions)"
        )
    )
    columns = {
        "α": "alpha",
        "image → text R@1": f"{split}/i2t_r1",
        "text → image R@1": f"{split}/t2i_r1",
        "RSUM": f"{split}/rsum",
    }
    if results["zeroshot_images"]:
        columns["zero-shot top-1"] = "zeroshot/top1"
    for name in columns:
        table.add_column(name, justify="right")
    for row in results["rows"]:
        table.add_row(*(f"{row[key]:.2f}" for key in columns.values()))
    Console().print(table)
