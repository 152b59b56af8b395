"""``python -m clip_lightning.eval``, forwarded to :mod:`clip_lightning.cli.eval`."""

from clip_lightning.cli.eval import main

if __name__ == "__main__":
    main()
