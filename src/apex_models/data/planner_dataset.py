"""The planner's dataset: goal (+ optional context) -> an ordered list of steps, from licensed text.

Two sources, both already read by the ingest_sources stage (so licence filtering,
scrubbing, decontamination and dedup of their records have happened); this module only
re-reads the two original files for the one thing the normalised records lose:

- **Stack Exchange** (CC BY-SA): an answer whose HTML holds an ordered list (``<ol>``)
  of at least `min_steps` items is a plan; the question title is the goal, the tags are
  the context, each ``<li>`` cleaned to one line is a step. The ingested records turn
  every list into dashes, so the order-bearing ``<ol>`` is read from the Posts.xml; only
  questions whose record survived ingest_sources are kept. These are real procedures
  ("How can I withdraw ADA from a pool?" -> withdraw, wait two epochs, deregister), but
  the shipped dump holds few of them.
- **tldr-pages** (CC BY 4.0): one page -> goal "Use tool (platform): <description>",
  steps = the page's example descriptions in page order. The order is the page's
  (common use first, rarer options later), not a dependency order, so this is a weaker,
  "what to do with this tool" plan signal, but it has thousands of units.

Splits are by unit (a Stack Exchange question; a tldr page *name* across platforms, so
`tar` on linux and on osx fall in the same split) by a hash, so nothing leaks and a
unit keeps its split when the corpus grows. Every goal and step is checked against the
benchmarks again (data/decontam.py) and scrubbed again (data/scrub.py), because the
``<ol>`` text and the tldr descriptions are re-read from the original files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

STEP_SEPARATOR = " ; "      # between steps in the model's target text (uncased WordPiece drops newlines)
SPLITS = ("train", "dev", "test")
_MNEMONIC = re.compile(r"\[(\w+)\]")          # tldr's "[n]ame" option mnemonics
_TLDR_PAGE = re.compile(r"^pages(?:\.[\w-]+)?/([\w.-]+)/([^/]+)\.md$")


# ---------------------------------------------------------------------------- cleaning

def clean_step(text: str, max_chars: int = 120) -> str:
    """One line: whitespace collapsed, tldr mnemonics and the separator removed, trailing
    punctuation trimmed, cut at a word boundary under `max_chars`."""
    text = _MNEMONIC.sub(r"\1", text)
    text = " ".join(text.replace(";", ",").split()).strip(" .:,")
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0].rstrip(" .:,")
    return text


def steps_to_target(steps: list[str]) -> str:
    """The model's target text: steps in order, joined by :data:`STEP_SEPARATOR`."""
    return STEP_SEPARATOR.join(steps)


def parse_steps(text: str) -> list[str]:
    """Generated text -> ordered, non-empty, de-duplicated steps (the inverse of steps_to_target)."""
    out: list[str] = []
    for part in text.split(";"):
        step = " ".join(part.split()).strip(" .,")
        if step and step not in out:
            out.append(step)
    return out


def model_input(goal: str, context: str | None, similar: str | None = None) -> str:
    """The encoder's input: the goal, then the optional similar known plan
    (:func:`similar_plan_text`) that the model edits into this goal's plan, then the optional
    context. The context comes last so that truncation to the source length cuts it first."""
    text = f"{goal} | similar: {similar}" if similar else goal
    return f"{text} | context: {context}" if context else text


def similar_plan_text(goal: str, steps: list[str]) -> str:
    """A known plan as the planner reads it beside a new goal: its goal, then its steps."""
    return f"{goal} : {steps_to_target(steps)}"


def nearest_plans(known_queries: list[str], known_units: list[str], queries: list[str],
                  units: list[str | None], depth: int = 10) -> list[int | None]:
    """Per query, the index of the BM25-nearest known plan of another unit (None: no match).

    This one lookup is both the planner's retrieval step (its input carries the plan found
    here) and the evaluation's retrieval baseline (that plan's steps as the answer), so the
    model is scored against exactly the plan it was shown. Excluding the query's own unit
    keeps training inputs like test inputs: a test goal never finds itself (or the same
    tldr page on another platform) among the training plans.
    """
    from apex_models.evaluation.retrieval import BeirDataset, bm25_run

    ds = BeirDataset({f"d{i}": t for i, t in enumerate(known_queries)},
                     {f"q{i}": t for i, t in enumerate(queries)}, {})
    run = bm25_run(ds, k=depth)
    out: list[int | None] = []
    for i, unit in enumerate(units):
        hits = [int(d[1:]) for d in run.get(f"q{i}", [])]
        out.append(next((h for h in hits if unit is None or known_units[h] != unit), None))
    return out


# ---------------------------------------------------------------------- Stack Exchange

def ordered_list_steps(html: str, min_steps: int, max_steps: int) -> list[str] | None:
    """Steps of the first top-level ``<ol>`` with at least `min_steps` non-empty items.

    Code inside an item stays (inline, backticked) since a step is often a command; a
    nested list is flattened into its item's line.
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for ol in soup.find_all("ol"):
        if ol.find_parent("ol") is not None:
            continue
        for code in ol.find_all("code"):
            code.replace_with(f"`{code.get_text()}`")
        steps = [clean_step(li.get_text(" ", strip=True)) for li in ol.find_all("li", recursive=False)]
        steps = [s for s in steps if len(s.split()) >= 2]
        if len(steps) >= min_steps:
            return steps[:max_steps]
    return None


def stackexchange_plans(posts_files: Iterable[Path], ingested: Path, min_steps: int,
                        max_steps: int) -> Iterator[dict[str, Any]]:
    """Plans from answers (accepted first, then top) of questions kept by ingest_sources."""
    from apex_models.data.stackexchange import iter_posts, site_from_path

    questions: dict[tuple[str, str], dict] = {}
    answer_of: dict[tuple[str, str], tuple[str, str]] = {}
    with open(ingested, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            key = (rec["site"], str(rec["question_id"]))
            questions[key] = rec
            for field in ("accepted_answer_id", "top_answer_id"):
                if rec.get(field):
                    answer_of[(rec["site"], str(rec[field]))] = key
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in posts_files:
        site = site_from_path(path)
        for row in iter_posts(path):
            qkey = answer_of.get((site, row.get("Id", "")))
            if row.get("PostTypeId") != "2" or qkey is None:
                continue
            steps = ordered_list_steps(row.get("Body", ""), min_steps, max_steps)
            if not steps:
                continue
            rec = questions[qkey]
            accepted = str(rec.get("accepted_answer_id")) == row["Id"]
            if qkey in found and not accepted:
                continue    # one plan per question; the accepted answer's wins
            found[qkey] = {
                "goal": " ".join(rec["title"].split()), "context": ", ".join(rec.get("tags") or []) or None,
                "steps": steps, "source": "stackexchange", "unit": f"se:{site}:{qkey[1]}",
                "license": rec["license"], "url": rec["url"],
                "attribution": f"{rec['attribution']}; answer {row['Id']}",
            }
    yield from (found[k] for k in sorted(found))


# ------------------------------------------------------------------------------- tldr

def tldr_descriptions(tar_path: Path) -> dict[tuple[str, str], str]:
    """(platform, page) -> the page's first ``>`` description line, read from the tar stream."""
    out: dict[tuple[str, str], str] = {}
    with tarfile.open(tar_path, "r|gz") as tf:
        for member in tf:
            match = _TLDR_PAGE.match(member.name)
            if not match or not member.isfile():
                continue
            fh = tf.extractfile(member)
            text = fh.read().decode("utf-8", errors="replace") if fh is not None else ""
            for line in text.splitlines():
                if line.startswith(">"):
                    desc = line.lstrip("> ").strip()
                    if not desc.lower().startswith("more information"):
                        out[(match.group(1), match.group(2))] = desc
                        break
    return out


def tldr_goal(page: str, platform: str, description: str) -> str:
    """'Use tar (common): archiving utility': the page's description as the task to plan."""
    return f"Use {page} ({platform}): {clean_step(description)}"


def tldr_plans(ingested: Path, tar_path: Path, min_steps: int, max_steps: int) -> Iterator[dict[str, Any]]:
    """One plan per ingested tldr page (examples kept by ingest_sources, in page order)."""
    descriptions = tldr_descriptions(tar_path) if tar_path.is_file() else {}
    pages: dict[tuple[str, str], list[dict]] = defaultdict(list)
    with open(ingested, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            pages[(rec["platform"], rec["page"])].append(rec)
    for (platform, page), recs in sorted(pages.items()):
        steps: list[str] = []
        for rec in recs:
            step = clean_step(rec["query"])
            if step and step not in steps:
                steps.append(step)
        if len(steps) < min_steps or (platform, page) not in descriptions:
            continue
        yield {"goal": tldr_goal(page, platform, descriptions[(platform, page)]), "context": None,
               "steps": steps[:max_steps], "source": "tldr", "unit": f"tldr:{page}",
               "license": recs[0]["license"], "url": recs[0]["url"], "attribution": recs[0]["attribution"]}


# ---------------------------------------------------------------------- split & build

def split_of(unit: str, fractions: dict[str, float]) -> str:
    """The split of a unit: a stable function of its name alone (sha256 bucket)."""
    bucket = int(hashlib.sha256(unit.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name in ("test", "dev"):
        edge += fractions.get(name, 0.0)
        if bucket < edge:
            return name
    return "train"


def clean_plans(plans: Iterable[dict[str, Any]], decon, counts: Counter) -> Iterator[dict[str, Any]]:
    """Scrub goal and steps, drop benchmark overlaps (a contaminated goal drops the plan,
    a contaminated step drops the step) and count why."""
    from apex_models.data.scrub import scrub_text

    for plan in plans:
        goal, found = scrub_text(plan["goal"])
        counts.update({f"scrubbed:{k}": v for k, v in found.items()})
        if decon is not None and decon.is_contaminated(goal, "") is not None:
            counts["decontaminated:goal"] += 1
            continue
        steps = []
        for step in plan["steps"]:
            step, found = scrub_text(step)
            counts.update({f"scrubbed:{k}": v for k, v in found.items()})
            if decon is not None and decon.is_contaminated(step, "") is not None:
                counts["decontaminated:step"] += 1
                continue
            steps.append(step)
        if len(steps) < 2:
            counts["too_few_steps_after_cleaning"] += 1
            continue
        yield {**plan, "goal": goal, "steps": steps}


def build_planner_dataset(sources_dir: Path, shared_dir: Path, out_dir: Path, cfg, benchmarks: list[str]) -> dict:
    """Read both sources, clean, split by unit, save a DatasetDict and its card; return the report."""
    from datasets import Dataset, DatasetDict

    from apex_models.data.decontam import Decontaminator, load_benchmark_texts

    corpora = Path(shared_dir) / "corpora"
    raw: list[dict[str, Any]] = []
    if cfg.stackexchange and (sources_dir / "stackexchange.jsonl").is_file():
        posts = sorted((corpora / "stackexchange").glob("*Posts.xml"))
        raw += stackexchange_plans(posts, sources_dir / "stackexchange.jsonl", cfg.min_steps, cfg.max_steps)
    if cfg.tldr and (sources_dir / "tldr.jsonl").is_file():
        raw += tldr_plans(sources_dir / "tldr.jsonl", corpora / "tldr" / "tldr-pages-en.tar.gz",
                          cfg.min_steps, cfg.max_steps)
    if not raw:
        raise FileNotFoundError(f"no planner sources under {sources_dir}: run the ingest_sources stage first")
    bench = load_benchmark_texts(Path(shared_dir), benchmarks)
    counts: Counter = Counter()
    plans = list(clean_plans(raw, Decontaminator(bench), counts))
    if cfg.max_plans_per_source:
        by_source: dict[str, list] = defaultdict(list)
        for p in plans:
            by_source[p["source"]].append(p)
        # A sample keyed by another hash than split_of's: the same key would keep only the
        # lowest buckets, which are all test.
        plans = [p for rows in by_source.values()
                 for p in sorted(rows, key=lambda r: hashlib.sha256(f"sample:{r['unit']}".encode()).hexdigest())
                 [:cfg.max_plans_per_source]]
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for p in sorted(plans, key=lambda r: (r["source"], r["unit"], r["goal"])):
        split = split_of(p["unit"], cfg.split_fractions)
        query = model_input(p["goal"], p["context"])
        rows[split].append({"id": f"{p['unit']}#{len(rows[split])}", **p, "query": query, "similar_id": None,
                            "input": query, "target": steps_to_target(p["steps"])})
    for split in SPLITS:
        if not rows[split]:
            raise ValueError(f"planner split {split!r} is empty: too few plans ({len(plans)}) for the fractions")
    if cfg.retrieve:
        attach_similar(rows)
    ds = DatasetDict({s: Dataset.from_list(rows[s]) for s in SPLITS})
    out_dir.mkdir(parents=True, exist_ok=True)
    ds.save_to_disk(str(out_dir))
    report = {
        "read": dict(Counter(p["source"] for p in raw)),
        "kept": {s: dict(Counter(r["source"] for r in rows[s])) for s in SPLITS},
        "units": {s: len({r["unit"] for r in rows[s]}) for s in SPLITS},
        "cleaning": dict(counts), "benchmarks": benchmarks, "benchmarks_missing": bench.missing,
        "mean_steps": round(sum(len(p["steps"]) for p in plans) / len(plans), 2),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "README.md").write_text(dataset_card(report))
    return report


def attach_similar(rows: dict[str, list[dict]]) -> None:
    """Every row's `input` gains the nearest training plan of another unit (:func:`nearest_plans`),
    and `similar_id` names it; rows with no match keep their plain query."""
    known, every = rows["train"], [r for split in SPLITS for r in rows[split]]
    found = nearest_plans([r["query"] for r in known], [r["unit"] for r in known],   # one index for all splits
                          [r["query"] for r in every], [r["unit"] for r in every])
    for row, hit in zip(every, found):
        if hit is not None:
            row["similar_id"] = known[hit]["id"]
            row["input"] = model_input(row["goal"], row["context"],
                                       similar_plan_text(known[hit]["goal"], known[hit]["steps"]))


def dataset_card(report: dict) -> str:
    """The dataset card: counts per source and split, licences, how it was cut and cleaned."""
    lines = ["# Planner dataset: goal (+ context) -> ordered steps", "",
             "Hugging Face `DatasetDict` (`datasets.load_from_disk`), splits train/dev/test by unit "
             "(Stack Exchange question; tldr page name across platforms), so no goal's plan leaks "
             "between splits.", "",
             "| source | licence | read | train | dev | test |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    licences = {"stackexchange": "CC BY-SA 4.0 (per post; attribution in each row)",
                "tldr": "CC BY 4.0 (tldr-pages; attribution in each row)"}
    for source in sorted(report["read"]):
        lines.append(f"| {source} | {licences.get(source, '?')} | {report['read'][source]} | "
                     + " | ".join(str(report["kept"][s].get(source, 0)) for s in SPLITS) + " |")
    lines += ["", f"Mean steps per plan: {report['mean_steps']}.", "",
              "## Fields", "",
              "`goal`, `context` (Stack Exchange tags or null), `steps` (ordered), `query` (goal plus "
              "context), `similar_id` (the BM25-nearest training plan of another unit, or null), `input` "
              "(what the encoder reads: the query, then that similar plan's goal and steps when "
              "`planner.data.retrieve` is on), `target` (steps joined by ` ; `), `source`, `unit`, "
              "`license`, `url`, `attribution`.", "",
              "## Processing", "",
              "- Stack Exchange: the first top-level `<ol>` of the accepted (else top) answer with enough "
              "items; question title = goal. Only questions kept by ingest_sources.",
              "- tldr: a page's description as the goal, its example descriptions in page order as steps "
              "(a usage plan, not a dependency order).",
              f"- Scrubbed and decontaminated again against {', '.join(report['benchmarks'])}: "
              f"{json.dumps(report['cleaning'])}.", ""]
    return "\n".join(lines)


def load_planner_dataset(path: Path):
    """The saved DatasetDict (in memory), with a clear error when the stage has not run."""
    from apex_models.data.task_data import load_dataset_dict

    return load_dataset_dict(path, "planner_dataset")


def run_planner_dataset(params) -> dict:
    """The planner_dataset stage: data/sources (ingest_sources) -> data/datasets/planner."""
    if params.planner is None:
        raise ValueError("params has no `planner` section: re-run pipelines/compose.py")
    data = Path(params.paths.data)
    return build_planner_dataset(data / "sources", Path(params.paths.shared), data / "datasets" / "planner",
                                 params.planner.data, list(params.planner.data.benchmarks))
