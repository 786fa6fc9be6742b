"""Measurement (not a test, not a stage): export the models that have no champion, through the export job's own gates.

The export job ships registry champions only, so a model whose candidate lost to its
baseline (today the default profile's ranker and planner) leaves no parity, size or
latency record. This script exports exactly that candidate, the registry version its last
promotion decision rejected (`eval/results/promotion-<name>.json`), with the same code and
the same gates as `dvc repro export` (`apex_models.export.heads.export_head`): a failed
fp32 gate fails this script as it would fail the stage. Each candidate then goes into a
bundle of its own beside the shipped embedder, `export/bundles/<name>-candidate`, which
`eval/bench_models.py` and `eval/bench_memory.py --ranker-bundle` time. Nothing here
touches `export/onnx/` or `export/bundles/default`, nor moves a registry alias.

Steps, per model:
1. find the rejected candidate (a model whose decision promoted it is skipped: it ships);
2. export it: ONNX fp32 and int8, `hf/` safetensors, parity gates, int8's held-out gate;
3. assemble and load-check its candidate bundle;
4. write the gate report to `eval/results/export-candidates.json` (and log it to MLflow).

    python eval/export_candidates.py                 # every export.heads model without a champion
    python eval/export_candidates.py --models planner
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval/export_candidates.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="composed params (default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="models of export.heads to export (default: every one without a champion)")
    parser.add_argument("--work", type=Path, default=Path("export/candidates"),
                        help="export folders, one per model (default: %(default)s; git-ignored)")
    parser.add_argument("--bundles", type=Path, default=Path("export/bundles"),
                        help="where <name>-candidate bundles go (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("eval/results/export-candidates.json"),
                        help="gate report (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from apex_models import __version__
    from apex_models.config import load_params
    from apex_models.evaluation.results import write_result
    from apex_models.export.bundle import assemble_bundle
    from apex_models.export.heads import export_head, rejected_candidate
    from apex_models.export.stages import embedder_entry, head_entry
    from apex_models.tracking import git_commit, stage_run

    params = load_params(args.params)
    heads = params.export.heads
    names = args.models or list(heads)
    unknown = sorted(set(names) - set(heads))
    if unknown:
        parser.error(f"not in export.heads: {', '.join(unknown)} (known: {', '.join(heads)})")
    candidates = {name: rejected_candidate(params, name) for name in names}
    todo = {name: c for name, c in candidates.items() if c is not None}
    for name in sorted(set(names) - set(todo)):
        print(f"{name}: skipped (no rejected candidate in eval/results/promotion-{name}.json: "
              "promoted, or never evaluated)", file=sys.stderr)
    if not todo:
        print("nothing to export", file=sys.stderr)
        return 1

    report, commit = {}, git_commit()
    with stage_run("export-candidates", params, ["export"]) as mlflow:
        for name, candidate in todo.items():
            out = args.work / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            start = time.perf_counter()
            gates = export_head(params, name, heads[name], out, mlflow, model=candidate)
            gates["seconds"] = round(time.perf_counter() - start, 1)
            bundle = args.bundles / f"{name}-candidate"
            assemble_bundle(bundle, {"embedder": embedder_entry(params), name: head_entry(params, name, out, gates)},
                            profile=params.profile, git_commit=commit,
                            bundle_version=f"{__version__}+{params.profile}.{commit[:12]}.{name}-candidate")
            gates["bundle"] = str(bundle)
            report[name] = gates
            print(f"{name}: registry version {candidate['version']} exported in {gates['seconds']} s, "
                  f"default {gates['default_precision']} ({gates['default_reason']}); bundle {bundle}")
        mlflow.log_dict(report, "export_candidates_report.json")
    write_result(args.out, "rejected candidates through the export gates (measurement only, never shipped)",
                 report, extra={"profile": params.profile})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
