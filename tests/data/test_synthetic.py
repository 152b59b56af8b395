"""The embedded synthetic dataset draws exactly what its captions say."""

from __future__ import annotations

import random

import numpy as np
import pytest

from clip_lightning.data.formats.synthetic import COUNTS, load_synthetic, random_scene, render


def count_blobs(mask: np.ndarray) -> int:
    """4-connected components of a boolean mask (a plain flood fill; images are tiny)."""
    seen = np.zeros_like(mask)
    blobs = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        blobs += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return blobs


@pytest.mark.parametrize("image_size", [32, 64])
def test_every_image_shows_its_count_in_its_quadrant(image_size):
    rng = random.Random(0)
    for _ in range(300):
        scene = random_scene(rng)
        pixels = np.asarray(render(scene, image_size)).astype(int)
        mask = np.abs(pixels - np.array([40, 40, 40])).sum(-1) > 0
        assert count_blobs(mask) == scene.count, scene
        ys, xs = np.nonzero(mask)
        half = image_size / 2
        assert (ys >= half).all() if "bottom" in scene.position else (ys < half).all(), scene
        assert (xs >= half).all() if "right" in scene.position else (xs < half).all(), scene


def test_captions_state_every_attribute_and_data_is_deterministic():
    records = load_synthetic(train=20, val=5, test=5, image_size=32, seed=3)
    assert [r.split for r in records].count("test") == 5
    for record in records:
        scene = record.image.scene
        assert len(set(record.captions)) == 5
        for caption in record.captions:
            for word in (scene.shape, scene.colour, scene.size, COUNTS[scene.count - 1]):
                assert word in caption
            assert scene.position in caption
    again = load_synthetic(train=20, val=5, test=5, image_size=32, seed=3)
    assert [r.captions for r in again] == [r.captions for r in records]
    assert np.array_equal(np.asarray(again[7].image.open()), np.asarray(records[7].image.open()))
