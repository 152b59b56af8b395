"""Collections for the embed -> index -> search tests: WebDataset shards of uneven sizes, and a
callback that holds a run still so a test can kill it at a known point."""

from __future__ import annotations

import io
import time
from pathlib import Path

import lightning as L
import webdataset as wds

from tests.helpers.data import picture

# samples per shard: uneven, and 15 in all, which 2 ranks x 2 workers do not divide
SHARD_SIZES = (3, 1, 4, 2, 5)
# the shard and position of the one sample whose image bytes do not decode
BAD_SAMPLE = (2, 1)


def caption(index: int) -> str:
    return f"a picture numbered {index}"


def write_shards(folder: Path) -> tuple[str, dict[str, int]]:
    """Shards ``00000.tar`` ... in img2dataset's layout (``{key}.jpg`` + ``{key}.txt``), the
    image of sample ``key`` being :func:`picture` ``(int(key))``; one extra sample (named by
    :data:`BAD_SAMPLE`) holds bytes that are not an image. Returns the brace URL and the good
    keys with their picture number."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, index = {}, 0
    for shard, count in enumerate(SHARD_SIZES):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as writer:
            for position in range(count + (1 if shard == BAD_SAMPLE[0] else 0)):
                if (shard, position) == BAD_SAMPLE:
                    writer.write({"__key__": "broken", "jpg": b"not a jpeg", "txt": "broken"})
                    continue
                buffer = io.BytesIO()
                picture(index).save(buffer, "JPEG", quality=95)
                key = f"{index:06d}"
                writer.write({"__key__": key, "jpg": buffer.getvalue(), "txt": caption(index)})
                keys[key] = index
                index += 1
    return f"{folder}/{{00000..{len(SHARD_SIZES) - 1:05d}}}.tar", keys


class PauseAfterParts(L.Callback):
    """On rank 0, once ``count`` parts are finished in ``out``, writes ``flag`` and sleeps, so
    the test can kill the run there."""

    def __init__(self, out: str, flag: str, count: int = 1) -> None:
        self.parts, self.flag, self.count = Path(out) / "parts", Path(flag), count

    def on_predict_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_rank == 0 and len(list(self.parts.glob("*.json"))) >= self.count:
            self.flag.write_text("paused")
            time.sleep(600)
