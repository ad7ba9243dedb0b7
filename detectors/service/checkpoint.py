"""Detector state on disk: written atomically (temp file, fsync, rename), read at start.

The file is JSON: a version, when it was saved, the dedup marks and every meter's pipeline
(buffered readings, detector snapshots, open events). A missing file means a fresh start;
an unreadable one is moved aside (``.bad``) and the service starts fresh, saying so.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

VERSION = 1
log = logging.getLogger(__name__)


def save(path: str | Path, state: dict[str, Any]) -> int:
    """Write ``state`` atomically; returns the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": VERSION, "saved_at": time.time(), **state},
                      separators=(",", ":"), allow_nan=False).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(body)


def load(path: str | Path) -> dict[str, Any] | None:
    """The saved state, or None (no file, or a file that cannot be used)."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        bad = path.with_name(path.name + ".bad")
        log.error("checkpoint %s unreadable (%s); moved to %s, starting fresh", path, exc, bad)
        os.replace(path, bad)
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        log.error("checkpoint %s has another version; starting fresh", path)
        return None
    return data
