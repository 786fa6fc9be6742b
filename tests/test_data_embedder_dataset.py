"""The embedder dataset on tiny fixtures: splits by package, decontamination, report, BEIR writers."""

from __future__ import annotations

import json

import pytest

from _data_fixtures import CORE_PY, COSQA_CODE, COSQA_CODE_2, make_shared, shared_dir_or_none
from apex_models.data.conala import load_conala_pairs
from apex_models.data.embedder_dataset import (build_embedder_dataset, split_packages, write_cosqa_beir,
                                               write_pairs_beir)
from apex_models.data.task_data import read_split, rows_sha256
from apex_models.evaluation.retrieval import load_beir

PAIRS_CFG = {"min_code_lines": 3, "max_code_chars": 4000, "min_query_words": 3, "max_pairs_per_package": 6,
             "keep_docstring_fraction": 0.5, "split_fractions": {"train": 0.6, "dev": 0.2, "test": 0.2}}
ALL = ["cosqa", "conala", "intent", "qa"]


def _module(package: str, n: int) -> str:
    out = []
    for j in range(n):
        out.append(f'def {package}_op_{j}(value, scale={j}):\n'
                   f'    """Compute the {package} operation number {j} on a value.\n\n    Details.\n    """\n'
                   f'    shifted = value + {j} * scale\n    label = "{package}-{j}"\n    return shifted, label\n')
    return "\n\n".join(out)


def _write_files(path, n_packages=5, per_package=4):
    records = []
    for k in range(n_packages):
        pkg = f"pkg{k}"
        text = _module(pkg, per_package)
        if k == 0:
            # an exact CoSQA copy (other docstring and a comment) and a near copy of another
            text += "\n\n" + COSQA_CODE.replace('"""\n    Determine', '"""\n    Tell').replace(
                "    return", "    # check\n    return") + "\n"
            text += "\n\n" + COSQA_CODE_2.replace("result", "out", 1).replace(
                "return result", "return result  # done") + "\n"
        if k == 1:
            text += "\n\n" + CORE_PY  # read_text_file's summary is an intent benchmark query
        if k == 2:
            text += "\n\n" + _module("extra", 10)  # over the per-package cap of 6
        records.append({"text": text, "kind": "code", "language": "python", "source": "pypi", "package": pkg,
                        "version": "1.0", "path": f"{pkg}/mod.py", "license": "MIT",
                        "attribution": f"{pkg} 1.0, MIT, from PyPI", "sha256": "x",
                        "url": f"https://pypi.org/project/{pkg}/1.0/"})
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_build_dataset(tmp_path):
    shared = make_shared(tmp_path / "shared")
    files = _write_files(tmp_path / "files.jsonl")
    out = tmp_path / "ds"
    report = build_embedder_dataset(files, shared, out, PAIRS_CFG, include_conala=True,
                                    decontaminate_names=ALL, seed=13)
    splits = {s: read_split(out / s) for s in ("train", "dev", "test")}
    from datasets import load_from_disk

    assert sorted(load_from_disk(str(out))) == ["dev", "test", "train"]  # a DatasetDict anyone can open
    assert {s: rows_sha256(rows) for s, rows in splits.items()} == {s: v["sha256"] for s, v in report["splits"].items()}
    packages = {s: {p["package"] for p in rows} for s, rows in splits.items()}
    assert all(packages[s] for s in packages)
    assert not (packages["train"] & packages["dev"] or packages["train"] & packages["test"]
                or packages["dev"] & packages["test"])
    assert "conala" in packages["train"]
    everything = [p for rows in splits.values() for p in rows]
    names = {p["qualname"] for p in everything}
    assert "is_iterable_but_not_string" not in names and "flatten_nested_list" not in names
    assert "read_text_file" not in names
    assert not any("os.kill" in p["code"] for p in everything)  # CoNaLa item equal to a benchmark snippet
    d = report["decontamination"]
    assert d["missing"] == []
    assert d["by_reason"].get("exact-code", 0) >= 2 and d["by_reason"].get("near-code", 0) == 1
    assert d["by_reason"].get("exact-query", 0) == 1
    assert d["by_source"] == {"conala": d["by_source"].get("conala", 0), "pypi": d["by_source"]["pypi"]}
    assert d["removed"] == sum(d["by_reason"].values()) == sum(d["by_source"].values())
    t = report["totals"]
    assert t["candidates"] == t["pypi_pairs"] + t["conala_pairs"]
    assert t["after_decontamination"] == t["candidates"] - d["removed"]
    assert t["written"] == t["after_decontamination"] - report["over_cap_removed"] == len(everything)
    assert report["over_cap_removed"] == 8 and report["per_package"]["pkg2"]["pairs"] == 6
    assert sum(s["pairs"] for s in report["splits"].values()) == t["written"]
    assert sum(report["per_license"].values()) == t["written"]
    assert sum(sum(v.values()) for v in report["per_source"].values()) == t["written"]
    assert report["dedup_removed"]["conala_duplicate_pair"] == 0
    assert json.loads((out / "report.json").read_text()) == report
    card, notice = (out / "README.md").read_text(), (out / "NOTICE").read_text()
    assert "by package" in card and "exact-code" in card
    assert "pkg0 1.0, MIT, from PyPI" in notice and "CC BY-SA 4.0" in notice
    again = build_embedder_dataset(files, shared, tmp_path / "ds2", PAIRS_CFG, True, ALL, seed=13)
    assert again["splits"] == report["splits"]


def test_split_packages_rules():
    counts = {f"p{i}": 10 for i in range(10)} | {"conala": 500}
    a = split_packages(counts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=0)
    assert a["conala"] == "train"
    per = {s: sum(counts[p] for p in a if a[p] == s and p != "conala") for s in ("train", "dev", "test")}
    assert per == {"train": 80, "dev": 10, "test": 10}
    small = split_packages({"a": 100, "b": 1, "c": 1}, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=0)
    assert set(small.values()) == {"train", "dev", "test"}
    assert split_packages(counts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=0) == a


def test_conala_pairs(tmp_path, caplog):
    pairs = load_conala_pairs(make_shared(tmp_path / "shared"))
    assert [p["query"] for p in pairs] == ["convert a list of integers `x` into a single integer",
                                           "How do I reverse a string in Python?", "send a signal from python"]
    p = pairs[0]
    assert p["path"] == "so-question:41067960" and p["license"] == "CC-BY-SA-4.0" and p["source"] == "conala"
    assert p["attribution"] == "Stack Overflow question 41067960, CC BY-SA 4.0, via CoNaLa (CMU)"
    assert load_conala_pairs(tmp_path / "nowhere") == [] and "CoNaLa" in caplog.text


def test_write_pairs_beir(tmp_path):
    pairs = [{"query": f"query {i}", "code": f"def f{i}():\n    return {i}\n"} for i in range(3)]
    ds = load_beir(write_pairs_beir(pairs, tmp_path / "beir"))
    assert ds.queries == {"q0": "query 0", "q1": "query 1", "q2": "query 2"}
    assert ds.qrels["q2"] == {"d2": 1} and ds.corpus["d1"] == pairs[1]["code"]


def test_write_cosqa_beir_fixture(tmp_path):
    shared = make_shared(tmp_path / "shared")
    ds = load_beir(write_cosqa_beir(shared, "dev", tmp_path / "b", None, None, seed=0), split="dev")
    assert ds.queries == {"cosqa-dev-1": "python check if a variable is iterable"}
    assert ds.qrels == {"cosqa-dev-1": {"0": 1}} and len(ds.corpus) == 3
    assert write_cosqa_beir(tmp_path / "nowhere", "dev", tmp_path / "c", None, None, 0) is None


def test_write_cosqa_beir_real(tmp_path):
    shared = shared_dir_or_none()
    if shared is None or not (shared / "benchmarks" / "cosqa" / "code_idx_map.txt").is_file():
        pytest.skip("shared CoSQA benchmark not present")
    path = write_cosqa_beir(shared, "test", tmp_path / "cosqa", n_queries=40, corpus_limit=400, seed=7)
    ds = load_beir(path, split="test")
    assert len(ds.queries) == 40 and len(ds.corpus) == 400
    assert all(doc in ds.corpus for rel in ds.qrels.values() for doc in rel)
    again = load_beir(write_cosqa_beir(shared, "test", tmp_path / "again", 40, 400, seed=7), split="test")
    assert again == ds
    full = load_beir(write_cosqa_beir(shared, "dev", tmp_path / "full", None, None, seed=0), split="dev")
    assert len(full.queries) == 500 and len(full.corpus) == 6267
