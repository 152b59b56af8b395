"""The fine-tuning report of a real tiny fine-tuning run (open_clip pair with LoRA, layer decay,
EMA and the zero-shot callback) and of a WiSE-FT eval of its checkpoint: baseline, best
epoch, test and WiSE-FT rows carry the figures those runs wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from clip_lightning.cli.eval import evaluate
from clip_lightning.cli.report import main as report
from clip_lightning.cli.train import train
from tests.helpers import compose_eval
from tests.helpers.data import COLOURS, make_folder
from tests.helpers.pretrained import open_clip_cfg, synthetic_overrides


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    """Two epochs of the tiny open_clip pair with the report's options turned on."""
    root = tmp_path_factory.mktemp("finetune")
    images = make_folder(root / "colours", dict(list(COLOURS.items())[:3]), per_class=2)
    run = root / "run"
    cfg = open_clip_cfg(
        run,
        extra=[
            "validate_before_fit=true",
            "callbacks=[default,ema,zeroshot]",
            "callbacks.ema.decay=0.5",
            f"callbacks.zeroshot.images={images}",
            "callbacks.zeroshot.templates=['a photo of a {}.']",
            "callbacks.zeroshot.templates_file=null",
            "~callbacks.alignment_plots",
            "model.lora.r=4",
            "optimizer.layer_decay=0.8",
            "model.tower_lr={image_encoder:1e-3,text_encoder:1e-3}",
            "trainer.max_epochs=2",
        ],
    )
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # what Hydra writes for a CLI run
    metrics = train(cfg)
    return run, images, metrics


def read_table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_rows_hold_the_runs_own_figures(finetune_run, tmp_path, capsys):
    run, _, metrics = finetune_run
    # LoRA: adapters and the temperature only, reported in metrics.json
    assert 0 < metrics["params/trainable"] < 0.2 * metrics["params/total"]
    (checkpoint,) = (run / "checkpoints").glob("epoch_*.ckpt")
    wise = tmp_path / "wise"
    wise_cfg = compose_eval(
        [
            *[o for o in synthetic_overrides() if o.startswith("dataset")],
            "trainer.accelerator=cpu",
            f"ckpt_path={checkpoint}",
            "wise_ft.alphas=[0,1]",
        ],
        wise,
    )
    evaluate(wise_cfg)
    # what Hydra writes for a CLI eval: its protocol is one name, not train's val/test pair
    (wise / ".hydra").mkdir()
    OmegaConf.save(wise_cfg, wise / ".hydra" / "config.yaml")
    report([str(run), str(wise), "--out", str(tmp_path / "report")])
    rows = read_table(tmp_path / "report.csv")
    assert rows[0]["figures"] == "pretrained (step 0)"
    assert rows[1]["figures"].startswith("best epoch")
    assert [r["figures"] for r in rows[2:]] == [
        "test, best checkpoint",
        "WiSE-FT α=0",
        "WiSE-FT α=1",
    ]
    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        logged = [r for r in csv.DictReader(handle) if r.get("val/rsum")]
    baseline, best = rows[0], rows[1]
    assert float(baseline["RSUM"]) == pytest.approx(float(logged[0]["val/rsum"]), abs=0.01)
    assert baseline["zero-shot top-1"] and best["zero-shot top-1"]  # before and after
    assert float(best["RSUM"]) == pytest.approx(
        max(float(r["val/rsum"]) for r in logged[1:]), abs=0.01
    )
    test = rows[2]
    assert (test["protocol"], test["split"], test["images"]) == ("split", "test", "16")
    assert float(test["t→i R@1"]) == pytest.approx(metrics["test/t2i_r1"], abs=0.01)
    # the best checkpoint holds EMA weights: its α=1 WiSE-FT row is the test row
    assert rows[4]["RSUM"] == test["RSUM"]
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.splitlines()[0].startswith("| run | figures | protocol |")
    assert "| WiSE-FT α=1 |" in capsys.readouterr().out


def test_published_baselines_sit_beside_a_matching_eval(tmp_path):
    # the result file of `eval model=open_clip model.arch=ViT-B-32 model.pretrained=openai
    # protocol=flickr30k_1k` (figures of that shape; the model is not downloaded here)
    folder = tmp_path / "baseline"
    folder.mkdir()
    figures = {
        f"test/{k}": 50.0
        for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
    }
    result = {
        "task": "retrieval",
        "checkpoint": None,
        "model": "ViT-B-32",
        "pretrained": "openai",
        "dataset": "flickr30k",
        "protocol": "flickr30k_1k",
        "split": "test",
        "images": 1000,
        "captions": 5000,
        "metrics": figures,
    }
    (folder / "eval_results.json").write_text(json.dumps(result))
    report([str(folder), "--out", str(tmp_path / "report")])
    rows = read_table(tmp_path / "report.csv")
    assert rows[0]["figures"] == "pretrained ViT-B-32 openai"
    published = rows[1]
    assert (published["run"], published["protocol"]) == ("published (open_clip)", "flickr30k_1k")
    assert (published["i→t R@1"], published["t→i R@1"]) == ("78.90", "58.80")


def test_a_folder_without_results_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report([str(tmp_path)])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "holds no results" in error and error.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "eval_results.json holds list, not a results object"),
        ('{"task": "retrieval"}', "without the fields clip_lightning writes (KeyError: 'split')"),
    ],
)
def test_a_result_file_that_is_not_ours_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "eval_results.json").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        report([str(tmp_path)])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1
