"""Saying exactly what is wrong with a path the user passed: missing, a folder where a file is
expected, or a symbolic link that leads nowhere -- each has its own fix."""

from __future__ import annotations

import errno
import os
from pathlib import Path

MISSING = "does not exist"


def path_problem(path: Path) -> str:
    """Why ``path`` does not open: :data:`MISSING`, ``"is a symbolic link loop ..."``, ...

    For a path that is neither an existing file nor an existing folder.
    """
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return (
                "is a symbolic link loop (following its links comes back to where it started, "
                "never to a file or folder); point the link at the real location"
            )
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if exc.errno == errno.ENOENT:
            return MISSING
        return f"cannot be opened ({exc.strerror})"
    return "is neither a file nor a folder"
