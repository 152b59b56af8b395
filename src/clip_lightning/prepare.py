"""``python -m clip_lightning.prepare``, forwarded to :mod:`clip_lightning.cli.prepare`."""

from clip_lightning.cli.prepare import main

if __name__ == "__main__":
    main()
