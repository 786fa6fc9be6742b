"""Committed result files: each names the command, git commit and machine behind it.

eval/results/ holds the latest figures as JSON, one file per model or benchmark, so a
reader (or a check) compares them with the goals without re-running anything.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "python": platform.python_version(),
            "platform": platform.platform()}


def write_result(path: str | Path, name: str, results: dict[str, Any], command: str | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write one results file atomically (a crash never leaves half a JSON)."""
    from apex_models.tracking import git_commit

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "git_commit": git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **(extra or {}),
        "results": results,
    }
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out
