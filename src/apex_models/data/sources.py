"""Ingest the text corpora: read every enabled source, licence-filter, scrub, decontaminate, dedup, write.

One pass per source, streamed end to end (reader -> licence filter -> scrub ->
decontaminate -> dedup -> JSONL), so the size of a source never decides the memory of
the stage. The order is deliberate: scrubbing comes before anything is kept so that
nothing downstream, not even a log line or the report's examples, holds a secret;
decontamination comes before dedup so that a benchmark copy is reported as
contamination rather than as a duplicate. The per-record chain lives in
:mod:`apex_models.data.transforms`; ``engine: ray`` runs it on Ray Data
(:mod:`apex_models.data.ray_engine`) with the same result.

Outputs in ``out_dir``: ``<source>.jsonl`` per enabled source (records, see
:mod:`apex_models.data.records`), ``report.json``, ``NOTICE`` (every attribution line)
and ``README.md`` (the dataset card).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from apex_models.data.changelogs import debian_changelog_records
from apex_models.data.conala import load_conala_pairs
from apex_models.data.decontam import BENCHMARK_NAMES, BenchmarkTexts, Decontaminator, load_benchmark_texts
from apex_models.data.dedup import Deduplicator
from apex_models.data.docs import doc_records, fetch_debian_doc
from apex_models.data.records import Skips, make_record, write_records
from apex_models.data.repos import repo_records
from apex_models.data.sdist_docs import download_sdist, sdist_doc_records
from apex_models.data.stackexchange import qa_records, site_from_path
from apex_models.data.tldr import tldr_records
from apex_models.data.transforms import Transforms, keep_outcomes, local_outcomes, new_stats

log = logging.getLogger(__name__)

SOURCE_ORDER = ("stackexchange", "conala", "tldr", "docs", "repos")


def _cfg(cfg: Any) -> dict[str, Any]:
    """Accept the pydantic SourcesConfig or a plain dict (tests, notebooks)."""
    return cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg)


def stackexchange_inputs(folder: Path, skips: Skips | None = None) -> list[Path]:
    """Site dumps in a folder: ``*.xml`` files, ``*.7z`` archives, sub-folders holding Posts.xml.

    A link is followed when it resolves; a link loop or a dangling link, and a sub-folder
    without a readable Posts.xml, are skipped and counted in `skips` instead of raising.
    """
    skips = skips if skips is not None else Skips()
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.iterdir()):
        try:
            p.resolve(strict=True)
            if p.is_dir():
                (p / "Posts.xml").resolve(strict=True)
        except RuntimeError as exc:  # pathlib reports a symlink loop this way
            skips.add("symlink_loop", p.name, str(exc))
            continue
        except OSError as exc:
            reason = "symlink_loop" if "loop" in str(exc).lower() or getattr(exc, "errno", 0) == 40 else (
                "no_posts_xml" if p.is_dir() else "broken_link")
            skips.add(reason, p.name, str(exc))
            continue
        if (p.is_file() and p.suffix in (".xml", ".7z")) or (p.is_dir() and (p / "Posts.xml").is_file()):
            found.append(p)
        elif p.is_dir():
            skips.add("no_posts_xml", p.name)
    return found


def conala_records(shared_dir: Path) -> Iterator[dict[str, Any]]:
    """CoNaLa training pairs as records (the pairs themselves come from :mod:`conala`)."""
    for pair in load_conala_pairs(shared_dir):
        qid = pair["path"].split(":", 1)[-1]
        yield make_record(f"{pair['query']}\n{pair['code']}", kind="pair", source="conala",
                          license=pair["license"], attribution=pair["attribution"],
                          url=f"https://stackoverflow.com/q/{qid}", path=pair["path"], language="python",
                          query=pair["query"], code=pair["code"])


def _readers(cfg: dict, shared: Path | None, raw_dir: Path, skips: dict[str, Skips]
             ) -> dict[str, Callable[[], Iterator[dict]]]:
    """Enabled source name -> a function that starts its record stream."""
    readers: dict[str, Callable[[], Iterator[dict]]] = {}
    if cfg["stackexchange"]["enabled"]:
        def se() -> Iterator[dict]:
            inputs = stackexchange_inputs(shared / "corpora" / "stackexchange", skips["stackexchange"]) if shared else []
            if not inputs:
                skips["stackexchange"].add("no_input", "corpora/stackexchange")
            for path in inputs:
                yield from qa_records(path, site_from_path(path), cfg["stackexchange"]["min_score"],
                                      skips=skips["stackexchange"])
        readers["stackexchange"] = se
    if cfg["conala"]["enabled"]:
        def co() -> Iterator[dict]:
            if shared is None or not (shared / "corpora" / "conala" / "conala-train.json").is_file():
                skips["conala"].add("no_input", "corpora/conala/conala-train.json")
                return
            yield from conala_records(shared)
        readers["conala"] = co
    if cfg["tldr"]["enabled"]:
        def tl() -> Iterator[dict]:
            if shared is None:
                skips["tldr"].add("no_input", "corpora/tldr")
                return
            yield from tldr_records(shared / "corpora" / "tldr" / "tldr-pages-en.tar.gz",
                                    cfg["tldr"]["platforms"], skips=skips["tldr"])
        readers["tldr"] = tl
    if cfg["docs"]["enabled"]:
        def do() -> Iterator[dict]:
            docs = cfg["docs"]
            for package in docs["debian_packages"]:
                license = docs["package_licenses"].get(package)
                if not license:
                    skips["docs"].add("unknown_license", package, "add it to data.sources.docs.package_licenses")
                    continue
                root = fetch_debian_doc(package, raw_dir / package)
                if root is None:
                    skips["docs"].add("fetch_failed", package, "apt-get download or dpkg-deb failed; see the log")
                    continue
                yield from doc_records(root / "usr" / "share" / "doc", package, license,
                                       f"{package} (Debian package), {license}", docs["max_file_bytes"],
                                       docs["min_section_chars"], skips=skips["docs"])
                # The package's changelog.Debian.gz: (version, changes) records beside the docs.
                yield from debian_changelog_records(root, license, f"{package} Debian changelog, {license}",
                                                    skips=skips["docs"])
            for spec in docs.get("sdist_packages") or []:
                archive = download_sdist(spec, raw_dir.parent / "sdist")
                if archive is None:
                    skips["docs"].add("fetch_failed", spec, "pip download --no-binary failed; see the log")
                    continue
                yield from sdist_doc_records(archive, docs["max_file_bytes"], docs["min_section_chars"],
                                             skips=skips["docs"])
        readers["docs"] = do
    if cfg.get("repos", {}).get("enabled"):
        def rp() -> Iterator[dict]:
            repos = cfg["repos"]
            if not repos["repos"]:
                skips["repos"].add("no_input", "data.sources.repos.repos is empty")
            for spec in repos["repos"]:
                yield from repo_records(spec, raw_dir.parent / "repos", repos["extensions"],
                                        repos["max_files_per_repo"], repos["max_file_bytes"], skips["repos"])
        readers["repos"] = rp
    return readers


def _with_notice(records: Iterable[dict], notice_fh) -> Iterator[dict]:
    """Pass records through, writing each new attribution line to the NOTICE file."""
    last_attribution = None
    for record in records:
        if record["attribution"] != last_attribution:
            notice_fh.write(record["attribution"] + "\n")
            last_attribution = record["attribution"]
        yield record


def ingest_sources(cfg: Any, shared_dir: Path | None, out_dir: Path, raw_dir: Path | None = None,
                   benchmarks: Iterable[str] = BENCHMARK_NAMES) -> dict[str, Any]:
    """Run every enabled source into ``out_dir``; returns (and writes) the report.

    `shared_dir` may be None or absent: each source then reports ``no_input`` and writes
    an empty file, a warning rather than an error. `raw_dir` keeps downloads (Debian
    packages) across runs; default ``out_dir/../raw/debian``. Report: per source
    ``written``, ``read``, ``licenses``, ``scrub`` (counts by kind), ``decontaminated``
    (by reason), ``dedup`` (counts and rates), ``skipped`` (reasons, examples); plus
    ``totals`` and the benchmarks decontaminated against (``benchmarks_missing``).
    """
    import time

    from tqdm.auto import tqdm

    started = time.perf_counter()
    cfg = _cfg(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_dir = Path(raw_dir) if raw_dir is not None else out_dir.parent / "raw" / "debian"
    shared = Path(shared_dir) if shared_dir is not None and Path(shared_dir).is_dir() else None
    if shared is None:
        log.warning("shared folder %s not found: its corpora are skipped and nothing is decontaminated",
                    shared_dir)
    names = list(benchmarks)
    bench = load_benchmark_texts(shared, names) if shared else BenchmarkTexts(missing=names)
    deco = Decontaminator(bench)
    dedup = Deduplicator(cfg["dedup"]["threshold"], cfg["dedup"]["num_perm"]) if cfg["dedup"]["enabled"] else None
    transforms = Transforms(deco, scrub=cfg["scrub"]["enabled"], license_allowlist=cfg.get("license_allowlist"),
                            dedup_num_perm=cfg["dedup"]["num_perm"] if dedup is not None else None)
    engine = cfg.get("engine", "local")
    if engine == "ray":
        from apex_models.data.ray_engine import start_ray

        ray_cfg = cfg.get("ray") or {}
        start_ray(ray_cfg.get("address"), ray_cfg.get("num_cpus"))
    skips = {name: Skips() for name in SOURCE_ORDER}
    readers = _readers(cfg, shared, raw_dir, skips)
    cap = cfg.get("max_records_per_source")
    setup_seconds = time.perf_counter() - started  # benchmark texts and their LSH index

    per_source: dict[str, Any] = {}
    notice_tmp = out_dir / "NOTICE.tmp"
    with open(notice_tmp, "w", encoding="utf-8") as notice:
        notice.write("This dataset is derived from the following works; each record names its own "
                     "source and licence.\n")
        for name in SOURCE_ORDER:
            if name not in readers:
                per_source[name] = {"enabled": False}
                continue
            notice.write(f"\n== {name} ==\n")
            stats = new_stats()
            source_started = time.perf_counter()
            stream = readers[name]()
            if cap:
                stream = itertools.islice(stream, cap)
            stream = tqdm(stream, desc=f"ingest {name} ({engine})", unit="rec", mininterval=5)
            if engine == "ray":
                from apex_models.data.ray_engine import ray_outcomes

                outcomes = ray_outcomes(stream, transforms, ray_cfg.get("window", 20000), ray_cfg.get("batch_size", 256))
            else:
                outcomes = local_outcomes(stream, transforms)
            kept = _with_notice(keep_outcomes(outcomes, dedup, stats), notice)
            written = write_records(kept, out_dir / f"{name}.jsonl")
            per_source[name] = {
                "enabled": True, "written": written, "read": stats["read"],
                "licenses": dict(sorted(stats["licenses"].items())),
                "license_excluded": dict(sorted(stats["license_excluded"].items())),
                "scrub": dict(sorted(stats["scrub"].items())),
                "decontaminated": dict(sorted(stats["decontaminated"].items())),
                "dedup": stats["_dedup"].as_dict() if dedup is not None else None,
                "skipped": skips[name].as_dict(),
                "seconds": round(time.perf_counter() - source_started, 2),
            }
            log.info("%s: %d records written of %d read", name, written, stats["read"])
    os.replace(notice_tmp, out_dir / "NOTICE")

    enabled = {k: v for k, v in per_source.items() if v.get("enabled")}
    scrub_total: Counter = Counter()
    skipped_total: Counter = Counter()
    for info in enabled.values():
        scrub_total.update(info["scrub"])
        skipped_total.update(info["skipped"]["counts"])
    report = {
        "sources": per_source,
        "benchmarks": names,
        "benchmarks_missing": list(bench.missing),
        "shared_found": shared is not None,
        "setup_seconds": round(setup_seconds, 2),
        "engine": engine,
        "config": cfg,
        "totals": {
            "written": sum(i["written"] for i in enabled.values()),
            "read": sum(i["read"] for i in enabled.values()),
            "decontaminated": sum(sum(i["decontaminated"].values()) for i in enabled.values()),
            "license_excluded": sum(sum(i["license_excluded"].values()) for i in enabled.values()),
            "duplicates": sum((i["dedup"] or {}).get("exact_duplicates", 0) + (i["dedup"] or {}).get("near_duplicates", 0)
                              for i in enabled.values()),
            "scrub": dict(sorted(scrub_total.items())),
            "skipped": dict(sorted(skipped_total.items())),
        },
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(dataset_card(report), encoding="utf-8")
    return report


_DESCRIPTIONS = {
    "stackexchange": "Stack Exchange questions joined with their accepted and best other answer "
                     "(data dump Posts.xml; per-row CC BY-SA licence)",
    "conala": "CoNaLa curated training pairs: Stack Overflow question intents -> Python snippets (CC BY-SA)",
    "tldr": "tldr-pages examples: task description -> shell command, placeholders kept (CC BY 4.0)",
    "docs": "Documentation sections with their heading path, and changelogs as (version, changes) records: "
            "Debian *-doc packages (with changelog.Debian.gz) and the README, docs/ and CHANGES files of "
            "pinned sdists",
    "repos": "Source files of local folders, git repositories (cloned --depth 1) or Hugging Face datasets, "
             ".gitignore honoured, licence from the repository's LICENSE file",
}


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items()) or "-"


def dataset_card(report: dict) -> str:
    """The README.md of the ingested text corpora: what, how much, licences, processing.

    Every figure comes from the stage's report, so the card cannot drift from the data.
    There are no splits here: the task datasets built from these records split them by
    source unit (package, site, page) and say so in their own cards.
    """
    enabled = {k: v for k, v in report["sources"].items() if v.get("enabled")}
    lines = ["# Text corpora (ingest_sources)", "",
             "Normalised records (`text`, `kind`, `source`, `url`, `path`, `license`, `attribution`, "
             "`sha256`, `language`, plus per-source fields), one JSONL file per source. "
             f"Engine: {report.get('engine', 'local')}. Unsplit: the task datasets built from these "
             "records split them by source unit.", "",
             "| source | records | read | licence excluded | decontaminated | exact dup. | near dup. | skipped inputs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, info in report["sources"].items():
        if not info.get("enabled"):
            lines.append(f"| {name} | disabled | | | | | | |")
            continue
        dd = info["dedup"] or {}
        lines.append(f"| {name} | {info['written']} | {info['read']} | {sum(info.get('license_excluded', {}).values())} | "
                     f"{sum(info['decontaminated'].values())} | {dd.get('exact_duplicates', 0)} "
                     f"({dd.get('exact_rate', 0):.2%}) | {dd.get('near_duplicates', 0)} ({dd.get('near_rate', 0):.2%}) | "
                     f"{sum(info['skipped']['counts'].values())} |")
    t = report["totals"]
    lines.append(f"| **total** | {t['written']} | {t['read']} | {t.get('license_excluded', 0)} | {t['decontaminated']} | "
                 f"{t['duplicates']} (exact + near) | | {sum(t['skipped'].values())} |")
    lines += ["", "## Sources", ""]
    lines += [f"- **{name}**: {_DESCRIPTIONS[name]}" for name in enabled]
    lines += ["", "## Licences (records written)", "", "| source | licence | records |", "| --- | --- | ---: |"]
    lines += [f"| {name} | {lic} | {n} |" for name, info in enabled.items() for lic, n in info["licenses"].items()]
    excluded = {(name, lic): n for name, info in enabled.items() for lic, n in info.get("license_excluded", {}).items()}
    if excluded:
        lines += ["", "Excluded by the licence allowlist: "
                  + "; ".join(f"{name}: {lic} ({n})" for (name, lic), n in excluded.items()) + "."]
    lines += ["", "## Scrubbing, decontamination, skipped inputs per source", "",
              "| source | scrubbed (by kind) | decontaminated (by reason) | skipped (by reason) |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {_counts(info['scrub'])} | {_counts(info['decontaminated'])} | "
              f"{_counts(info['skipped']['counts'])} |" for name, info in enabled.items()]
    scrub = report["totals"]["scrub"]
    allow = report["config"].get("license_allowlist")
    lines += ["", "## Processing", "",
              ("1. **Licence filter**: a record whose SPDX expression is not allowed by "
               "`data.sources.license_allowlist` (" + ", ".join(allow) + ") is dropped; unknown means dropped."
               if allow else "1. **Licence filter**: none configured; each reader's licence is kept."),
              "2. **Scrubbing**: secrets and personal data replaced by typed placeholders "
              "(`<SECRET:kind>`, `<PII:kind>`) before anything is written: "
              + (", ".join(f"{k} {v}" for k, v in scrub.items()) or "none found") + ".",
              "3. **Decontamination** against the held-out benchmarks ("
              + ", ".join(report["benchmarks"]) + "): exact and near matches of queries/titles and of code "
              "(including code blocks inside answers) are removed."
              + (f" Missing benchmarks (not checked): {', '.join(report['benchmarks_missing'])}."
                 if report["benchmarks_missing"] else ""),
              "4. **Deduplication**: exact (normalised-text sha256) then near (MinHash LSH, Jaccard >= "
              f"{report['config']['dedup']['threshold']} over word 5-shingles), across sources, first occurrence kept.",
              "",
              "Skipped inputs (malformed, truncated, binary, oversized, links) are counted with reasons "
              "and examples in `report.json`. Attribution for every record is in `NOTICE` and in the record itself.",
              ""]
    return "\n".join(lines)
