"""An embedded, procedurally generated caption dataset: no download, fully deterministic.

Each image shows one to three separate objects of one shape, colour and size in one quadrant
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


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, int, int],
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


# Object centres within the quadrant, as fractions of its side: far enough apart that even large
# objects never touch, so every image shows exactly the count its captions state.
_LAYOUTS = {
    1: ((0.5, 0.5),),
    2: ((0.28, 0.3), (0.72, 0.7)),
    3: ((0.25, 0.25), (0.75, 0.25), (0.5, 0.76)),
}
_RADIUS = {"small": 0.045, "large": 0.075}  # of the image side


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` on a square canvas: ``count`` separate objects in its quadrant.

    The layout for the count is mirrored and jittered by the scene's seed, so no two images
    look alike while objects never overlap or leave their quadrant.
    """
    rng = random.Random(scene.seed)
    image = Image.new("RGB", (image_size, image_size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    half = image_size / 2
    radius = image_size * _RADIUS[scene.size]
    jitter = image_size * 0.012
    x0 = half if "right" in scene.position else 0.0
    y0 = half if "bottom" in scene.position else 0.0
    flip_x, flip_y = rng.random() < 0.5, rng.random() < 0.5
    for fx, fy in _LAYOUTS[scene.count]:
        fx, fy = (1 - fx if flip_x else fx), (1 - fy if flip_y else fy)
        cx = x0 + fx * half + rng.uniform(-jitter, jitter)
        cy = y0 + fy * half + rng.uniform(-jitter, jitter)
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
