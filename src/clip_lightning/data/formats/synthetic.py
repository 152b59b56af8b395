"""An embedded, procedurally generated caption dataset: no download, fully deterministic.

Each image shows one to three objects of one shape, colour and size, clustered in one quadrant
of the canvas; each image has several differently worded captions that all state every
attribute, so retrieval is only solved by learning colour, shape, size, count *and* position.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from clip_lightning.data.records import CaptionRecord, make_record

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 190),
    "white": (245, 245, 245),
}
SIZES = ("small", "large")
COUNTS = ("one", "two", "three")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
_BACKGROUND = (40, 40, 40)

_TEMPLATES = (
    "{count} {size} {colour} {shapes} in the {position} corner",
    "a picture of {count} {colour} {shapes} at the {position}, all of them {size}",
    "{position}: {count} {size} {colour} {shapes}",
    "there {are} {count} {colour} {shapes} in the {position} of the image, {size} ones",
    "{size} {shapes} coloured {colour}, {count} of them, {position}",
)


@dataclass(frozen=True)
class Scene:
    """The attributes of one image, plus the seed that places its objects."""

    shape: str
    colour: str
    size: str
    count: int
    position: str
    seed: int

    def captions(self) -> list[str]:
        words = {
            "count": COUNTS[self.count - 1],
            "size": self.size,
            "colour": self.colour,
            "shapes": self.shape if self.count == 1 else f"{self.shape}s",
            "position": self.position,
            "are": "is" if self.count == 1 else "are",
        }
        return [template.format(**words) for template in _TEMPLATES]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill):
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` on a square canvas; object centres are non-overlapping within a quadrant."""
    rng = random.Random(scene.seed)
    image = Image.new("RGB", (image_size, image_size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    half = image_size / 2
    radius = image_size * (0.06 if scene.size == "small" else 0.11)
    x0 = half if "right" in scene.position else 0.0
    y0 = half if "bottom" in scene.position else 0.0
    centres: list[tuple[float, float]] = []
    for _ in range(200):
        if len(centres) == scene.count:
            break
        cx = x0 + rng.uniform(radius + 1, half - radius - 1)
        cy = y0 + rng.uniform(radius + 1, half - radius - 1)
        if all((cx - x) ** 2 + (cy - y) ** 2 > (2.1 * radius) ** 2 for x, y in centres):
            centres.append((cx, cy))
    for cx, cy in centres:
        _draw_shape(draw, scene.shape, cx, cy, radius, COLOURS[scene.colour])
    return image


@dataclass(frozen=True)
class SyntheticImage:
    """An :class:`~clip_lightning.data.records.ImageSource` that renders its scene on demand."""

    scene: Scene
    image_size: int
    name: str

    @property
    def key(self) -> str:
        return self.name

    def open(self) -> Image.Image:
        return render(self.scene, self.image_size)


def random_scene(rng: random.Random) -> Scene:
    return Scene(
        shape=rng.choice(SHAPES),
        colour=rng.choice(list(COLOURS)),
        size=rng.choice(SIZES),
        count=rng.randint(1, len(COUNTS)),
        position=rng.choice(POSITIONS),
        seed=rng.getrandbits(32),
    )


def load_synthetic(
    train: int = 4000, val: int = 500, test: int = 500, image_size: int = 64, seed: int = 0
) -> list[CaptionRecord]:
    """Generate ``train + val + test`` records; the same arguments always give the same data."""
    rng = random.Random(seed)
    records = []
    for split, size in (("train", train), ("val", val), ("test", test)):
        for index in range(size):
            scene = random_scene(rng)
            name = f"synthetic-{split}-{index:05d}"
            source = SyntheticImage(scene, image_size, name)
            records.append(make_record(name, source, scene.captions(), split))
    return records
