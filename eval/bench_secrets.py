"""Benchmark (not a test): the secret detectors against CredSweeper's labelled samples.

``benchmarks/secrets/credsweeper`` holds sample files with fake credentials and
look-alikes, ``expected_ml.json`` (the findings CredSweeper's maintainers expect with its
ML filter on) and ``candidates_no_filters.json`` (every candidate its rules raise,
unfiltered). Scored with :mod:`apex_models.evaluation.secrets`: line- and value-level
precision/recall of the detectors' secret kinds (PII kinds are not in the expected set),
and of CredSweeper's unfiltered candidates as a rule-only reference. Labels are the
maintainers' expectations, not an independent annotation.

    python eval/bench_secrets.py

Writes eval/results/secrets-detectors.json. The sensitivity model's figures (detectors,
model and their union) come from the evaluate_sensitivity stage (eval/results/sensitivity.json).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    from apex_models.evaluation import secrets
    from apex_models.evaluation.results import write_result
    from apex_models.sensitivity.detectors import PII_KINDS, find_sensitive

    shared = Path(os.environ.get("APEX_SHARED", REPO.parent / "shared"))
    try:
        root = secrets.benchmark_root(shared)
    except FileNotFoundError as err:
        sys.exit(str(err))
    texts = secrets.sample_texts(root)
    expected = secrets.load_findings(root / "expected_ml.json")
    detected = secrets.predict_spans(
        texts, lambda t: [(f.start, f.end) for f in find_sensitive(t) if f.kind not in PII_KINDS], progress=True)
    candidates = secrets.load_findings(root / "candidates_no_filters.json")
    missed = secrets.misses(detected, expected)
    results = {
        "labels": secrets.LABELS_NOTE,
        "files": len(texts),
        "detectors": secrets.score(detected, expected, texts),
        "credsweeper_candidates_unfiltered": secrets.score(candidates, expected, texts),
        "missed_values_by_file_top": dict(list(missed.items())[:20]),
    }
    write_result(REPO / "eval" / "results" / "secrets-detectors.json", "secret detectors on CredSweeper samples",
                 results, command="python eval/bench_secrets.py")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
