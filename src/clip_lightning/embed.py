"""``python -m clip_lightning.embed``, forwarded to :mod:`clip_lightning.cli.embed`."""

from clip_lightning.cli.embed import main

if __name__ == "__main__":
    main()
