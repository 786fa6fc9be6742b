"""Benchmark (not a test): the secret/PII detectors against CredSweeper's labelled samples.

``benchmarks/secrets/credsweeper`` holds sample files with fake credentials and
look-alikes, and ``expected_ml.json``: the findings CredSweeper's maintainers expect
(file, line, rule). Scored per line: recall = expected lines where a detector finds
something; "unexpected" = lines with a finding that the file does not list (an upper
bound on false positives: the expected set is CredSweeper's, not ground truth for
every kind, e.g. e-mails and IPs are PII here and not listed there).

    python eval/bench_secrets.py

Writes eval/results/secrets-detectors.json.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    from apex_models.sensitivity.detectors import PII_KINDS, find_sensitive
    from apex_models.evaluation.results import write_result

    shared = Path(os.environ.get("APEX_SHARED", REPO.parent / "shared"))
    root = shared / "benchmarks" / "secrets" / "credsweeper"
    if not (root / "expected_ml.json").is_file():
        sys.exit(f"{root} not found: set APEX_SHARED")
    expected: dict[str, set[int]] = defaultdict(set)
    rules_by_line: dict[tuple[str, int], str] = {}
    for item in json.loads((root / "expected_ml.json").read_text()):
        for line in item["line_data_list"]:
            name = Path(line["path"]).name
            expected[name].add(line["line_num"])
            rules_by_line[(name, line["line_num"])] = item["rule"]
    found_lines: dict[str, set[int]] = defaultdict(set)
    kinds: Counter = Counter()
    unexpected_kinds: Counter = Counter()
    files = 0
    for path in sorted((root / "samples").iterdir()):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        files += 1
        starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                starts.append(i + 1)
        for f in find_sensitive(text):
            first = sum(1 for s in starts if s <= f.start)
            last = sum(1 for s in starts if s < f.end)
            kinds[f.kind] += 1
            for line_num in range(first, last + 1):
                found_lines[path.name].add(line_num)
            if not any(n in expected[path.name] for n in range(first, last + 1)):
                unexpected_kinds[f.kind] += 1
    total = sum(len(v) for v in expected.values())
    hit = sum(len(v & found_lines[name]) for name, v in expected.items())
    missed_rules = Counter(rules_by_line[(name, n)] for name, v in expected.items() for n in v - found_lines[name])
    secret_unexpected = sum(c for k, c in unexpected_kinds.items() if k not in PII_KINDS)
    results = {
        "files": files, "expected_lines": total, "expected_lines_found": hit,
        "line_recall": round(hit / max(total, 1), 4),
        "findings_by_kind": dict(sorted(kinds.items())),
        "unexpected_findings_by_kind": dict(sorted(unexpected_kinds.items())),
        "unexpected_secret_findings": secret_unexpected,
        "missed_by_rule_top": dict(missed_rules.most_common(12)),
    }
    cmd = "python eval/bench_secrets.py"
    write_result(REPO / "eval" / "results" / "secrets-detectors.json", "secret/PII detectors on CredSweeper samples",
                 results, command=cmd)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
