"""The ranker's task dataset: (query, document) pairs with hard negatives, mined once.

The ranker re-ranks what the embedder retrieves, so its negatives are the other pairs'
documents that BM25 and the *current* embedder rank high for a query. Mining is a stage
of its own (``ranker_dataset``) rather than a step inside training: the negatives depend
on the trained embedder, DVC sees that dependency, and the examples can be inspected
(``datasets.load_from_disk("data/datasets/ranker")``) before a 30-minute training run.

Rows of the ``train`` split: ``query``, ``document`` and ``negatives``, the row indices of
the pairs whose documents are this query's mined negatives, best first. The recipe draws
its per-step negatives from that list (``apex_models.training.ranker.negatives_for``).
The first ``report["anchors"]`` rows are the pairs; rows after them are documents only:
another answer to a Stack Exchange question (``stackexchange_qa`` pairs), which the
question's ``siblings`` names and the recipe puts among its negatives at every step. The
Q&A benchmark asks for the accepted answer among every answer of a site, and half of
the embedder's misses there rank one of the question's other answers first, a confusion
no mined negative shows.
With ``ranker.first_stage_scale`` set, rows also hold the embedder's ``query_vector`` and
``document_vector``: the ranker is trained as a correction to the first stage's score
(see ``apex_models.training.ranker``), and needs that score for every pair it sees.

Pairs come from the ranker's own mix of the embedder's sources
(:func:`apex_models.data.embedder_mix.training_pairs`, ``ranker.data``). Without the
embedder dataset (a run outside DVC), CoNaLa train and standard-library pairs stand in.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import tempfile
import textwrap
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from apex_models.data.embedder_mix import qa_pair, stable_unit, stackexchange_records, training_pairs
from apex_models.data.task_data import read_split, save_splits, write_split
from apex_models.evaluation.retrieval import BeirDataset, bm25_run, dense_run, write_beir

log = logging.getLogger(__name__)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def mine_negatives(pairs: list[tuple[str, str]], top_k: int,
                   vectors: tuple[np.ndarray, np.ndarray] | None = None) -> list[list[int]]:
    """Per pair, indices (into `pairs`) of other pairs' code ranked high for its query.

    Candidates are BM25's top-`top_k` (plus, interleaved, the embedder's when `vectors`,
    its unit query and document vectors in pair order, are given).
    False negatives are skipped: a candidate whose code equals the positive's, or whose
    own query is the same text (the same description twice, e.g. two `get` functions
    both "Return the value for key", means both are right answers, not one wrong one).
    """
    codes = {f"d{i}": code for i, (_, code) in enumerate(pairs)}
    queries = {f"q{i}": query for i, (query, _) in enumerate(pairs)}
    ds = BeirDataset(codes, queries, {f"q{i}": {f"d{i}": 1} for i in range(len(pairs))})
    runs = [bm25_run(ds, k=top_k + 1)]
    if vectors is not None:
        query_vectors, doc_vectors = vectors  # already in pair order, as `ds.queries` is
        runs.append(dense_run(ds, lambda _texts: query_vectors, None, k=top_k + 1, doc_vectors=doc_vectors))
    out = []
    norm_queries = [_norm(q) for q, _ in pairs]
    for i, (_, code) in enumerate(pairs):
        ranked = [d for tier in zip_longest(*(run.get(f"q{i}", []) for run in runs)) for d in tier if d]
        seen, picked = set(), []
        for did in ranked:
            j = int(did[1:])
            if j != i and j not in seen and pairs[j][1] != code and norm_queries[j] != norm_queries[i]:
                seen.add(j)
                picked.append(j)
        out.append(picked[:top_k])
    return out


_PAIR_MODULES = tuple(
    "posixpath shlex textwrap difflib calendar urllib.parse string base64 csv email.utils fnmatch glob gzip heapq "
    "ipaddress mimetypes ntpath os platform pprint shutil statistics tarfile tempfile uuid zipfile inspect json "
    "random bisect functools collections dataclasses typing enum fractions decimal datetime http.cookiejar "
    "http.server logging logging.handlers argparse configparser gettext locale subprocess threading queue "
    "asyncio.tasks asyncio.streams email.message email.header html.parser xml.dom.minidom xml.etree.ElementTree "
    "urllib.request ftplib smtplib imaplib poplib mailbox wave colorsys quopri netrc plistlib "
    "tokenize ast dis pickletools trace tracemalloc timeit cProfile pstats pdb doctest unittest.case "
    "importlib.util importlib.metadata pkgutil sysconfig zipimport compileall py_compile filecmp linecache "
    "codecs encodings.idna stringprep textwrap reprlib copy weakref contextlib abc numbers operator".split())


def stdlib_pairs(limit: int = 2000) -> list[dict]:
    """(docstring first line -> function source) pairs from the standard library.

    Real code with real descriptions, available on any machine: the stand-in training
    set when the embedder's dataset (which needs the ingest stage) has not been built.
    """
    import importlib

    pairs, seen = [], set()
    for name in _PAIR_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 (platform-specific modules fail to import)
            continue
        for fname, fn in sorted(inspect.getmembers(module, inspect.isfunction)):
            doc = inspect.getdoc(fn)
            if fname.startswith("_") or not doc or fn.__module__ != module.__name__:
                continue
            summary = doc.strip().splitlines()[0].rstrip(".")
            if len(summary.split()) < 3 or summary in seen:
                continue
            try:
                code = textwrap.dedent(inspect.getsource(fn))
            except (OSError, TypeError):
                continue
            seen.add(summary)
            pairs.append({"query": summary, "code": code, "source": f"stdlib:{name}"})
            if len(pairs) >= limit:
                return pairs
    return pairs


def fallback_pairs(shared_dir: Path, out_path: Path) -> Path:
    """CoNaLa train + standard-library pairs, decontaminated against every benchmark, as a
    train split folder at `out_path` (the embedder dataset's layout)."""
    from apex_models.data.conala import load_conala_pairs
    from apex_models.data.decontam import Decontaminator, load_benchmark_texts

    rows = [{"query": p["query"], "code": p["code"], "source": "conala"} for p in load_conala_pairs(shared_dir)]
    rows += stdlib_pairs()
    decon = Decontaminator(load_benchmark_texts(shared_dir, ["cosqa", "conala", "intent", "qa"]))
    clean = [r for r in rows if decon.is_contaminated(r["query"], r["code"]) is None]
    log.info("fallback ranker pairs: %d of %d kept after decontamination", len(clean), len(rows))
    return write_split(out_path, clean)


def sibling_answers(records: list[dict], max_chars: int = 2000) -> dict[tuple[str, str], list[str]]:
    """:func:`~apex_models.data.embedder_mix.qa_pair` -> the question's other answer.

    The ingested record keeps the accepted answer and the top-scored one; when they differ
    the top-scored one is a real answer to the same question that its asker did not accept.
    """
    out: dict[tuple[str, str], list[str]] = {}
    for row in records:
        pair, top = qa_pair(row, max_chars), (row.get("top_answer") or "").strip()
        if pair and top and row.get("top_answer_id") != row.get("accepted_answer_id") and top[:max_chars] != pair[1]:
            out[pair] = [top[:max_chars]]
    return out


QA_DEV = "qa-dev"  # the dataset's sub-folder of held-out Stack Exchange questions (BEIR layout)


def split_qa_dev(records: list[dict], fraction: float, seed: int, out_dir: Path,
                 max_chars: int = 2000) -> set[tuple[str, str]]:
    """Hold out a seeded `fraction` of the ingested Stack Exchange questions as a Q&A dev set
    for choosing the ranker's step; returns their :func:`~apex_models.data.embedder_mix.qa_pair`
    keys, which training must not see.

    The Q&A benchmark is for reporting only, so the step that the ranker ships is chosen on
    questions of the training sites (Cardano and GenAI Stack Exchange), asked the way the
    benchmark asks: the question (title and body) -> its accepted answer among every
    answer the ingested records hold. Nothing is written when there are no such questions.
    """
    shutil.rmtree(Path(out_dir) / QA_DEV, ignore_errors=True)  # never a stale one from an earlier build
    if fraction <= 0:
        return set()
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    held: set[tuple[str, str]] = set()
    for row in records:
        for key in ("accepted_answer", "top_answer"):
            if (row.get(key) or "").strip() and row.get(f"{key}_id") is not None:
                corpus[f"a{row[f'{key}_id']}"] = row[key].strip()[:max_chars]
        pair = qa_pair(row, max_chars)
        if pair and stable_unit(seed, QA_DEV, str(row.get("path"))) < fraction:
            qid = f"q{row.get('path')}"
            queries[qid] = pair[0]
            qrels[qid] = {f"a{row['accepted_answer_id']}": 1}
            held.add(pair)
    if queries:
        write_beir(Path(out_dir) / QA_DEV, corpus, queries, qrels, split="dev")
    return held


def build_ranker_dataset(params, train_split: Path, sources_dir: Path | None, embedder_dir: Path | None,
                         out_dir: Path) -> dict[str, Any]:
    """Pairs by the ranker's mix, negatives mined with BM25 (and the embedder at `embedder_dir`,
    else the base model, when ``ranker.train.embedder_negatives``); writes the dataset, its
    report and card under `out_dir` and returns the report."""
    cfg, train = params.ranker, params.ranker.train
    records = stackexchange_records(sources_dir)   # read once: the mix, the Q&A dev set and siblings
    pairs, mix_counts = training_pairs(cfg.data, train.max_train_pairs, params.seed, train_split, sources_dir,
                                       records)
    if "stackexchange_qa" not in mix_counts:
        records = []
    held = split_qa_dev(records, train.dev_qa_fraction, params.seed, out_dir)  # also clears a stale qa-dev/
    if held:
        kept = [p for p in pairs if p not in held]  # only stackexchange_qa pairs have these keys
        mix_counts = {**mix_counts, "stackexchange_qa": mix_counts["stackexchange_qa"] - (len(pairs) - len(kept))}
        pairs = kept
    siblings = sibling_answers(records)
    sibling_rows: list[list[int]] = [[] for _ in pairs]
    extra: list[str] = []
    for rows_of, pair in zip(sibling_rows, pairs):
        for doc in siblings.get(pair, []):
            rows_of.append(len(pairs) + len(extra))
            extra.append(doc)
    started = time.perf_counter()
    vectors, first_stage = None, None
    if train.embedder_negatives or cfg.first_stage_scale:
        first_stage = str(embedder_dir) if embedder_dir and (Path(embedder_dir) / "config.json").is_file() \
            else params.embedder.base
        # one pass over pair documents and sibling answers; a sibling has no query of its own
        query_vectors, doc_vectors = first_stage_vectors(params, first_stage, [q for q, _ in pairs],
                                                         [d for _, d in pairs] + extra)
        vectors = (np.vstack([query_vectors, np.zeros((len(extra), query_vectors.shape[1]), query_vectors.dtype)]),
                   doc_vectors)
    miner = f"bm25 + {first_stage}" if train.embedder_negatives else "bm25"
    pair_vectors = (vectors[0][:len(pairs)], vectors[1][:len(pairs)]) if vectors is not None else None
    mined = mine_negatives(pairs, train.mine_top_k, pair_vectors if train.embedder_negatives else None)
    rows = [{"query": q, "document": d, "negatives": negs, "siblings": sib}
            for (q, d), negs, sib in zip(pairs, mined, sibling_rows)]
    rows += [{"query": "", "document": doc, "negatives": [], "siblings": []} for doc in extra]
    if vectors is not None:
        for row, qv, dv in zip(rows, *vectors):
            row["query_vector"], row["document_vector"] = qv.tolist(), dv.tolist()
    hashes = save_splits(out_dir, {"train": rows})
    report = {"pairs": len(pairs), "anchors": len(pairs), "sibling_negatives": len(extra),
              "qa_dev_questions": len(held), "mix": mix_counts,
              "mined_by": miner, "mine_top_k": train.mine_top_k,
              "first_stage": first_stage,
              "mined_per_query": round(float(np.mean([len(m) for m in mined])), 2) if mined else 0.0,
              "no_negatives": sum(1 for m in mined if not m),
              "mining_seconds": round(time.perf_counter() - started, 1), "sha256": hashes["train"]}
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (Path(out_dir) / "README.md").write_text(_card(report))
    return report


def first_stage_vectors(params, model: str, queries: list[str],
                        documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of `queries` and of `documents` from the embedder at `model`, encoded as
    the first stage encodes at search time (the embedder config's pooling and lengths).

    They serve twice: the dense half of mining, and the first-stage score the ranker is
    trained on top of (``ranker.first_stage_scale``), so training sees the cosines that
    evaluation and the runtime will add to its output.
    """
    from apex_models.models.embedder import TorchEncoder

    emb = params.embedder
    encoder = TorchEncoder.from_base(model, pooling=emb.pooling, normalize=emb.normalize,
                                     query_max_length=emb.query_max_length, doc_max_length=emb.doc_max_length)
    return encoder.encode_queries(queries), encoder.encode_documents(documents, progress=True)


def _card(report: dict[str, Any]) -> str:
    lines = ["# Ranker dataset: queries, documents and mined hard negatives", "",
             "A Hugging Face `DatasetDict` (`datasets.load_from_disk`) with one split, `train`. Each row is "
             "a `query`, its relevant `document`, and `negatives`: indices of other rows whose documents "
             f"{report['mined_by']} rank high for the query (up to {report['mine_top_k']}, best first; "
             "a document equal to the positive, or a row with the same query text, is never a negative).", "",
             (f"`query_vector` and `document_vector` are the first stage's unit vectors ({report['first_stage']}, "
              "encoded as at search time): the ranker learns a correction to their cosine."
              if report.get("first_stage") else "No first-stage vectors: the ranker scores pairs on its own."), "",
             "Held-out evaluation is CoSQA test and the Stack Exchange Q&A benchmark; neither is in here "
             "(every source was decontaminated upstream).", "",
             "| source | pairs |", "| --- | ---: |"]
    lines += [f"| {name} | {count} |" for name, count in sorted(report["mix"].items())]
    lines += ["", f"Pairs: {report['pairs']}, then {report.get('sibling_negatives', 0)} document-only rows "
              "(another answer to a Stack Exchange question, always among its negatives); "
              f"mean negatives per query: {report['mined_per_query']}; "
              f"queries with none: {report['no_negatives']}; mining took {report['mining_seconds']} s.", ""]
    return "\n".join(lines)


class RankerData(NamedTuple):
    """A saved ranker dataset: (query, document) rows; per row its mined negatives and the
    document-only rows that are always its negatives (`siblings`); the first stage's (query,
    document) vectors (None when built without them); the build report. Only the first
    ``report["anchors"]`` rows are queries to train on (every row of a dataset built before
    document-only rows existed)."""

    pairs: list[tuple[str, str]]
    mined: list[list[int]]
    vectors: tuple[np.ndarray, np.ndarray] | None
    report: dict[str, Any]
    siblings: list[list[int]]


def read_ranker_dataset(path: Path) -> RankerData:
    rows = read_split(Path(path) / "train")
    if not rows:
        raise ValueError(f"{path} holds no ranker examples")
    report = json.loads((Path(path) / "report.json").read_text())
    report.setdefault("anchors", len(rows))
    vectors = None
    if "query_vector" in rows[0]:
        vectors = (np.asarray([r["query_vector"] for r in rows], dtype=np.float32),
                   np.asarray([r["document_vector"] for r in rows], dtype=np.float32))
    return RankerData([(r["query"], r["document"]) for r in rows], [list(r["negatives"]) for r in rows], vectors,
                      report, [list(r.get("siblings") or []) for r in rows])


def run_ranker_dataset(params) -> dict[str, Any]:
    """The ranker_dataset stage: the embedder's train split (or the fallback) and sources,
    mined with the current embedder -> data/datasets/ranker."""
    from apex_models.layout import layout

    if params.ranker is None:
        raise ValueError("params has no `ranker` section: re-run pipelines/compose.py")
    lay = layout(params)
    train_split = lay.embedder_data / "train"
    with tempfile.TemporaryDirectory() as tmp:
        if not train_split.is_dir():
            log.warning("%s not built: mining CoNaLa + standard-library pairs instead", train_split)
            train_split = fallback_pairs(Path(params.paths.shared), Path(tmp) / "fallback")
        return build_ranker_dataset(params, train_split, lay.sources, lay.embedder_model / "merged", lay.ranker_data)
