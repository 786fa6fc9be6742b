"""The embedder's (query, code) dataset: pairs, decontamination, splits by package, card.

Splits are by package (never by pair) so that no library's idioms, helpers or vendored
copies are seen in training and then scored in dev/test. CoNaLa pairs go to train only:
they are the same Stack Overflow distribution as the CoNaLa benchmark, so they must not
be used to measure held-out performance.

Outputs in ``out_dir``: a Hugging Face ``DatasetDict`` with splits ``train``, ``dev`` and
``test`` (pair records, see :mod:`apex_models.data.code_pairs`; :mod:`apex_models.data.task_data`),
``report.json``, ``README.md`` (dataset card) and ``NOTICE`` (attribution for every source).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from pathlib import Path

from apex_models.data.code_pairs import make_pairs
from apex_models.data.conala import load_conala_pairs
from apex_models.data.decontam import Decontaminator, load_benchmark_texts
from apex_models.data.records import read_records
from apex_models.evaluation.retrieval import write_beir
from apex_models.data.task_data import save_splits
from apex_models.hashing import sha256_bytes

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
TRAIN_ONLY_UNITS = ("conala",)


def _stable_key(seed: int, *parts: str) -> str:
    return sha256_bytes("\0".join([str(seed), *parts]).encode("utf-8"))


def _cap_per_package(pairs: list[dict], cap: int, seed: int) -> tuple[list[dict], int]:
    """Keep at most `cap` pairs per package, chosen in a stable hash order, original order kept.

    CoNaLa is a corpus, not a package: it is not capped.
    """
    by_package: dict[str, list[int]] = defaultdict(list)
    keep: set[int] = set()
    for i, pair in enumerate(pairs):
        if pair["source"] == "conala":
            keep.add(i)
        else:
            by_package[pair["package"]].append(i)
    for package, idxs in by_package.items():
        ranked = sorted(idxs, key=lambda i: _stable_key(seed, package, pairs[i]["path"],
                                                         pairs[i]["qualname"], pairs[i]["sha256"]))
        keep.update(ranked[:cap])
    return [p for i, p in enumerate(pairs) if i in keep], len(pairs) - len(keep)


def split_packages(counts: dict[str, int], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Assign whole packages to train/dev/test so pair counts approach `fractions`.

    Greedy: each package goes to the split furthest below its target pair count. Packages
    larger than half the smallest target are placed first, largest first (one huge package
    placed late would wreck the fractions); the rest follow in a seeded hash order, so the
    seed decides which of the smaller packages are held out, stably across runs and
    machines. With three or more packages every split gets at least one: an empty split
    takes the smallest package of the split holding the most. Units in
    ``TRAIN_ONLY_UNITS`` always go to train and do not count towards the fractions.
    """
    total_frac = sum(float(fractions.get(s, 0.0)) for s in SPLITS) or 1.0
    units = sorted((p for p in counts if p not in TRAIN_ONLY_UNITS), key=lambda p: _stable_key(seed, p))
    total = sum(counts[p] for p in units)
    targets = {s: total * float(fractions.get(s, 0.0)) / total_frac for s in SPLITS}
    positive = [t for t in targets.values() if t > 0]
    big_at = min(positive) / 2 if positive else float("inf")
    big = sorted((p for p in units if counts[p] > big_at), key=lambda p: -counts[p])  # stable: hash order on ties
    order = big + [p for p in units if counts[p] <= big_at]
    current = dict.fromkeys(SPLITS, 0)
    assignment: dict[str, str] = {}
    for package in order:
        split = max(SPLITS, key=lambda s: (targets[s] - current[s], -SPLITS.index(s)))
        assignment[package] = split
        current[split] += counts[package]
    if len(units) >= 3:
        for split in SPLITS:
            if any(assignment[p] == split for p in units):
                continue
            donor = max(SPLITS, key=lambda s: (sum(1 for p in units if assignment[p] == s), -SPLITS.index(s)))
            donors = sorted((p for p in units if assignment[p] == donor), key=lambda p: (counts[p], _stable_key(seed, p)))
            if len(donors) > 1:
                assignment[donors[0]] = split
    for unit in TRAIN_ONLY_UNITS:
        if unit in counts:
            assignment[unit] = "train"
    return assignment


def _plain(cfg) -> dict:
    """A plain dict from a dict or an OmegaConf node, for the report."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    return json.loads(json.dumps(dict(cfg), default=str))


def build_embedder_dataset(files_jsonl: Path, shared_dir: Path, out_dir: Path, pairs_cfg: dict,
                           include_conala: bool, decontaminate_names: list[str], seed: int) -> dict:
    """Build and write the embedder dataset from ingested files; returns the report.

    Order of operations, each counted in the report: pairs are mined from every file
    (``extraction``: drop reasons, and identical code across packages as ``duplicate_code``),
    CoNaLa pairs are added (identical (query, code) pairs dropped), every pair is checked
    against the benchmarks (``decontamination``: removals by reason and source), each
    PyPI package is capped at ``max_pairs_per_package`` after decontamination (so the cap
    is filled with clean pairs; CoNaLa is not capped), then packages are split
    (:func:`split_packages`).

    `pairs_cfg` keys: ``min_code_lines``, ``max_code_chars``, ``min_query_words``,
    ``max_pairs_per_package``, ``keep_docstring_fraction``, ``split_fractions``, and
    optionally ``near_dup_threshold`` (code Jaccard, default 0.8).
    """
    cfg = _plain(pairs_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    extraction: Counter = Counter()
    pypi_pairs = make_pairs(read_records(Path(files_jsonl)), int(cfg["min_code_lines"]), int(cfg["max_code_chars"]),
                            int(cfg["min_query_words"]), float(cfg["keep_docstring_fraction"]), seed,
                            stats=extraction)
    conala_pairs: list[dict] = []
    conala_dupes = 0
    if include_conala:
        seen: set[str] = set()
        for pair in load_conala_pairs(Path(shared_dir)):
            if pair["sha256"] in seen:
                conala_dupes += 1
                continue
            seen.add(pair["sha256"])
            conala_pairs.append(pair)
    candidates = pypi_pairs + conala_pairs

    bench = load_benchmark_texts(Path(shared_dir), list(decontaminate_names))
    deco = Decontaminator(bench, threshold=float(cfg.get("near_dup_threshold", 0.8)))
    by_reason: Counter = Counter()
    by_source: Counter = Counter()
    clean: list[dict] = []
    for pair in candidates:
        reason = deco.is_contaminated(pair["query"], pair["code"])
        if reason:
            by_reason[reason] += 1
            by_source[pair["source"]] += 1
            continue
        clean.append(pair)

    capped, over_cap = _cap_per_package(clean, int(cfg["max_pairs_per_package"]), seed)
    counts = Counter(p["package"] for p in capped)
    assignment = split_packages(dict(counts), dict(cfg["split_fractions"]), seed)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for pair in capped:
        rows[assignment[pair["package"]]].append(pair)
    hashes = save_splits(out_dir, rows)

    per_package: dict[str, dict] = {}
    for pair in capped:
        info = per_package.setdefault(pair["package"], {
            "split": assignment[pair["package"]], "version": pair["version"], "license": pair["license"],
            "source": pair["source"], "pairs": 0})
        info["pairs"] += 1
    per_source: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        for pair in rows[split]:
            per_source.setdefault(pair["source"], dict.fromkeys(SPLITS, 0))[split] += 1
    report = {
        "seed": seed,
        "config": cfg,
        "include_conala": include_conala,
        "splits": {s: {"pairs": len(rows[s]),
                       "packages": sorted({p["package"] for p in rows[s]}),
                       "sha256": hashes[s]} for s in SPLITS},
        "per_source": dict(sorted(per_source.items())),
        "per_license": dict(sorted(Counter(str(p["license"]) for p in capped).items())),
        "per_package": dict(sorted(per_package.items())),
        "extraction": dict(sorted(extraction.items())),
        "dedup_removed": {"pypi_duplicate_code": extraction.get("duplicate_code", 0),
                          "conala_duplicate_pair": conala_dupes},
        "decontamination": {
            "benchmarks": list(decontaminate_names),
            "missing": bench.missing,
            "benchmark_codes": len(bench.codes),
            "benchmark_texts": len(bench.texts),
            "near_dup_threshold": deco.threshold,
            "removed": sum(by_reason.values()),
            "by_reason": dict(sorted(by_reason.items())),
            "by_source": dict(sorted(by_source.items())),
        },
        "over_cap_removed": over_cap,
        "totals": {
            "pypi_pairs": len(pypi_pairs),
            "conala_pairs": len(conala_pairs),
            "candidates": len(candidates),
            "after_decontamination": len(clean),
            "written": sum(len(r) for r in rows.values()),
        },
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(_dataset_card(report), encoding="utf-8")
    (out_dir / "NOTICE").write_text(_notice(report), encoding="utf-8")
    return report


def _dataset_card(report: dict) -> str:
    t, d = report["totals"], report["decontamination"]
    lines = [
        "# Embedder dataset: (query, code) pairs",
        "",
        "Queries are docstring summaries of documented functions in permissively licensed PyPI",
        "distributions" + (", plus Stack Overflow intents from CoNaLa (train only)" if report["include_conala"] else "")
        + ". A Hugging Face `DatasetDict` (`datasets.load_from_disk`); each row of `train`, `dev`,",
        "`test` is one pair with its package, version, path, qualified name, licence, source,",
        "attribution and sha256. The split hashes in report.json are over the rows as JSON.",
        "",
        "## Splits (by package: no package appears in two splits; CoNaLa is train only)",
        "",
        "| split | pairs | packages |",
        "| --- | ---: | --- |",
    ]
    for split, info in report["splits"].items():
        lines.append(f"| {split} | {info['pairs']} | {', '.join(info['packages'])} |")
    lines += ["", "## Sources", "", "| source | train | dev | test |", "| --- | ---: | ---: | ---: |"]
    for source, by_split in report["per_source"].items():
        lines.append(f"| {source} | {by_split['train']} | {by_split['dev']} | {by_split['test']} |")
    lines += ["", "## Licences", "", "| licence | pairs |", "| --- | ---: |"]
    lines += [f"| {lic} | {n} |" for lic, n in report["per_license"].items()]
    lines += [
        "", "## Decontamination", "",
        f"Checked against: {', '.join(d['benchmarks']) or 'none'}"
        + (f" (missing, not checked: {', '.join(d['missing'])})" if d["missing"] else "") + ".",
        f"{d['benchmark_codes']} benchmark code items and {d['benchmark_texts']} benchmark texts; exact match",
        "after normalisation (code without comments/docstrings, whitespace-insensitive; lower-cased text)",
        f"and near match (MinHash LSH over 5-token shingles, Jaccard >= {d['near_dup_threshold']}; query",
        "word-set Jaccard). Removed:", "",
        "| reason | pairs |", "| --- | ---: |",
    ]
    lines += [f"| {reason} | {n} |" for reason, n in d["by_reason"].items()] or ["| (none) | 0 |"]
    lines += [
        "", "## Counts", "",
        f"- pairs mined from PyPI: {t['pypi_pairs']}; CoNaLa pairs: {t['conala_pairs']}",
        f"- removed as duplicates: {report['dedup_removed']['pypi_duplicate_code']} identical functions,"
        f" {report['dedup_removed']['conala_duplicate_pair']} identical CoNaLa pairs",
        f"- removed by decontamination: {d['removed']}; over the per-package cap: {report['over_cap_removed']}",
        f"- written: {t['written']}",
        "", "Attribution for every source is in `NOTICE`; full figures in `report.json`.", "",
    ]
    return "\n".join(lines)


def _notice(report: dict) -> str:
    lines = ["This dataset contains material from the following sources, under their licences.", ""]
    for package, info in report["per_package"].items():
        if info["source"] == "pypi":
            lines.append(f"- {package} {info['version']}, {info['license']}, from PyPI "
                         f"(https://pypi.org/project/{package}/{info['version']}/)")
    if "conala" in report["per_package"]:
        lines += ["", "- CoNaLa training data (Carnegie Mellon University, Yin et al. 2018): intents and snippets",
                  "  from Stack Overflow questions, licensed CC BY-SA 4.0",
                  "  (https://creativecommons.org/licenses/by-sa/4.0/). Each pair's `path` field names its",
                  "  question as so-question:<id> -> https://stackoverflow.com/q/<id>."]
    return "\n".join(lines) + "\n"


def write_pairs_beir(pairs: list[dict], out_dir: Path) -> Path:
    """A BEIR folder from held-out pairs: corpus = their code (``d0``..), queries ``q0``.., qrels 1:1.

    Scores in-domain retrieval on the test split; written as ``qrels/test.tsv``.
    """
    corpus = {f"d{i}": p["code"] for i, p in enumerate(pairs)}
    queries = {f"q{i}": p["query"] for i, p in enumerate(pairs)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(pairs))}
    return write_beir(out_dir, corpus, queries, qrels, split="test")


def write_cosqa_beir(shared_dir: Path, split: str, out_dir: Path, n_queries: int | None,
                     corpus_limit: int | None, seed: int) -> Path | None:
    """CoSQA as a BEIR folder (qrels in ``qrels/<split>.tsv``; load with ``load_beir(out, split)``).

    The corpus is the 6,267 functions of ``code_idx_map.txt`` with ids ``str(retrieval idx)``;
    queries are the ``doc`` of ``cosqa-retrieval-<split>-500.json`` with their ``idx`` as id.
    `n_queries` draws a seeded subset (sampled from the rows sorted by idx); `corpus_limit`
    keeps every gold function of the chosen queries plus a seeded sample of the others
    (a smaller, easier corpus: only for quick checks). Missing files: a warning and None.
    """
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', not {split!r}")
    folder = Path(shared_dir) / "benchmarks" / "cosqa"
    corpus_path = folder / "code_idx_map.txt"
    rows_path = folder / f"cosqa-retrieval-{split}-500.json"
    if not corpus_path.is_file() or not rows_path.is_file():
        log.warning("CoSQA files not found under %s: no CoSQA %s benchmark written", folder, split)
        return None
    code_to_idx = json.loads(corpus_path.read_text(encoding="utf-8"))
    corpus_all = {str(idx): code for code, idx in code_to_idx.items()}
    rows = sorted(json.loads(rows_path.read_text(encoding="utf-8")), key=lambda r: str(r["idx"]))
    if n_queries is not None and n_queries < len(rows):
        rows = random.Random(seed).sample(rows, n_queries)
        rows.sort(key=lambda r: str(r["idx"]))
    queries = {str(r["idx"]): r["doc"] for r in rows}
    qrels = {str(r["idx"]): {str(r["retrieval_idx"]): 1} for r in rows}
    ids = sorted(corpus_all, key=int)
    if corpus_limit is not None and corpus_limit < len(ids):
        gold = {str(r["retrieval_idx"]) for r in rows}
        others = [i for i in ids if i not in gold]
        extra = random.Random(seed).sample(others, max(0, min(len(others), corpus_limit - len(gold))))
        keep = gold | set(extra)
        ids = [i for i in ids if i in keep]
    return write_beir(out_dir, {i: corpus_all[i] for i in ids}, queries, qrels, split=split)
