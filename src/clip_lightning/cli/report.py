"""``python -m clip_lightning.report RUN_DIR... [--out PATH]``: the fine-tuning table.

For each training run: the pretrained baseline (the step-0 validation of
``validate_before_fit``), the best epoch (highest ``val/rsum``), the test figures of the best
checkpoint, and zero-shot top-1 before and after when the zero-shot callback logged it. An
``eval`` run folder adds its row (a pretrained baseline or a checkpoint eval), a WiSE-FT eval
folder one row per α. Every row states its protocol, split and numbers of images and captions;
open_clip's published zero-shot figures of the same model and protocol are listed beside them.
The table is printed and written as ``PATH.md`` and ``PATH.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from clip_lightning.errors import ClipLightningError
from clip_lightning.utils.results import read_json_object

RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
HEADERS = {
    "i2t_r1": "i→t R@1",
    "i2t_r5": "i→t R@5",
    "i2t_r10": "i→t R@10",
    "t2i_r1": "t→i R@1",
    "t2i_r5": "t→i R@5",
    "t2i_r10": "t→i R@10",
    "rsum": "RSUM",
}
# open_clip's zero-shot retrieval results (docs/openclip_retrieval_results.csv), R@1 in percent:
# (architecture, pretrained tag, protocol) -> (image→text, text→image)
PUBLISHED = {
    ("ViT-B-32", "openai", "flickr30k_1k"): (78.9, 58.8),
    ("ViT-B-32", "openai", "coco_5k"): (50.1, 30.4),
    ("ViT-B-32", "laion2b_s34b_b79k", "flickr30k_1k"): (84.1, 66.8),
    ("ViT-B-32", "laion2b_s34b_b79k", "coco_5k"): (56.3, 39.3),
}


class ReportError(ClipLightningError):
    """A folder that is not a run, or a run without the files the table needs."""


@dataclass
class Row:
    """One line of the table."""

    run: str
    figures: str
    protocol: str
    split: str
    images: int | None = None
    captions: int | None = None
    recalls: dict[str, float] = field(default_factory=dict)
    zeroshot_top1: float | None = None

    def cells(self) -> list[str]:
        numbers = [self.images, self.captions]
        return [
            self.run,
            self.figures,
            self.protocol,
            self.split,
            *("" if n is None else str(n) for n in numbers),
            *(f"{self.recalls[k]:.2f}" if k in self.recalls else "" for k in RECALLS),
            "" if self.zeroshot_top1 is None else f"{self.zeroshot_top1:.2f}",
        ]


COLUMNS = [
    "run",
    "figures",
    "protocol",
    "split",
    "images",
    "captions",
    *HEADERS.values(),
    "zero-shot top-1",
]


def _recalls(metrics: dict[str, Any], split: str) -> dict[str, float]:
    return {k: float(metrics[f"{split}/{k}"]) for k in RECALLS if f"{split}/{k}" in metrics}


def _count(metrics: dict[str, Any], key: str) -> int | None:
    value = metrics.get(key)
    return None if value in (None, "") else int(float(value))


def _config(run: Path) -> dict[str, Any]:
    path = run / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {str(k): v for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _csv_rows(run: Path) -> list[dict[str, str]]:
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _read_results(path: Path) -> dict[str, Any]:
    return read_json_object(path, ReportError, "a results object")


def training_rows(run: Path) -> list[Row]:
    """Baseline, best epoch and test rows of a training run folder (none for an eval run's,
    which has neither ``metrics.json`` nor ``csv/metrics.csv``)."""
    metrics_file = run / "metrics.json"
    logged = _csv_rows(run)
    if not logged and not metrics_file.is_file():
        return []
    config = _config(run)
    protocols = config.get("protocol")
    if not isinstance(protocols, dict):
        protocols = {}
    name = run.name
    by_step: dict[str, dict[str, str]] = {}
    for entry in logged:  # a step's metrics may be spread over several CSV lines
        merged = by_step.setdefault(entry.get("step", ""), {})
        merged.update({k: v for k, v in entry.items() if v != ""})
    validations = [m for m in by_step.values() if m.get("val/rsum")]
    rows = []
    baseline = None
    if config.get("validate_before_fit") and validations and validations[0].get("step") == "0":
        baseline = validations.pop(0)
    val_protocol = str(protocols.get("val", "split"))
    for values, label in (
        (baseline, "pretrained (step 0)"),
        (
            max(validations, key=lambda m: float(m["val/rsum"])) if validations else None,
            "best epoch",
        ),
    ):
        if values is None:
            continue
        if label == "best epoch":
            label = f"best epoch {values.get('epoch', '?')} (step {values.get('step', '?')})"
        top1 = values.get("zeroshot/top1")
        rows.append(
            Row(
                name,
                label,
                val_protocol,
                "val",
                _count(values, "val/images"),
                _count(values, "val/captions"),
                _recalls(values, "val"),
                float(top1) if top1 else None,
            )
        )
    metrics = _read_results(metrics_file) if metrics_file.is_file() else {}
    if "test/rsum" in metrics:
        rows.append(
            Row(
                name,
                "test, best checkpoint",
                str(protocols.get("test", "split")),
                "test",
                _count(metrics, "test/images"),
                _count(metrics, "test/captions"),
                _recalls(metrics, "test"),
            )
        )
    return rows


def eval_rows(run: Path) -> list[Row]:
    """The row of a retrieval eval folder, or one row per α of a WiSE-FT eval folder."""
    rows = []
    wise = run / "wise_ft.json"
    if wise.is_file():
        results = _read_results(wise)
        for entry in results["rows"]:
            rows.append(
                Row(
                    run.name,
                    f"WiSE-FT α={entry['alpha']:g}",
                    results["protocol"],
                    results["split"],
                    results["images"],
                    results["captions"],
                    _recalls(entry, results["split"]),
                    entry.get("zeroshot/top1"),
                )
            )
    single = run / "eval_results.json"
    if single.is_file():
        results = _read_results(single)
        what = (
            f"eval of {Path(results['checkpoint']).name}"
            if results.get("checkpoint")
            else f"pretrained {results.get('model')} {Path(str(results.get('pretrained'))).name}"
        )
        rows.append(
            Row(
                run.name,
                what,
                results.get("protocol", "split"),
                results["split"],
                results.get("images"),
                results.get("captions"),
                _recalls(results["metrics"], results["split"]),
            )
        )
    return rows


def published_rows(runs: Sequence[Path], rows: Sequence[Row]) -> list[Row]:
    """open_clip's published zero-shot figures for the models and protocols in the table."""
    models = set()
    for run in runs:
        model = _config(run).get("model") or {}
        if model.get("arch"):
            models.add((str(model["arch"]), str(model.get("pretrained"))))
        single = run / "eval_results.json"
        if single.is_file():
            results = _read_results(single)
            if results.get("model") and results.get("pretrained"):
                models.add((str(results["model"]), str(results["pretrained"])))
    protocols = sorted({row.protocol for row in rows})
    found = []
    for arch, tag in sorted(models):
        for protocol in protocols:
            figures = PUBLISHED.get((arch, tag, protocol))
            if figures is not None:
                recalls = {"i2t_r1": figures[0], "t2i_r1": figures[1]}
                found.append(
                    Row(
                        "published (open_clip)",
                        f"{arch} {tag}",
                        protocol,
                        "test",
                        None,
                        None,
                        recalls,
                    )
                )
    return found


def build_report(runs: Sequence[Path]) -> list[Row]:
    """Every row of ``runs``, in the order given, then the published references."""
    rows: list[Row] = []
    for run in runs:
        if not run.is_dir():
            raise ReportError(f"{run} is not a folder; pass run directories (logs/<task>/runs/...)")
        try:
            found = training_rows(run) + eval_rows(run)
        except (KeyError, TypeError, ValueError) as exc:  # a result file is data, not ours
            raise ReportError(
                f"{run} holds a result file without the fields clip_lightning writes "
                f"({type(exc).__name__}: {exc}); pass the folder of a clip_lightning.train or "
                "clip_lightning.eval run as it wrote it"
            ) from None
        if not found:
            raise ReportError(
                f"{run} holds no results (metrics.json with test figures, csv/metrics.csv, "
                "eval_results.json or wise_ft.json); pass the folder of a clip_lightning.train "
                "or clip_lightning.eval run"
            )
        rows.extend(found)
    return rows + published_rows(runs, rows)


def markdown(rows: Sequence[Row]) -> str:
    """The table in Markdown, recalls and accuracy in percent."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[Row], out: Path) -> tuple[Path, Path]:
    """``out.md`` and ``out.csv``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    md, table = out.with_suffix(".md"), out.with_suffix(".csv")
    md.write_text(markdown(rows))
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(row.cells() for row in rows)
    return md, table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m clip_lightning.report",
        description="Fine-tuning report of clip_lightning.train / clip_lightning.eval runs.",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument(
        "--out", type=Path, default=Path("finetune_report"), help="writes OUT.md and OUT.csv"
    )
    args = parser.parse_args(argv)
    try:
        rows = build_report(args.runs)
    except ClipLightningError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(markdown(rows))
    md, table = write_report(rows, args.out)
    print(f"Report: {md} and {table}")
