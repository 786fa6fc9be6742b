"""The model-export job: the registry's `champion` -> a verified, optionally signed bundle.

    python export/job.py                                   # params.yaml as it is
    python export/job.py --out export/bundles/v0.2.0 --sign-key keys/bundle-signing.key

It runs exactly the code of the `export` and `bundle` DVC stages (ONNX fp32 + int8,
parity and accuracy gates that fail the job, model cards, manifest with checksums) on
whichever model version the MLflow registry's alias `champion` names, for the embedder
and for every model of `export.heads` (ranker, intent, planner) that has a champion. It
expects the pipeline's outputs up to `promote` to be present (`dvc repro promote`, or `dvc pull`
where a DVC remote holds them) and MLflow's store (local, or MLFLOW_TRACKING_URI).
Exit code 0 only when every gate passed and the written bundle loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from apex_models.config import load_params
from apex_models.export.stages import run_bundle, run_export
from apex_models.runtime import BundleError, load_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export/job.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, help="bundle folder (default: paths.bundle)")
    parser.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM); default: export.signing_key")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params = load_params(args.params)
    if args.out:
        params = params.model_copy(update={"paths": params.paths.model_copy(update={"bundle": str(args.out)})})
    if args.sign_key:
        params = params.model_copy(update={"export": params.export.model_copy(
            update={"signing_key": str(args.sign_key)})})
    # Libraries log to stdout (DeepSpeed does); keep stdout for the one JSON summary.
    with contextlib.redirect_stdout(sys.stderr):
        report = run_export(params)
        bundle = run_bundle(params)
        try:
            manifest = load_bundle(bundle).manifest
        except BundleError as exc:
            print(f"export job: the written bundle does not load: {exc}", file=sys.stderr)
            return 1
    print(json.dumps({"bundle": str(bundle), "bundle_version": manifest.bundle_version,
                      "champion": report["champion"], "default_precision": report["default_precision"],
                      "models": sorted(manifest.models), "heads": report["heads"],
                      "signed": (bundle / "manifest.sig").is_file()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
