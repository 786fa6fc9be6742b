"""Hybrid search: fusion, `why`, filters before the cut, duplicate collapse, reranking, index freshness."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from apex_models.runtime import MemoryStore, OnnxEmbedder, StoreConfig, load_bundle

KEY = bytes(range(1, 33))

NOTES = [
    ("Use ruff for linting and formatting in every repository.", "note", ["lint"], "docs/style.md"),
    ("The frontend build uses Vite; run npm run dev for hot reload.", "note", ["frontend"], "web/README.md"),
    ("Retry HTTP calls three times with exponential backoff.", "decision", ["http"], "src/net/retry.py"),
    ("def parse_iso_timestamp(value): return datetime.fromisoformat(value)", "code", ["time"],
     "src/util/timeparse.py"),
    ("KeyError: 'tenant_id' raised by load_tenant_settings when the header is missing", "error", ["tenants"],
     "src/tenants/settings.py"),
    ("Background jobs run on Celery with a Redis broker.", "decision", ["jobs"], "src/jobs/celery.py"),
    ("SQL migrations are managed with Alembic; never edit an applied migration.", "decision", ["db"],
     "migrations/README.md"),
    ("Feature flags live in LaunchDarkly; never hardcode them.", "note", ["flags"], "docs/flags.md"),
]


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder()


@pytest.fixture()
def store(tmp_path: Path, embedder: OnnxEmbedder):
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as s:
        s.add_many([{"text": t, "kind": k, "tags": g, "source": src} for t, k, g, src in NOTES])
        yield s


def test_keyword_finds_an_identifier_and_why_says_so(store: MemoryStore) -> None:
    hits = store.search("loadTenantSettings", k=3)  # camelCase query, snake_case memory
    top = hits[0]
    assert top.kind == "error" and "load_tenant_settings" in top.text
    assert top.why.keyword_rank == 1 and top.why.matched_terms == ["load", "tenant", "settings"]
    assert "keyword" in top.why.retrievers and top.why.keyword_score and top.why.keyword_score > 0
    dense_only = store.search("loadTenantSettings", k=3, mode="dense")
    assert all(h.why.keyword_rank is None and h.why.dense_rank for h in dense_only)
    keyword_only = store.search("alembic migration", k=3, mode="keyword")
    assert keyword_only[0].source == "migrations/README.md" and keyword_only[0].why.dense_rank is None


def test_fused_scores_are_reciprocal_ranks(store: MemoryStore) -> None:
    hits = store.search("how do we retry flaky http requests", k=8)
    assert hits[0].source == "src/net/retry.py"
    for hit in hits:
        expected = (1 / (60 + hit.why.dense_rank) if hit.why.dense_rank else 0.0) + \
            (StoreConfig().keyword_weight / (60 + hit.why.keyword_rank) if hit.why.keyword_rank else 0.0)
        assert hit.score == pytest.approx(expected)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_the_keyword_weight_scales_the_bm25_list_in_the_fusion(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(tmp_path / "w", embedder, key=KEY, config=StoreConfig(keyword_weight=0.25)) as s:
        s.add_many([{"text": t, "kind": k, "tags": g, "source": src} for t, k, g, src in NOTES])
        hits = s.search("how do we retry flaky http requests", k=8)
        for hit in hits:
            expected = (1 / (60 + hit.why.dense_rank) if hit.why.dense_rank else 0.0) + \
                (0.25 / (60 + hit.why.keyword_rank) if hit.why.keyword_rank else 0.0)
            assert hit.score == pytest.approx(expected)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # weight 0: the keyword list still explains (`why`) but no longer orders
    with MemoryStore.open(tmp_path / "w", embedder, key=KEY, config=StoreConfig(keyword_weight=0.0)) as s:
        fused = s.search("alembic migration", k=5)
        dense = s.search("alembic migration", k=5, mode="dense")
        assert [h.id for h in fused] == [h.id for h in dense]
        assert any(h.why.keyword_rank for h in fused)
    with pytest.raises(ValueError, match="keyword_weight must be >= 0"):
        StoreConfig(keyword_weight=-0.5)


def test_filters_apply_before_the_cut(store: MemoryStore) -> None:
    hits = store.search("linting", k=1, kind=["code", "error"])
    assert len(hits) == 1 and hits[0].kind in ("code", "error")
    assert [h.source for h in store.search("anything", k=10, source_prefix="src/")] and all(
        h.source.startswith("src/") for h in store.search("anything", k=10, source_prefix="src/"))  # type: ignore[union-attr]
    assert {h.source for h in store.search("queue", k=10, source_prefix="src/jobs")} == {"src/jobs/celery.py"}
    assert [h.tags for h in store.search("linting", k=5, tags=["db"])] == [["db"]]
    assert store.search("linting", k=5, tags=["db", "lint"]) == []
    now = datetime.now(timezone.utc)
    assert len(store.search("anything", k=20, since=now - timedelta(minutes=5))) == len(NOTES)
    assert store.search("anything", k=20, since=now + timedelta(minutes=5)) == []
    assert store.search("anything", k=20, until=(now - timedelta(minutes=5)).isoformat()) == []


# The twin of NOTES[0] differs by its last character: a real near-duplicate, but its int8
# cosine to the original sits right at the default threshold (0.97, measured 0.9701 on an
# AVX2-only CPU) and moves between CPUs, since onnxruntime picks its int8 kernels by
# instruction set. Collapse tests therefore pin a threshold with margin.
TWIN = "Use ruff for linting and formatting in every repository!"
COLLAPSE = StoreConfig(duplicate_cosine=0.95)


def test_near_duplicates_collapse_to_the_best(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    v = embedder.encode_documents([NOTES[0][0], TWIN])
    assert 0.95 + 0.01 < float(v[0] @ v[1]) < 0.999  # near, not identical, clear of the threshold
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY, config=COLLAPSE) as store:
        store.add_many([{"text": t, "kind": k, "tags": g, "source": src} for t, k, g, src in NOTES])
        twin = store.add(TWIN, kind="note")
        hits = store.search("which linter do we use", k=5)
        ruff = [h for h in hits if "ruff" in h.text]
        assert len(ruff) == 1
        both = store.search("which linter do we use", k=5, collapse=False)
        assert sum("ruff" in h.text for h in both) == 2 and twin in {h.id for h in both}


def test_rerank_hook_reorders_the_head(store: MemoryStore) -> None:
    seen: list[int] = []

    def prefer_celery(query: str, texts: list[str]) -> list[float]:
        seen.append(len(texts))
        return [1.0 if "Celery" in t else 0.0 for t in texts]

    hits = store.search("how do we lint code", k=3, rerank=prefer_celery)
    assert "Celery" in hits[0].text and hits[0].why.rerank_score == 1.0 and hits[0].why.rerank_rank == 1
    assert hits[0].score == pytest.approx(1 / 61)  # ordered by reranker rank, RRF-style
    assert seen == [len(NOTES)]


def test_indexes_follow_every_write(store: MemoryStore) -> None:
    store.search("warm up", k=1)
    rebuilds = store._keyword.rebuilds
    new = store.add_many([{"text": f"zebra_stripes module number {i}"} for i in range(3)])
    assert store.search("zebraStripes", k=3, mode="keyword")[0].id in new  # found in the delta segment
    assert store._keyword.rebuilds == rebuilds  # no bm25s rebuild for a few writes
    store.delete(new[0])
    assert new[0] not in {h.id for h in store.search("zebra stripes", k=10)}
    store.update(new[1], text="giraffe_necks module")
    assert new[1] not in {h.id for h in store.search("zebra stripes", k=10, mode="keyword")}
    assert store.search("giraffe necks", k=1)[0].id == new[1]
    assert store.search("giraffe necks", k=1, mode="dense")[0].id == new[1]


def test_keyword_delta_scores_match_a_merged_index() -> None:
    """Delta documents are scored on bm25s's scale: after a merge their scores are unchanged."""
    from apex_models.runtime.keyword import KeywordIndex

    index = KeywordIndex(merge_min=1000)
    for i, (text, *_) in enumerate(NOTES):
        index.add(i, text)
    index.rebuild()
    index.add(100, "parse_iso_timestamp fails on a trailing Z: use datetime.fromisoformat in 3.11")
    index.add(101, "Retry the parse with a timestamp fallback")
    index.remove(2)
    query = ["parse", "timestamp", "retry"]
    before = dict(zip(*(a.tolist() for a in index.scores(query))))
    assert index.pending == 2 and index.rebuilds == 1
    index.rebuild()
    after = dict(zip(*(a.tolist() for a in index.scores(query))))
    assert set(before) == set(after) and 2 not in after
    for rowid in (100, 101):
        assert before[rowid] == pytest.approx(after[rowid], rel=1e-5)
    merged = KeywordIndex(merge_min=0, merge_ratio=0.0)  # every search merges first
    for i in range(600):
        merged.add(i, f"note {i} about module_{i % 7}")
    assert merged.search(["module", "3"], 5) and merged.rebuilds == 1 and merged.pending == 0


def test_a_restored_keyword_index_keeps_numpys_fast_paths() -> None:
    """Unpickled arrays carry fresh dtype objects, which numpy's fast paths (np.add.at in
    the BM25 scoring) do not recognise: from_state must keep canonical dtypes, and score
    exactly as the index it was saved from."""
    import pickle

    import numpy as np

    from apex_models.runtime.keyword import KeywordIndex

    index = KeywordIndex(merge_min=10**6)
    for i, (text, *_) in enumerate(NOTES * 20):
        index.add(i, f"{text} variant {i}")
    index.rebuild()
    buffers: list = []
    payload = pickle.dumps(index.state(), protocol=5, buffer_callback=lambda b: buffers.append(b.raw()) or False)
    raw = pickle.loads(payload, buffers=[bytes(b) for b in buffers])
    assert raw["bm25"]["data"].dtype is not np.dtype(np.float32)   # what unpickling does
    restored = KeywordIndex.from_state(raw)
    for name in ("data", "indices", "indptr"):
        array = getattr(restored._bm25, name)
        assert array.dtype is np.dtype(array.dtype.str), name
    assert restored._main_rowids.dtype is np.dtype(np.int64)
    query = ["parse", "timestamp", "variant"]
    for a, b in zip(index.scores(query), restored.scores(query)):
        assert np.array_equal(a, b)


def test_main_segment_scores_exactly_as_bm25s_and_without_importing_it() -> None:
    """The main segment keeps bm25s's score matrix and sums it the way bm25s does: the same
    float32 scores for every document, unknown and repeated query tokens included; a
    restored index searches without importing bm25s (a fresh process's open pays nothing
    for it)."""
    import pickle
    import subprocess
    import sys

    import bm25s
    import numpy as np

    from apex_models.runtime.keyword import KeywordIndex, tokens

    texts = [f"{text} variant {i} readFile parse_json" if i % 3 else f"{text} {i}" for i, (text, *_) in
             enumerate(NOTES * 15)]
    index = KeywordIndex(merge_min=10**6)
    for i, text in enumerate(texts):
        index.add(i, text)
    index.rebuild()
    reference = bm25s.BM25(k1=index.k1, b=index.b, method="lucene")
    reference.index([tokens(t) for t in texts], show_progress=False)
    for query in (["parse", "json", "variant"], ["read", "read", "file"], ["zzz", "parse"], ["zzz"]):
        expected = reference.get_scores(query) if any(t in reference.vocab_dict for t in query) else \
            np.zeros(len(texts), dtype=np.float32)
        assert np.array_equal(index._bm25.get_scores(query), expected), query  # type: ignore[union-attr]

    state = pickle.dumps(index.state(), protocol=5)
    probe = ("import pickle, sys; from apex_models.runtime.keyword import KeywordIndex; "
             "index = KeywordIndex.from_state(pickle.loads(sys.stdin.buffer.read())); "
             "hits = index.search(['parse', 'json'], 3); "
             "print(len(hits), 'bm25s' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], input=state, capture_output=True, check=True).stdout
    assert out.decode().split() == ["3", "False", "False"]


def test_main_segment_top_k_equals_sorting_every_score() -> None:
    """`top` cuts the scores at a floor taken from the rarest words' documents before
    picking the best k: the answer must be exactly that of sorting every alive document's
    score (ties to the lower position), with removed documents, repeated and unknown words,
    and k beyond the number of matches."""
    import numpy as np

    from apex_models.runtime.keyword import KeywordIndex, _top_k

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(60)]
    index = KeywordIndex(merge_min=10**6)
    for i in range(3000):  # Zipf-like: a few words in most documents, most words in few
        picked = rng.choice(words, size=int(rng.integers(2, 12)), p=np.arange(60, 0, -1) / 1830)
        index.add(i, " ".join(picked) + (" same same" if i % 10 == 0 else ""))
    index.rebuild()
    for rowid in range(0, 3000, 7):
        index.remove(rowid)  # masked in main: never returned
    main, alive = index._bm25, index._alive
    for query in (["w0"], ["w0", "w1", "w2"], ["w59", "w0"], ["w3", "w3", "w40"], ["same"], ["same", "w1"],
                  ["nope", "w58"], ["nope"]):
        for k in (1, 10, 50, 5000):
            scores = main.get_scores(query)
            hit = np.flatnonzero((scores > 0) & alive)
            expected = _top_k(hit, scores[hit], k)
            got = main.top(query, k, alive)
            assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]), (query, k)
            assert not set(index._main_rowids[got[0]].tolist()) & set(range(0, 3000, 7))
    ties = _top_k(np.array([2, 5, 7, 9]), np.array([1.0, 3.0, 1.0, 1.0], dtype=np.float32), 2)
    assert ties[0].tolist() == [5, 2]  # equal scores at the cut: the lower position


def test_another_instance_sees_updates_and_deletes(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as a, \
            MemoryStore.open(tmp_path / "s", embedder, key=KEY) as b:
        ids = a.add_many([{"text": t} for t, *_ in NOTES])
        assert b.stats()["count"] == len(NOTES)
        a.update(ids[0], text="Black formats our Python; ruff only lints.")
        a.delete(ids[1])
        assert b.search("black formatter", k=1)[0].id == ids[0]
        assert ids[1] not in {h.id for h in b.search("Vite frontend", k=10)}
        assert b.stats()["count"] == len(NOTES) - 1 and b.stats()["indexed"] == len(NOTES) - 1


def test_hnsw_and_the_automatic_switch(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    texts = [f"note {i}: service {i % 7} owns queue {i % 11} and table t{i}" for i in range(60)]
    config = StoreConfig(dense_index="auto", hnsw_threshold=50)
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY, config=config) as store:
        store.add_many([{"text": t} for t in texts[:40]])
        assert store.stats()["dense_index"] == "flat"
        store.add_many([{"text": t} for t in texts[40:]])
        assert store.stats()["dense_index"] == "hnsw" and store.stats()["indexed"] == 60
        ids = [h.id for h in store.search("table t42", k=60, mode="dense")]
        assert len(ids) == 60
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY, config=StoreConfig(dense_index="flat")) as store:
        assert store.stats()["dense_index"] == "flat"
        start = time.perf_counter()
        store.search("table t42", k=5)
        assert time.perf_counter() - start < 2.0


def test_filtered_paths_agree(tmp_path: Path, embedder: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filtered search on an HNSW store by its exact path (a bitmap-selected flat scan)
    and by HNSW restricted to the same rows gives the same hits, keyword delta included;
    and the cached rows of a filter follow every write."""
    import apex_models.runtime.dense as dense_module

    with MemoryStore.open(tmp_path / "s", embedder, key=KEY, config=StoreConfig(hnsw_threshold=50)) as store:
        store.add_many([{"text": t, "kind": k, "tags": g, "source": src} for t, k, g, src in NOTES])
        store.add_many([{"text": f"decision {i}: keep service {i} on {tool}", "kind": "decision", "tags": ["bulk"]}
                        for i, tool in enumerate(["Redis", "Kafka", "Celery", "nginx"] * 10)])
        store.search("merge the keyword index")  # main segment now; the next adds stay in the delta
        store.add_many([{"text": f"decision late {i}: Kafka topic {i} replaces a Redis queue", "kind": "decision"}
                        for i in range(3)] + [{"text": "Kafka for the audit log", "kind": "note", "tags": ["bulk"]}])
        assert store.stats()["dense_index"] == "hnsw"
        queries = ["which message broker: kafka or redis", "cache service choices", "nginx web server",
                   "kafka redis queue"]
        filters = [{"kind": "decision"}, {"tags": ["bulk"]}, {"kind": ["note", "decision"], "tags": ["bulk"]}]

        def answers() -> list:
            return [[(h.id, round(h.score, 6), h.why.dense_rank, h.why.keyword_rank)
                     for h in store.search(q, k=5, mode=mode, **f)]
                    for q in queries for f in filters for mode in ("dense", "keyword", "hybrid")]

        monkeypatch.setattr(dense_module, "HNSW_SLOT_US", 10**9)  # always the exact scan
        exact = answers()
        monkeypatch.setattr(dense_module, "HNSW_SLOT_US", 0)      # always HNSW among the rows
        walked = answers()
        assert exact == walked and all(len(hits) == 5 for hits in exact[0::3])  # dense: always 5
        assert all(exact[1::3])  # keyword: every query matches words of the filtered memories
        assert all(h.kind == "decision" for h in store.search("kafka", k=20, kind="decision"))
        assert len(store.search("service", k=60, tags=["bulk"], kind="decision")) == 40
        late = store.add("decision latest: Kafka Connect replaces the Redis queue", kind="decision", tags=["bulk"])
        assert late in [h.id for h in store.search("kafka connect redis", k=3, tags=["bulk"], kind="decision")]
        store.update(late, kind="note")  # the cached rows of a filter follow every write
        assert late not in [h.id for h in store.search("kafka connect redis", k=50, kind="decision")]


def test_keyword_beside_the_embedding_gives_the_same_hits(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    """Scoring BM25 on a second thread while the query embeds changes timing only; an
    embedding that fails still fails the search, after the keyword thread is done."""
    queries = ["loadTenantSettings KeyError", "how do we retry flaky http calls", "alembic", "zzz"]
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as serial:
        serial.add_many([{"text": t, "kind": k, "tags": g, "source": src} for t, k, g, src in NOTES])
        expected = [[(h.id, h.score, h.why) for h in serial.search(q, k=5, **f)]
                    for q in queries for f in ({}, {"kind": "error"})]
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY, config=StoreConfig(parallel_keyword_min=0)) as store:
        assert [[(h.id, h.score, h.why) for h in store.search(q, k=5, **f)]
                for q in queries for f in ({}, {"kind": "error"})] == expected
        assert store._keyword_thread is not None  # the parallel path ran

        def broken(texts: list[str]):
            raise RuntimeError("embedding failed")

        store.embedder = type("Broken", (), {"encode_queries": staticmethod(broken)})()
        with pytest.raises(RuntimeError, match="embedding failed"):
            store.search("retry", k=3)
    assert store._keyword_thread is None  # close() shut it down


def test_a_given_query_vector_gives_the_same_hits(store: MemoryStore) -> None:
    """Search with the query's vector precomputed (one embedding for several stores) is the same search."""
    query = "how do we retry flaky http calls"
    plain = store.search(query, k=5)
    vector = store.embedder.encode_queries([query])[0]
    given = store.search(query, k=5, query_vector=vector)
    assert [(h.id, h.score) for h in given] == [(h.id, h.score) for h in plain]
    other = store.embedder.encode_queries(["the design system colours"])[0]
    assert [h.id for h in store.search(query, k=5, query_vector=other, mode="dense")] != \
        [h.id for h in store.search(query, k=5, mode="dense")]
