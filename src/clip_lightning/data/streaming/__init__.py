"""Train from WebDataset shards (img2dataset's layout) with the ``webdataset`` library.

Each sample of a shard is ``{key}.jpg`` (or png/webp) + ``{key}.txt`` (+ ``{key}.json``). The
caption comes from ``txt`` or from a field of the ``json`` (a list there gives one random caption
per epoch, like ``train_pairs=random``). Shard lists follow open_clip: brace expansion
(``/data/cc3m/{00000..00331}.tar``), several sources joined with ``::`` each with its own weight,
and any URL webdataset opens (local paths, ``pipe:``, http, s3 through ``pipe:aws s3 cp ...``).

Validation and test use a map-style folder (``eval_root``: any format ``CaptionDataModule``
detects) or eval shards (``val_urls`` / ``test_urls``).

One module a job: :mod:`.shard_lists` (URLs, shard checks, sample counts), :mod:`.decode` (a
raw sample to image and captions), :mod:`.bad_samples` (``on_bad_image``), :mod:`.stream` (the
training and eval streams; epochs and resuming are described there), :mod:`.loader` (the
resumable DataLoader) and :mod:`.web_datamodule` (``dataset=webdataset``).
"""

from clip_lightning.data.streaming.bad_samples import BadSampleError
from clip_lightning.data.streaming.decode import (
    IMAGE_EXTENSIONS,
    ShardImage,
    decode_sample,
    sample_captions,
    sample_image,
    stable_id,
)
from clip_lightning.data.streaming.loader import StreamLoader, StreamPosition
from clip_lightning.data.streaming.shard_lists import (
    SIZES_FILE,
    check_local_shards,
    count_samples,
    expand_sources,
)
from clip_lightning.data.streaming.stream import EvalShardStream, ShardStream, worker_share
from clip_lightning.data.streaming.web_datamodule import WebDataModule

__all__ = [
    "IMAGE_EXTENSIONS",
    "SIZES_FILE",
    "BadSampleError",
    "EvalShardStream",
    "ShardImage",
    "ShardStream",
    "StreamLoader",
    "StreamPosition",
    "WebDataModule",
    "check_local_shards",
    "count_samples",
    "decode_sample",
    "expand_sources",
    "sample_captions",
    "sample_image",
    "stable_id",
    "worker_share",
]
