"""The store's dense index: HNSW with fp16 or fp32 storage finds what exact search finds,
survives its snapshot state unchanged, and scrubs a forgotten vector in place."""

from __future__ import annotations

import numpy as np
import pytest

from apex_models.runtime.dense import DenseIndex

DIM = 64


def _unit(rows: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    base = _unit(3000, 0)
    queries = base[:40] + 0.3 * _unit(40, 1)  # near a stored vector, as real queries are
    return base, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _hnsw(storage: str, base: np.ndarray) -> DenseIndex:
    index = DenseIndex(DIM, "hnsw", hnsw_m=16, ef_construction=80, ef_search=64, hnsw_storage=storage)
    index.add(list(range(100, 100 + len(base))), base)
    return index


@pytest.mark.parametrize("storage", ["fp16", "fp32"])
def test_hnsw_recall_against_exact_and_state_round_trip(data, storage: str) -> None:
    base, queries = data
    index = _hnsw(storage, base)
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :10] + 100
    found = [[row for row, _ in index.search(q, 10)] for q in queries]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.95, recall
    # the scores are the stored vectors' inner products: fp16 rounds them in the 4th decimal
    best = index.search(queries[0], 1)[0]
    assert best[1] == pytest.approx(float(queries[0] @ base[best[0] - 100]), abs=2e-3 if storage == "fp16" else 1e-6)

    restored = DenseIndex.from_state(index.state(), ef_search=64)
    assert restored.hnsw_storage == storage
    assert [restored.search(q, 10) for q in queries] == [index.search(q, 10) for q in queries]


def test_fp16_storage_is_half_of_fp32(data) -> None:
    base, _ = data
    fp16, fp32 = _hnsw("fp16", base), _hnsw("fp32", base)
    assert fp16._stored_rows().shape == (len(base), 2 * DIM)
    assert fp32._stored_rows().shape == (len(base), 4 * DIM)
    assert len(fp16.state()["faiss"]) < 0.75 * len(fp32.state()["faiss"])


def test_a_state_written_before_fp16_storage_restores_as_fp32(data) -> None:
    base, queries = data
    old = _hnsw("fp32", base).state()
    del old["hnsw_storage"]  # snapshots of earlier versions do not name it
    restored = DenseIndex.from_state(old, ef_search=64)
    assert restored.hnsw_storage == "fp32"
    restored.add([99], base[:1])  # and it keeps taking writes in its own format
    assert restored.search(base[0], 2)[0][0] in (99, 100)


@pytest.mark.parametrize("storage", ["fp16", "fp32"])
def test_scrub_zeroes_the_vector_inside_faiss(data, storage: str) -> None:
    base, _ = data
    index = _hnsw(storage, base)
    position = index._position(105)
    assert index._stored_rows()[position].any()
    index.scrub(105)
    assert not index._stored_rows()[position].any() and 105 not in index
    assert all(row != 105 for row, _ in index.search(base[5], 10))


def test_unknown_storage_is_refused() -> None:
    with pytest.raises(ValueError, match="hnsw storage"):
        DenseIndex(DIM, "hnsw", hnsw_storage="int4")


def test_search_among_rows_by_hnsw_walk_and_by_exact_scan(data, monkeypatch: pytest.MonkeyPatch) -> None:
    import apex_models.runtime.dense as dense_module

    base, queries = data
    index = _hnsw("fp16", base)
    rows = np.arange(100, 100 + len(base), 10)  # a filter keeping one row in ten
    index.remove([110, 120])                    # removed rows never come back, even when asked for
    allowed = set(rows.tolist()) - {110, 120}
    monkeypatch.setattr(dense_module, "HNSW_SLOT_US", 10**9)  # the bitmap-selected exact scan
    exact = [index.search_among(q, rows, 10) for q in queries]
    for q, hits in zip(queries, exact):
        scores = {r: float(q @ base[r - 100]) for r in allowed}
        assert [r for r, _ in hits] == sorted(scores, key=lambda r: -scores[r])[:10]
    monkeypatch.setattr(dense_module, "HNSW_SLOT_US", 0)      # HNSW restricted to the rows
    monkeypatch.setattr(DenseIndex, "_flat_search", lambda *a: pytest.fail("fell back to the exact scan"))
    walked = [index.search_among(q, rows, 10) for q in queries]
    assert all(len(hits) == 10 and {r for r, _ in hits} <= allowed for hits in walked)
    recall = np.mean([len({r for r, _ in w} & {r for r, _ in e}) / 10 for w, e in zip(walked, exact)])
    assert recall >= 0.95, recall
    assert index.search_among(queries[0], np.array([110, 99999, -1]), 5) == []


def test_a_repeated_filter_reuses_its_selector_until_the_next_write(data) -> None:
    base, queries = data
    index = _hnsw("fp16", base)
    rows = np.arange(100, 100 + len(base), 10)
    rows.flags.writeable = False  # as the store's cached filter rows are
    first = index._selector(rows)
    assert index._selector(rows)[0] is first[0]  # reused
    scratch = rows.copy()  # a writeable array could change in place: never reused
    assert index._selector(scratch)[0] is not index._selector(scratch)[0]
    best = index.search_among(queries[0], rows, 1)[0][0]
    index.remove([best])  # a write drops the cache, so the removed row cannot come back
    assert index._selector(rows)[0] is not first[0]
    assert best not in {r for r, _ in index.search_among(queries[0], rows, 10)}
    index.add([best], base[best - 100:best - 99])
    assert index.search_among(queries[0], rows, 1)[0][0] == best


def test_the_filter_cost_model_prices_both_paths_as_measured() -> None:
    """At 1M vectors a 40k-row filter (4 %, a kind) took 10 ms by the exact scan and 3.5 ms by
    HNSW at beam 2,048; at 100k a 6.5k-row one takes 0.4 ms by the scan, a walk several."""
    from apex_models.runtime.dense import FILTER_BEAM_FACTOR, HNSW_SLOT_US, exact_scan_us

    def walk_us(rows: int, held: int, fetch: int = 50) -> float:
        return HNSW_SLOT_US * FILTER_BEAM_FACTOR * fetch * held / rows

    assert exact_scan_us(40_000, 1_000_000) == pytest.approx(9400, rel=0.01)
    assert exact_scan_us(6_500, 100_000) == pytest.approx(400, rel=0.01)
    assert walk_us(40_000, 1_000_000) < exact_scan_us(40_000, 1_000_000)
    assert walk_us(6_500, 100_000) > exact_scan_us(6_500, 100_000)
    assert DenseIndex(DIM).filter_beam(10, 5) is None  # a flat index always scans
    assert exact_scan_us(1_000, 10_000_000) == pytest.approx(exact_scan_us(1_000, 1_000_000) + 0.0014 * 9_000_000)


def test_an_unset_ef_search_widens_with_size(data, monkeypatch: pytest.MonkeyPatch) -> None:
    import apex_models.runtime.dense as dense_module

    base, queries = data
    index = DenseIndex(DIM, "hnsw", hnsw_m=16, ef_construction=80)  # ef_search None: by size
    index.add(list(range(len(base))), base)
    assert index.base_ef() == dense_module.AUTO_EF
    monkeypatch.setattr(dense_module, "AUTO_EF_LARGE_FROM", len(base))
    assert index.base_ef() == dense_module.AUTO_EF_LARGE
    index.search(queries[0], 10)
    assert index._index.hnsw.efSearch == dense_module.AUTO_EF_LARGE
    assert DenseIndex(DIM, "hnsw", ef_search=40).base_ef() == 40  # a configured beam is kept
