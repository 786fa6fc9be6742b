"""Re-ranking, intent shaping and near-duplicate collapse in MemoryStore.search.

The reranker and intent model here are test doubles (deterministic stand-ins for
`bundle.ranker()` and `bundle.intent()`), so each assertion checks the store's fusion
arithmetic exactly rather than a model's taste.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apex_models.runtime import DEFAULT_INTENT_BOOSTS, MemoryStore, OnnxEmbedder, StoreConfig, StoreError, load_bundle
from test_export_heads import heads_bundle  # noqa: F401  (a session fixture: small exported ranker and intent heads)

KEY = bytes(range(1, 33))
RRF_K = 60

NOTES = [
    ("Use ruff for linting and formatting in every repository.", "note"),
    ("Retry HTTP calls three times with exponential backoff.", "decision"),
    ("def retry_http(call, attempts=3): return backoff(call, attempts)", "code"),
    ("TimeoutError: HTTP call to the billing API timed out after 3 retries", "error"),
    ("The HTTP client pool holds 10 connections per host.", "note"),
    ("We chose httpx over requests for HTTP/2 support.", "decision"),
    ("ConnectionResetError from the HTTP proxy during deploys", "error"),
    ("def http_get(url): return httpx.get(url, timeout=5)", "code"),
]


class MarkerRerankerDouble:
    """Test double for the bundle's ranker: scores a text by how many marker words it holds."""

    def __init__(self, markers: list[str]) -> None:
        self.markers = markers
        self.calls: list[int] = []

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.array([sum(m in t for m in self.markers) + i * 1e-6 for i, t in enumerate(texts)])


class FixedIntentDouble:
    """Test double for the bundle's intent model: the same (label, confidence) for every text."""

    def __init__(self, label: str, confidence: float) -> None:
        self.label, self.confidence = label, confidence
        self.calls = 0

    def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        self.calls += 1
        return [(self.label, self.confidence) for _ in texts]


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder()


@pytest.fixture()
def folder(tmp_path: Path, embedder: OnnxEmbedder) -> Path:
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as s:
        s.add_many([{"text": t, "kind": k} for t, k in NOTES])
    return tmp_path / "s"


def _rrf(hit) -> float:
    weight = StoreConfig().keyword_weight
    return (1 / (RRF_K + hit.why.dense_rank) if hit.why.dense_rank else 0.0) + \
        (weight / (RRF_K + hit.why.keyword_rank) if hit.why.keyword_rank else 0.0)


def test_debug_error_intent_boosts_error_memories_by_the_configured_factor(folder: Path,
                                                                          embedder: OnnxEmbedder) -> None:
    query = "http call retries"
    with MemoryStore.open(folder, embedder, key=KEY) as plain:
        base = plain.search(query, k=8)
        assert all(h.why.intent is None and h.why.intent_boost == 0.0 for h in base)
    intent = FixedIntentDouble("debug_error", 0.9)
    with MemoryStore.open(folder, embedder, key=KEY, intent=intent) as store:
        shaped = store.search(query, k=8)
    assert intent.calls == 1
    boost = DEFAULT_INTENT_BOOSTS["debug_error"]["error"]
    for hit in shaped:
        assert hit.why.intent == "debug_error" and hit.why.intent_confidence == pytest.approx(0.9)
        assert hit.why.intent_boost == (boost if hit.kind == "error" else 0.0)
        assert hit.score == pytest.approx(_rrf(hit) * (1 + hit.why.intent_boost))
    assert [h.score for h in shaped] == sorted((h.score for h in shaped), reverse=True)
    rank = {h.id: i for i, h in enumerate(base)}
    shaped_rank = {h.id: i for i, h in enumerate(shaped)}
    errors = [h.id for h in base if h.kind == "error"]
    assert all(shaped_rank[e] <= rank[e] for e in errors)
    assert any(shaped_rank[e] < rank[e] for e in errors)  # the shaping moved something


@pytest.mark.parametrize(("label", "favoured"), [("code_search", {"code"}), ("recall_memory", {"decision", "note"})])
def test_each_intent_favours_its_kinds(folder: Path, embedder: OnnxEmbedder, label: str, favoured: set[str]) -> None:
    with MemoryStore.open(folder, embedder, key=KEY, intent=FixedIntentDouble(label, 0.8)) as store:
        hits = store.search("http", k=8)
    assert {h.kind for h in hits if h.why.intent_boost > 0} == favoured
    assert all(h.why.intent_boost == DEFAULT_INTENT_BOOSTS[label].get(h.kind, 0.0) for h in hits)


def test_low_confidence_or_unknown_intents_shape_nothing(folder: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(folder, embedder, key=KEY) as plain:
        base = [h.id for h in plain.search("http call retries", k=8)]
    with MemoryStore.open(folder, embedder, key=KEY, intent=FixedIntentDouble("debug_error", 0.3)) as store:
        unsure = store.search("http call retries", k=8)
        assert [h.id for h in unsure] == base
        assert all(h.why.intent == "debug_error" and h.why.intent_boost == 0.0 for h in unsure)
        assert [h.id for h in store.search("http call retries", k=8, intent="out_of_scope")] == base
        assert [h.id for h in store.search("http call retries", k=8, intent=False)] == base
        assert store.classify_intent("why does this crash") == ("debug_error", pytest.approx(0.3))
    config = StoreConfig(intent_boosts={"debug_error": {"error": 0.0}})
    with MemoryStore.open(folder, embedder, key=KEY, config=config) as store:
        assert [h.id for h in store.search("http call retries", k=8, intent="debug_error")] == base
        with pytest.raises(StoreError, match="without an intent model"):
            store.search("x", intent=True)


def test_rerank_true_rescores_the_configured_head_with_the_stores_reranker(folder: Path,
                                                                          embedder: OnnxEmbedder) -> None:
    reranker = MarkerRerankerDouble(["ruff", "linting"])
    config = StoreConfig(rerank_depth=5)
    with MemoryStore.open(folder, embedder, key=KEY, config=config, reranker=reranker) as store:
        fused = store.search("http", k=8)
        hits = store.search("http", k=8, rerank=True)
        assert reranker.calls == [5]
        head = {h.id for h in fused[:5]}
        assert {h.id for h in hits[:5]} == head and [h.id for h in hits[5:]] == [h.id for h in fused[5:]]
        assert [h.why.rerank_rank for h in hits[:5]] == [1, 2, 3, 4, 5]
        assert all(h.why.rerank_score is None for h in hits[5:])
        for hit in hits[:5]:
            assert hit.score == pytest.approx(1 / (RRF_K + hit.why.rerank_rank))
        scores = [h.why.rerank_score for h in hits[:5]]
        assert scores == sorted(scores, reverse=True)
        store.search("http", k=8, rerank=2)
        assert reranker.calls[-1] == 2
        if "ruff" in " ".join(h.text for h in fused[:5]):
            assert "ruff" in hits[0].text
    with MemoryStore.open(folder, embedder, key=KEY) as store:
        with pytest.raises(StoreError, match="without a reranker"):
            store.search("http", rerank=True)
        assert [h.id for h in store.search("http", rerank=0)] == [h.id for h in store.search("http")]  # 0: off
        with pytest.raises(ValueError, match=r"head size \(0: off\)"):
            store.search("http", rerank=-1)


class SilentResidualDouble:
    """A ranker trained as a correction to the first stage that has learned nothing yet:
    every logit 0, so its relevance is the first-stage part alone."""

    first_stage_scale = 20.0

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        return np.zeros(len(texts))


def test_a_residual_reranker_adds_the_scaled_cosine(folder: Path, embedder: OnnxEmbedder) -> None:
    """With `first_stage_scale`, a head memory's reranker score is logit + scale x its cosine to
    the query: a silent correction leaves the head in dense (cosine) order."""
    query = "http client connections"
    with MemoryStore.open(folder, embedder, key=KEY) as store:
        hits = store.search(query, k=8, rerank=SilentResidualDouble(), rerank_depth=8)
        cosines = [h.why.dense_score for h in hits]  # the stored vectors' cosines (all 8 are dense hits)
        assert [h.why.rerank_score for h in hits] == pytest.approx([20.0 * c for c in cosines], abs=1e-4)
        assert cosines == sorted(cosines, reverse=True) and len(hits) == 8
        assert [h.text for h in store.search(query, k=8, mode="dense")] == [h.text for h in hits]
        # Keyword mode has no dense list: the store embeds the query for the cosines.
        keyword = store.search(query, k=8, rerank=SilentResidualDouble(), rerank_depth=8, mode="keyword")
        by_text = {h.text: h.why.rerank_score for h in hits}
        assert [h.why.rerank_score for h in keyword] == pytest.approx([by_text[h.text] for h in keyword], abs=1e-4)
        plain = store.search(query, k=8, rerank=lambda q, texts: np.zeros(len(texts)), rerank_depth=8)
        assert all(h.why.rerank_score == 0.0 for h in plain)  # a callable is taken as it is


def test_intent_still_counts_after_reranking(folder: Path, embedder: OnnxEmbedder) -> None:
    """A favoured kind at reranker rank 2 beats an unfavoured rank 1: (1 + 0.1) / 62 > 1 / 61,
    while the unfavoured memories keep the reranker's order among themselves."""
    with MemoryStore.open(folder, embedder, key=KEY) as plain:
        texts = [h.text for h in plain.search("http", k=8)]
    preferred = [t for t in texts if "pool holds" in t] + [t for t in texts if t.startswith("TimeoutError")]
    preferred += [t for t in texts if t not in preferred]

    def prefer(query: str, candidates: list[str]) -> list[float]:
        return [float(len(preferred) - preferred.index(c)) for c in candidates]

    with MemoryStore.open(folder, embedder, key=KEY, intent=FixedIntentDouble("debug_error", 0.9)) as store:
        hits = store.search("http", k=8, rerank=prefer, rerank_depth=8)
    boost = DEFAULT_INTENT_BOOSTS["debug_error"]["error"]
    assert hits[0].text == preferred[1] and hits[0].why.rerank_rank == 2 and hits[0].why.intent_boost == boost
    assert hits[0].score == pytest.approx((1 + boost) / 62)
    note = next(h for h in hits if h.text == preferred[0])
    assert note.why.rerank_rank == 1 and note.score == pytest.approx(1 / 61) and note.why.intent_boost == 0.0
    for hit in hits:
        assert hit.score == pytest.approx((1 + hit.why.intent_boost) / (RRF_K + hit.why.rerank_rank))
    plain_order = [h.why.rerank_rank for h in hits if h.kind != "error"]
    assert plain_order == sorted(plain_order)


def test_collapsed_duplicates_are_counted_on_the_kept_hit(folder: Path, embedder: OnnxEmbedder) -> None:
    # A threshold with margin: these near-twins' int8 cosine sits at the default 0.97 and
    # moves between CPUs with onnxruntime's int8 kernels (see test_store_search.TWIN).
    with MemoryStore.open(folder, embedder, key=KEY, config=StoreConfig(duplicate_cosine=0.95)) as store:
        store.add_many([{"text": "Use ruff for linting and formatting in every repository!"},
                        {"text": "Use ruff for linting and formatting in every repository."[:-1] + " ."}])
        hits = store.search("which linter do we use", k=3)
        ruff = [h for h in hits if "ruff" in h.text]
        assert len(ruff) == 1 and ruff[0].why.duplicates == 2
        assert all(h.why.duplicates == 0 for h in hits if h is not ruff[0])
        assert sum("ruff" in h.text for h in store.search("which linter do we use", k=5, collapse=False)) == 3


def test_a_bad_reranker_fails_clearly(folder: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(folder, embedder, key=KEY) as store:
        with pytest.raises(StoreError, match="returned 1 scores for"):
            store.search("http", rerank=lambda q, texts: [1.0])


def test_the_bundles_onnx_ranker_and_intent_model_plug_in(folder: Path, embedder: OnnxEmbedder,
                                                          heads_bundle: Path) -> None:
    """End to end with real exported models (small heads from test_export_heads): the store
    re-scores its head with the ONNX cross-encoder and classifies the query with the ONNX
    intent model, and every number in `why` is theirs."""
    bundle = load_bundle(heads_bundle / "bundle")
    ranker, intent = bundle.ranker(precision="fp32"), bundle.intent(precision="fp32")
    query = "TimeoutError when calling the billing API"
    with MemoryStore.open(folder, embedder, key=KEY, reranker=ranker, intent=intent) as store:
        hits = store.search(query, k=5, rerank=True)
    label, confidence = intent.classify([query])[0]
    assert all(h.why.intent == label and h.why.intent_confidence == pytest.approx(confidence, abs=1e-6) for h in hits)
    assert ranker.first_stage_scale == 20.0  # trained as a correction to the embedder's cosine
    # Every memory of this small store is on the dense list, so each hit has its stored cosine.
    cosines = np.array([h.why.dense_score for h in hits])
    expected = ranker.score(query, [h.text for h in hits]) + ranker.first_stage_scale * cosines
    assert [h.why.rerank_score for h in hits] == pytest.approx([float(s) for s in expected], abs=1e-3)
    by_rank = sorted(hits, key=lambda h: h.why.rerank_rank)
    assert [h.why.rerank_score for h in by_rank] == sorted((h.why.rerank_score for h in hits), reverse=True)
