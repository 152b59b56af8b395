"""Images beyond 8-bit RGB reach the model as the picture they show: 16-bit, 32-bit integer and
float images are scaled to 8 bits, transparent ones composited onto white; an image without an
8-bit reading fails the start-up check in one line. Every loading path converts the same way."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_lightning.data.checks import check_images
from clip_lightning.data.records import FileImage, load_rgb, to_rgb
from clip_lightning.data.streaming import ShardImage
from clip_lightning.models.image_encoder import ImageEncoder

# a 30 x 40 gradient over the whole 16-bit range, and what it is in 8 bits
GRADIENT_16 = (np.arange(30 * 40).reshape(30, 40) * 65535 // (30 * 40 - 1)).astype(np.uint16)
GRADIENT_8 = np.round(GRADIENT_16 / 257).astype(np.uint8)


def gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


CASES = {
    # 16-bit PNG: PIL's own convert("RGB") turns 99 % of these pixels white
    "16-bit PNG": (lambda p: save(Image.fromarray(GRADIENT_16), p / "a.png"), gray(GRADIENT_8)),
    "32-bit integer TIFF, 16-bit values": (
        lambda p: save(Image.fromarray(GRADIENT_16.astype(np.int32)), p / "a.tiff"),
        gray(GRADIENT_8),
    ),
    "32-bit integer TIFF, 8-bit values": (
        lambda p: save(Image.fromarray(GRADIENT_8.astype(np.int32)), p / "a.tiff"),
        gray(GRADIENT_8),
    ),
    "float TIFF in 0..1": (
        lambda p: save(Image.fromarray((GRADIENT_16 / 65535).astype(np.float32)), p / "a.tiff"),
        gray(GRADIENT_8),
    ),
    # grey 100 at half opacity over white: 100 * 128/255 + 255 * 127/255 = 177.2
    "grey + alpha PNG": (
        lambda p: save(
            Image.merge("LA", [Image.new("L", (4, 3), 100), Image.new("L", (4, 3), 128)]),
            p / "a.png",
        ),
        np.full((3, 4, 3), 177, np.uint8),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_file_loads_as_the_8_bit_picture_it_shows(tmp_path, case):
    write, expected = CASES[case]
    path = write(tmp_path)
    assert check_images([FileImage(path)]) == [None]  # the start-up check passes it
    pixels = np.asarray(load_rgb(FileImage(path)))  # what datasets, zero-shot, search read
    np.testing.assert_allclose(pixels, expected, atol=1)


def test_a_shard_sample_and_a_pil_image_convert_like_a_file():
    buffer = io.BytesIO()
    Image.fromarray(GRADIENT_16).save(buffer, format="PNG")
    shard = ShardImage(buffer.getvalue(), "shard-00000.tar", "000001")
    np.testing.assert_allclose(np.asarray(load_rgb(shard)), gray(GRADIENT_8), atol=1)
    # a palette image with an alpha band (PA), handed to the library directly
    palette = Image.new("P", (4, 3), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert np.asarray(to_rgb(palette.convert("PA"))).tolist() == [[[200, 100, 50]] * 4] * 3


def test_the_model_preprocesses_a_16_bit_image_like_its_8_bit_equivalent():
    encoder = ImageEncoder("resnet18", pretrained=False, image_size=32)
    sixteen = encoder.preprocess([Image.fromarray(GRADIENT_16)])
    eight = encoder.preprocess([Image.fromarray(gray(GRADIENT_8))])
    assert torch.equal(sixteen, eight)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (np.full((3, 4), -2.5, np.float32), "a float image with values from -2.5 to -2.5"),
        (np.full((3, 4), 70000, np.int32), "a 32-bit integer image with values from 70000 to"),
    ],
)
def test_an_image_without_an_8_bit_reading_fails_the_check_naming_it(tmp_path, values, reason):
    path = save(Image.fromarray(values), tmp_path / "depth.tiff")
    (problem,) = check_images([FileImage(path)])
    assert problem is not None and problem.startswith(reason)
    assert problem.endswith("which has no 8-bit reading")
