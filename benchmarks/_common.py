"""What the benchmark scripts share (importable as ``_common`` when a script runs from this folder)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """The repository's HEAD, short ("unknown" outside a git checkout or without git), for a result's record."""
    try:
        found = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return found.stdout.strip() or "unknown"
