"""The data-pipeline benchmark runs end to end on a handful of images and reports figures."""

from __future__ import annotations

import math

from clip_lightning.benchmarks.data_pipeline import make_jpegs, run


def test_make_jpegs_writes_flickr_sized_photos(tmp_path):
    records = make_jpegs(tmp_path, 2)
    assert [r.image.path.stat().st_size > 10_000 for r in records] == [True, True]


def test_run_measures_raw_cached_and_shard_loading(tmp_path, capsys):
    result = run(
        num_images=16,
        image_size=32,
        cache_image_size=40,
        batch_size=4,
        workers=(0,),
        folder=tmp_path,
        samples_per_shard=6,
    )
    rates = result["images_per_second"]
    assert set(rates) == {"raw", "cache", "shards"} and set(rates["raw"]) == {"0"}
    assert all(math.isfinite(v) and v > 0 for side in rates.values() for v in side.values())
    assert result["cache_speedup"]["0"] == rates["cache"]["0"] / rates["raw"]["0"]
    assert result["shards_vs_jpeg"]["0"] == rates["shards"]["0"] / rates["raw"]["0"]
    assert result["num_shards"] == 3
    out = capsys.readouterr().out
    assert "cache img/s" in out and "shards img/s" in out
    assert list(tmp_path.iterdir()) == []  # the temporary images and shards are removed
