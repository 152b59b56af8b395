"""WiSE-FT: θ(α) = (1 − α)·θ_pretrained + α·θ_finetuned. The endpoints reproduce the plain
checkpoint eval (α = 1) and the pretrained baseline eval (α = 0) exactly, retrieval and
zero-shot; export writes θ(α); a start without pretrained weights is refused."""

from __future__ import annotations

import csv
import json

import open_clip
import pytest
import torch

from clip_lightning.cli.eval import evaluate
from clip_lightning.cli.export import export
from clip_lightning.cli.loading import load_model
from clip_lightning.errors import ConfigError
from clip_lightning.wise_ft import WeightSpaceEnsemble, interpolate
from tests.helpers import compose_eval, compose_export
from tests.helpers.data import COLOURS, make_folder
from tests.helpers.pretrained import finetuned_checkpoint, open_clip_cfg

DATA = [
    "dataset=synthetic",
    "dataset.adapter_options.train=8",
    "dataset.adapter_options.val=4",
    "dataset.adapter_options.test=12",
    "dataset.adapter_options.image_size=32",
    "dataset.eval_batch_size=6",
    "trainer.accelerator=cpu",
    "zeroshot.templates=['a photo of a {}.']",
    "zeroshot.batch_size=8",
]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """The tiny open_clip pair fine-tuned for 2 steps, its "pretrained" weights file and an
    image folder for zero-shot classification."""
    root = tmp_path_factory.mktemp("wise_ft")
    cfg = open_clip_cfg(
        root, extra=["optimizer.lr=1e-2", "model.tower_lr={image_encoder:1e-2,text_encoder:1e-2}"]
    )
    checkpoint = finetuned_checkpoint(cfg, root)
    images = make_folder(root / "colours", dict(list(COLOURS.items())[:4]), per_class=2)
    return checkpoint, cfg.model.pretrained, images


def run_eval(tmp_path, name: str, *overrides: str) -> dict:
    return evaluate(compose_eval([*DATA, *overrides], tmp_path / name))


def test_endpoints_reproduce_the_checkpoint_and_pretrained_evals(finetuned, tmp_path):
    checkpoint, weights, images = finetuned
    wise = run_eval(
        tmp_path,
        "wise",
        f"ckpt_path={checkpoint}",
        "wise_ft.alphas=[0,0.5,1]",
        f"images={images}",
    )
    plain = run_eval(tmp_path, "plain", f"ckpt_path={checkpoint}")
    plain_zeroshot = run_eval(
        tmp_path, "plain_zs", f"ckpt_path={checkpoint}", "task=zeroshot", f"images={images}"
    )
    baseline_overrides = [
        "model=open_clip",
        "model.arch=tiny-clip-test",
        f"model.pretrained={weights}",
    ]
    baseline = run_eval(tmp_path, "base", *baseline_overrides)
    baseline_zeroshot = run_eval(
        tmp_path, "base_zs", *baseline_overrides, "task=zeroshot", f"images={images}"
    )

    first, middle, last = wise["rows"]
    assert [row["alpha"] for row in wise["rows"]] == [0.0, 0.5, 1.0]
    for row, retrieval, zeroshot in (
        (last, plain, plain_zeroshot),
        (first, baseline, baseline_zeroshot),
    ):
        assert {k: row[k] for k in retrieval["metrics"]} == retrieval["metrics"]
        assert (row["zeroshot/top1"], row["zeroshot/top5"]) == (zeroshot["top1"], zeroshot["top5"])
    # fine-tuning moved the weights: the endpoints and the middle are three different models
    figures = [tuple(v for k, v in row.items() if k.startswith("test/")) for row in wise["rows"]]
    assert len(set(figures)) == 3
    folder = tmp_path / "wise"
    assert json.loads((folder / "wise_ft.json").read_text()) == wise
    with (folder / "wise_ft.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [float(r["alpha"]) for r in table] == [0.0, 0.5, 1.0]
    assert {(r["protocol"], r["test/images"], r["test/captions"]) for r in table} == {
        ("split", "12.0", "60.0")
    }
    assert float(table[1]["test/rsum"]) == pytest.approx(middle["test/rsum"])
    assert (folder / "wise_ft.png").stat().st_size > 1000


def test_export_writes_the_interpolated_weights(finetuned, tmp_path):
    checkpoint, _, _ = finetuned
    cfg = compose_export(
        [f"ckpt_path={checkpoint}", "wise_ft.alpha=0.5", f"out={tmp_path / 'out'}"], tmp_path
    )
    result = export(cfg)
    assert result["max_embedding_difference"] < 1e-4
    ensemble = WeightSpaceEnsemble(load_model(checkpoint))
    expected = ensemble.at(0.5).image_encoder.model.conv1.weight
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'out'}")
    torch.testing.assert_close(loaded.visual.conv1.weight, expected)
    assert "WiSE-FT weights: (1 - 0.5) x pretrained" in (tmp_path / "out" / "README.md").read_text()


def test_interpolation_is_exact_at_the_endpoints_and_linear_between():
    base = {"w": torch.randn(5, 3), "steps": torch.tensor(3)}
    tuned = {"w": torch.randn(5, 3), "steps": torch.tensor(7)}
    assert torch.equal(interpolate(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(interpolate(base, tuned, 1.0)["w"], tuned["w"])
    torch.testing.assert_close(
        interpolate(base, tuned, 0.25)["w"], 0.75 * base["w"] + 0.25 * tuned["w"]
    )
    assert interpolate(base, tuned, 0.25)["steps"] == 7  # integer buffers are not averaged


def test_a_base_checkpoint_replaces_the_pretrained_start(finetuned):
    checkpoint, _, _ = finetuned
    ensemble = WeightSpaceEnsemble(load_model(checkpoint), base=checkpoint)
    middle = ensemble.at(0.3).state_dict()
    for key, value in load_model(checkpoint).state_dict().items():
        torch.testing.assert_close(middle[key], value)


def test_towers_and_heads_without_a_pretrained_start_are_refused(finetuned):
    checkpoint, _, _ = finetuned
    model = load_model(checkpoint)
    model.pretrained_start["image_encoder"]["pretrained"] = None
    with pytest.raises(ConfigError, match=r"image tower .* was trained from random init") as error:
        WeightSpaceEnsemble(model)
    assert "\n" not in str(error.value)
