"""``python -m clip_lightning.report RUN_DIR...``, forwarded to :mod:`clip_lightning.cli.report`."""

from clip_lightning.cli.report import main

if __name__ == "__main__":
    main()
