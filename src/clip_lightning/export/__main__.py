"""``python -m clip_lightning.export``, forwarded to :mod:`clip_lightning.cli.export`."""

from clip_lightning.cli.export import main

if __name__ == "__main__":
    main()
