"""``python -m clip_lightning.search``, forwarded to :mod:`clip_lightning.cli.search`."""

from clip_lightning.cli.search import main

if __name__ == "__main__":
    main()
