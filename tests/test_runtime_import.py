"""The runtime, the CLI and the sensitivity classifier must import without the training
stack (runtime-only installs; the hybrid runtime calls the classifier)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def test_runtime_and_cli_import_no_training_stack() -> None:
    code = (
        "import sys, apex_models.runtime, apex_models.cli, apex_models.sensitivity.classifier\n"
        "import apex_models.runtime.static_embedder\n"
        "heavy = ('torch', 'transformers', 'peft', 'deepspeed',\n"
        "         'apex_models.models', 'apex_models.training', 'apex_models.export')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported by the runtime: {out.stdout.strip()}"


def test_public_api() -> None:
    import apex_models.runtime as rt

    for name in ("load_bundle", "Bundle", "BundleError", "Manifest", "ModelSpec", "OnnxEmbedder",
                 "MemoryStore", "Hit", "Memory"):
        assert hasattr(rt, name), name
