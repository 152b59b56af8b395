"""``python -m clip_lightning.bench``, forwarded to :mod:`clip_lightning.cli.bench`."""

from clip_lightning.cli.bench import main

if __name__ == "__main__":
    main()
