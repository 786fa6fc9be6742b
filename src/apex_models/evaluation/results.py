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


# Instruction sets that decide int8 and fp32 inference speed on x86. A virtual machine's
# "model name" can be a bare "AMD EPYC": two runs of eval/bench_models.py under that one
# name measured ONNX int8 about threefold apart (2026-11-26 and -28; the later host has
# AVX-512 VNNI, the earlier one's flags were not recorded), so results name these too.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_identity(cpuinfo: str) -> dict[str, Any]:
    """Model name, family/model numbers and the `SPEED_FLAGS` present, from /proc/cpuinfo's text."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the first processor's block is enough
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name"),
            "cpu_id": f"family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else None,
            "cpu_speed_flags": [f for f in SPEED_FLAGS if f in flags]}


def machine() -> dict[str, Any]:
    cpu, ident = platform.processor() or platform.machine(), {}
    try:
        ident = cpu_identity(Path("/proc/cpuinfo").read_text())
        cpu = ident.pop("cpu") or cpu
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return {"cpu": cpu, **ident, "cores": os.cpu_count(), "memory_gib": mem_gib,
            "python": platform.python_version(), "platform": platform.platform()}


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
