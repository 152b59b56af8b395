"""Evaluation protocols: which images a retrieval figure is computed over, and how.

Published retrieval tables differ in the split, in 1K versus 5K test images and in counting
every caption of an image; a figure is only comparable under the same protocol.

* ``split``: the dataset's own ``val`` or ``test`` split, as configured.
* ``coco_5k`` / ``flickr30k_1k``: the Karpathy test split of COCO (5,000 images) or Flickr30k
  (1,000 images), every caption of every image.
* ``coco_1k``: the COCO Karpathy 5K test split cut into 5 folds of 1,000 consecutive images,
  each scored against its own captions; the figures are the means over folds (as in the VSE++,
  SCAN and UNITER tables), and each fold's own figures are kept as ``fold{n}/...``.

A Karpathy protocol refuses data without the Karpathy split (the official COCO 2017 layout,
the Kaggle Flickr30k CSV, data split by ``dataset.split_sizes``) instead of scoring another
split under its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.formats.karpathy import find_split_json
from clip_lightning.errors import ConfigError, DataError
from clip_lightning.metrics import RetrievalRecall
from clip_lightning.module import CLIPModule

# Hub datasets whose split column is Karpathy's (dataset.root=null loads them).
KARPATHY_HUB_IDS = {"flickr30k": "nlphuji/flickr30k", "coco": "yerevann/coco-karpathy"}
# Where each Karpathy split file goes, for the refusal.
SPLIT_FILE_PLACES = {
    "coco": "next to the COCO 2014 image folders train2014/ and val2014/",
    "flickr30k": "next to the Flickr30k images (or their flickr30k-images/ folder)",
}


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Args:
        name: what ``protocol=`` takes.
        karpathy: ``coco`` or ``flickr30k``: the protocol scores that dataset's Karpathy split
            (``None``: any dataset, its own split).
        test_images: how many images the Karpathy test split holds.
        fold_size: score folds of this many consecutive images and average them.
    """

    name: str
    karpathy: str | None = None
    test_images: int | None = None
    fold_size: int | None = None

    @property
    def split_file(self) -> str:
        """The Karpathy split file the protocol needs (``dataset_coco.json``, ...)."""
        return f"dataset_{self.karpathy}.json"

    def metric(self) -> RetrievalRecall:
        """The retrieval metric that computes this protocol's figures."""
        return RetrievalRecall(fold_size=self.fold_size)

    def describe(self, split: str, images: float, captions: float) -> str:
        """``protocol coco_1k, test split: 5000 images, 25010 captions`` for tables and titles."""
        return (
            f"protocol {self.name}, {split} split: {int(images)} images, {int(captions)} captions"
        )


PROTOCOLS = {
    protocol.name: protocol
    for protocol in (
        Protocol("split"),
        Protocol("coco_5k", karpathy="coco", test_images=5000),
        Protocol("coco_1k", karpathy="coco", test_images=5000, fold_size=1000),
        Protocol("flickr30k_1k", karpathy="flickr30k", test_images=1000),
    )
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; one line listing the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ConfigError(f"protocol={name!r} is unknown; use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def check_protocol(protocol: Protocol, datamodule: CaptionDataModule, split: str) -> None:
    """Refuse, in one line, data the protocol cannot score honestly.

    A Karpathy protocol needs the Karpathy split file (or the hub dataset that carries that
    split), and on the test split exactly the protocol's number of images: a split with images
    dropped (``dataset.on_bad_image=skip``) would give figures that only look comparable.
    """
    if protocol.karpathy is None:
        return
    datamodule.load_records()  # resolves dataset.format=auto
    if not _has_karpathy_split(datamodule, protocol.karpathy):
        raise DataError(
            f"protocol={protocol.name} scores the Karpathy split of {protocol.karpathy}, which "
            f"the {datamodule.format} data at {_where(datamodule)} does not have; put "
            f"{protocol.split_file} (Karpathy's split file) in dataset.root "
            f"{SPLIT_FILE_PLACES[protocol.karpathy]}, or use protocol=split"
        )
    found = len(datamodule.load_splits()[split])
    if split == "test" and found != protocol.test_images:
        raise DataError(
            f"protocol={protocol.name} scores the {protocol.test_images} images of the "
            f"{protocol.karpathy} Karpathy test split, but the test split of "
            f"{_where(datamodule)} has {found} (dataset.on_bad_image=skip drops unreadable "
            "ones); restore the missing images or use protocol=split"
        )


def _has_karpathy_split(datamodule: CaptionDataModule, dataset: str) -> bool:
    """Whether the records come from ``dataset``'s Karpathy split file or hub copy."""
    if datamodule.format == "karpathy" and datamodule.root is not None:
        annotation = datamodule.adapter_options.get("annotation")
        path = datamodule.root / annotation if annotation else find_split_json(datamodule.root)
        return path is not None and path.name == f"dataset_{dataset}.json"
    return (
        datamodule.format == "hf"
        and datamodule.root is None
        and datamodule.hub_id == KARPATHY_HUB_IDS[dataset]
    )


def _where(datamodule: CaptionDataModule) -> str:
    return str(datamodule.root) if datamodule.root is not None else str(datamodule.hub_id)


def use_protocol(
    model: CLIPModule, datamodule: CaptionDataModule, stage: str, name: str
) -> Protocol:
    """Check ``name`` against the data and make ``model`` score ``stage`` (val or test) by it."""
    protocol = get_protocol(name)
    check_protocol(protocol, datamodule, stage)
    setattr(model, f"{stage}_retrieval", protocol.metric())
    return protocol
