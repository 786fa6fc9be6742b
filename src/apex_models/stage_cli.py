"""The shared command line of every pipelines/ entry point: read params, run, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from apex_models.config import load_params


def run_stage(name: str, description: str, stage: Callable[[Any], Any], argv: list[str] | None = None) -> None:
    """Parse `--params`, configure logging, run the stage, print its summary as JSON.

    Offline by default: hub look-ups are switched off unless the caller set them.
    """
    parser = argparse.ArgumentParser(prog=f"pipelines/{name}.py", description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="resolved config written by pipelines/compose.py (default: params.yaml)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    started = time.perf_counter()
    result = stage(params)
    summary = {"stage": name, "profile": params.profile, "seconds": round(time.perf_counter() - started, 1)}
    if isinstance(result, dict):
        summary["result"] = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    elif result is not None:
        summary["result"] = str(result)
    sys.stderr.write(json.dumps(summary, default=str) + "\n")
