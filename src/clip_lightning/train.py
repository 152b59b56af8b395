"""``python -m clip_lightning.train``, forwarded to :mod:`clip_lightning.cli.train`."""

from clip_lightning.cli.train import main

if __name__ == "__main__":
    main()
