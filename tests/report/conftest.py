"""Fixtures for the report tests: a headless Chromium binary (Debian's package, installed where missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

_CANDIDATES = ("chromium", "chromium-browser")
_APT_TIMEOUT_S = 900


def _find_chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file() and os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _install_chromium() -> str:
    """Install Debian's chromium package; returns '' on success, else one line saying why not."""
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        return "apt-get not available"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root, so apt-get cannot install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    commands = ([apt_get, "update"],
                [apt_get, "install", "-y", "--no-install-recommends", "chromium"])
    start = time.monotonic()
    for command in commands:
        print(f"[chromium fixture] running: {' '.join(command)}", flush=True)
        try:
            done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"'{' '.join(command)}' timed out after {_APT_TIMEOUT_S} s"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"'{' '.join(command)}' failed (exit {done.returncode}): {tail[0]}"
    print(f"[chromium fixture] chromium installed in {time.monotonic() - start:.1f} s", flush=True)
    return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary, installing Debian's ``chromium`` package (as root) where missing."""
    found = _find_chromium()
    if found is None:
        print("[chromium fixture] no chromium found: installing Debian's chromium package", flush=True)
        why = _install_chromium()
        found = _find_chromium()
        if found is None:
            pytest.skip(f"headless Chromium unavailable: {why or 'installed, but no chromium binary on PATH'}")
    return found
