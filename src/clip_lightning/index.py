"""``python -m clip_lightning.index``, forwarded to :mod:`clip_lightning.cli.index`."""

from clip_lightning.cli.index import main

if __name__ == "__main__":
    main()
