"""The hybrid runtime: one local-first memory whose shareable part syncs to a team's cloud.

Every write is classified (detectors + the sensitivity model) and routed by the policy
(hybrid/policy.py) before anything is queued: a memory with a secret stays on this
machine, or goes out redacted when the policy says so. Shared writes go through the
durable outbox (hybrid/outbox.py) and reach the cloud when it is reachable; the team's
memories are pulled into a local cache store (encrypted with the same key) by cursor.
Search asks the local store, the team cache and the cloud in parallel, waits for the
cloud only as long as the time budget allows, and fuses what came back.

Write order, and why nothing is lost on a crash: the memory is committed to the local
store first, then its route and outbox entry in one transaction, then the write is
acknowledged. A crash between the two commits leaves a memory without a route, which
`reconcile()` (run on every open) routes and queues again; a crash after a local delete
leaves a route without a memory, which it turns into a tombstone.

Conflict rule (documented in serving/README.md): the cloud orders changes by its own
sequence and the last change it accepted wins; a device's pull applies them in that
order, so all devices converge on the server's order.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol

import numpy as np

from apex_models.hybrid.outbox import Outbox, Pending
from apex_models.hybrid.policy import Route, RoutingPolicy, SensitivityClassifier, decide, redact
from apex_models.hybrid.sensitivity import DetectorClassifier
from apex_models.runtime.store import (Embedder, MemoryStore, StoreConfig, StoreError, as_embedder,
                                      query_vector_for, reranker_parts, with_first_stage)
from apex_models.sensitivity.detectors import PII_KINDS, find_sensitive

if TYPE_CHECKING:
    from apex_models.runtime.bundle import Bundle

TEAM_CACHE = "team-cache"


class CloudPort(Protocol):
    """What the hybrid runtime needs from the cloud service (apex_models.cloud.client)."""

    def push(self, changes: list[dict[str, Any]]) -> list[str]:
        """Upsert/delete by client id; returns the ids the server has durably applied."""
        ...

    def pull(self, cursor: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Changes after `cursor` in server order, and the cursor to ask from next."""
        ...

    def search(self, query: str, k: int, timeout_s: float) -> list[dict[str, Any]]:
        """The team's top-k for a query (id, text, kind, tags, source, score)."""
        ...


@dataclass(frozen=True)
class HybridHit:
    id: str
    score: float
    text: str
    kind: str
    tags: list[str] = field(default_factory=list)
    source: str | None = None
    origins: list[str] = field(default_factory=list)   # local / team / cloud


@dataclass(frozen=True)
class HybridResult:
    hits: list[HybridHit]
    partial: bool                  # the cloud did not answer within the budget (or failed)
    cloud: str                     # ok / timeout / error: ... / offline
    elapsed_ms: float


@dataclass(frozen=True)
class SyncReport:
    pushed: int = 0
    blocked: int = 0
    failed: int = 0
    pulled: int = 0
    error: str | None = None


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _content_key(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


class HybridMemory:
    """Local store + team cache + outbox + cloud client, behind the store's familiar calls.

    Open with `HybridMemory.open(path, embedder, cloud, passphrase=...)`; `cloud` may be
    None (offline: everything is queued). Thread-safe for one process; other processes
    may use the same folder (the stores and the outbox take their own locks).
    """

    def __init__(self, store: MemoryStore, cache: MemoryStore, outbox: Outbox, cloud: CloudPort | None,
                 classifier: SensitivityClassifier, policy: RoutingPolicy, reranker: Any = None) -> None:
        self.store, self.cache, self.outbox, self.cloud = store, cache, outbox, cloud
        self.classifier, self.policy, self.reranker = classifier, policy, reranker
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="apex-hybrid")
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    @classmethod
    def open(cls, path: str | Path, embedder: "Embedder | Bundle", cloud: CloudPort | None = None, *,
             passphrase: str | None = None, key: bytes | None = None,
             classifier: SensitivityClassifier | None = None, policy: RoutingPolicy | None = None,
             reranker: Any = None, config: StoreConfig | None = None) -> "HybridMemory":
        """`embedder`: a loaded bundle or an embedder, as for `MemoryStore.open` (one instance
        serves the local store and the team cache)."""
        embedder = as_embedder(embedder)
        path = Path(path).expanduser()
        store = MemoryStore.open(path, embedder, passphrase=passphrase, key=key, config=config)
        try:
            cache = MemoryStore.open(path / TEAM_CACHE, embedder, passphrase=passphrase, key=key, config=config)
        except BaseException:
            store.close()
            raise
        outbox = Outbox(path, store.seal_blob, store.open_blob)
        memory = cls(store, cache, outbox, cloud, classifier or DetectorClassifier(),
                     policy or RoutingPolicy(), reranker)
        memory.reconcile()
        return memory

    def close(self) -> None:
        self.stop_sync()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.outbox.close()
        self.cache.close()
        self.store.close()

    def __enter__(self) -> "HybridMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------------
    def add(self, text: str, kind: str = "note", tags: Iterable[str] = (), source: str | None = None,
            share: bool | None = None) -> str:
        """Store a memory locally and, when its route allows, queue it for the team. Returns its id."""
        return self.add_many([{"text": text, "kind": kind, "tags": list(tags), "source": source,
                               "share": share}])[0]

    def add_many(self, items: list[dict[str, Any]]) -> list[str]:
        routes = [decide(self.policy, self.classifier.classify(i["text"]), i.get("source"), i.get("share"))
                  for i in items]
        ids = self.store.add_many([{k: v for k, v in i.items() if k != "share"} for i in items])
        self.outbox.record_many([self._entry(memory_id, route) for memory_id, route in zip(ids, routes)])
        return ids

    def update(self, memory_id: str, text: str | None = None, kind: str | None = None,
               tags: Iterable[str] | None = None, source: str | None = None) -> Route | None:
        """Change a memory and route its new version again (a secret added later stops sharing)."""
        memory = self.store.update(memory_id, text=text, kind=kind, tags=tags, source=source)
        if memory is None:
            return None
        previous = self.outbox.route(memory_id)
        route = decide(self.policy, self.classifier.classify(memory.text), memory.source)
        self._record(memory_id, route, was_shared=bool(previous and previous["destination"] == "shared"))
        return route

    def delete(self, memory_id: str) -> bool:
        """Delete locally; a shared memory also gets a tombstone for the cloud."""
        found = self.store.delete(memory_id)
        self.outbox.record_delete(memory_id)
        return found

    def forget(self, memory_id: str) -> bool:
        found = self.store.forget(memory_id)
        self.outbox.record_delete(memory_id)
        return found

    def _record(self, memory_id: str, route: Route, was_shared: bool = False) -> None:
        self.outbox.record_many([self._entry(memory_id, route, was_shared)])

    def _entry(self, memory_id: str, route: Route, was_shared: bool = False) -> tuple:
        """(id, version, route, payload, op) for the outbox: what the cloud gets, if anything."""
        memory = self.store.get(memory_id)
        if memory is None:
            raise StoreError(f"memory {memory_id} vanished while being routed")
        payload: dict[str, Any] | None = None
        op = "upsert"
        if route.shared:
            text = memory.text
            if route.sharing == "redacted":
                text = redact(text, self.classifier.classify(text).spans)
            payload = {"id": memory_id, "text": text, "kind": memory.kind, "tags": memory.tags,
                       "source": memory.source, "updated_at": memory.updated_at, "redacted": route.sharing == "redacted"}
        elif was_shared:
            op = "delete"   # it was shared before and must not stay shared now
            payload = {"updated_at": memory.updated_at}
        return (memory_id, memory.updated_at, route.to_json(), payload, op)

    def decision(self, memory_id: str) -> Route | None:
        """Where this memory was routed and why (None for an unknown id)."""
        data = self.outbox.route(memory_id)
        return None if data is None else Route.from_json(data)

    def reconcile(self) -> dict[str, int]:
        """Repair what a crash between the store's commit and the outbox's left behind."""
        versions = self.outbox.versions()
        rerouted = tombstoned = 0
        current = {m.id: m for m in self.store.memories()}
        for memory_id, memory in current.items():
            seen = versions.get(memory_id)
            if seen is None or seen[1] != memory.updated_at:
                route = decide(self.policy, self.classifier.classify(memory.text), memory.source)
                self._record(memory_id, route, was_shared=bool(seen and seen[0] == "shared"))
                rerouted += 1
        for memory_id in versions.keys() - current.keys():
            self.outbox.record_delete(memory_id)
            tombstoned += 1
        return {"rerouted": rerouted, "tombstoned": tombstoned}

    # -- sync --------------------------------------------------------------------------------
    def _final_gate(self, item: Pending) -> str | None:
        """The last look before bytes leave: any secret the detectors see blocks the send."""
        if item.op != "upsert":
            return None
        found = [f.kind for f in find_sensitive(item.payload["text"]) if f.kind not in PII_KINDS]
        return f"final check found {', '.join(sorted(set(found)))}: not sent" if found else None

    def push(self, limit: int = 256) -> SyncReport:
        """Send what is due in the outbox once; failures back off, nothing is dropped."""
        if self.cloud is None:
            return SyncReport(error="offline: no cloud configured")
        with self._sync_lock:
            due = self.outbox.due(limit)
            if not due:
                return SyncReport()
            send, blocked = [], 0
            for item in due:
                reason = self._final_gate(item)
                if reason:
                    self.outbox.block(item.seq, reason)
                    blocked += 1
                    continue
                if item.op == "upsert" and self.store.get(item.memory_id) is None:
                    self.outbox.ack([item.seq])   # deleted since: its tombstone is queued after it
                    continue
                send.append(item)
            if not send:
                return SyncReport(blocked=blocked)
            changes = [{**{k: v for k, v in i.payload.items() if k != "id"}, "id": i.memory_id, "op": i.op}
                       for i in send]
            try:
                applied = set(self.cloud.push(changes))
            except Exception as exc:  # any transport or server failure: back off and keep it
                self.outbox.retry_later([i.seq for i in send], f"{type(exc).__name__}: {exc}")
                return SyncReport(blocked=blocked, failed=len(send), error=str(exc))
            done = [i.seq for i in send if i.memory_id in applied]
            missing = [i.seq for i in send if i.memory_id not in applied]
            self.outbox.ack(done)
            if missing:
                self.outbox.retry_later(missing, "server did not confirm")
            self.outbox.set_state("last_push", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            return SyncReport(pushed=len(done), blocked=blocked, failed=len(missing))

    def pull(self, limit: int = 500) -> SyncReport:
        """Apply the team's changes since the stored cursor to the local cache, in server order."""
        if self.cloud is None:
            return SyncReport(error="offline: no cloud configured")
        with self._sync_lock:
            cursor = int(self.outbox.get_state("pull_cursor", "0") or 0)
            total = 0
            while True:
                try:
                    changes, next_cursor = self.cloud.pull(cursor, limit)
                except Exception as exc:
                    return SyncReport(pulled=total, error=f"{type(exc).__name__}: {exc}")
                self._apply(changes)
                total += len(changes)
                if next_cursor == cursor or not changes:
                    break
                cursor = next_cursor
                self.outbox.set_state("pull_cursor", str(cursor))
            self.outbox.set_state("pull_cursor", str(cursor))
            self.outbox.set_state("last_pull", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            return SyncReport(pulled=total)

    def _apply(self, changes: list[dict[str, Any]]) -> None:
        """The team's changes, in server order: into the cache, or onto this device's own memory.

        A memory this device wrote and shared in full takes a newer team change (an edit or a
        delete by a teammate); one it shared redacted never does: the local original holds
        what the redacted copy hides, so a team delete only withdraws the share.
        """
        for change in changes:
            memory_id, deleting = change["id"], change.get("op") == "delete"
            own = self.store.get(memory_id)
            if own is not None:
                self._apply_to_own(own, change, deleting)
                continue
            if deleting:
                self.cache.delete(memory_id)
            elif self.cache.get(memory_id) is None:
                self.cache.add_many([{"id": memory_id, "text": change["text"], "kind": change.get("kind") or "note",
                                      "tags": change.get("tags") or [], "source": change.get("source")}])
            else:
                self.cache.update(memory_id, text=change["text"], kind=change.get("kind"),
                                  tags=change.get("tags"), source=change.get("source"))

    def _apply_to_own(self, own: Any, change: dict[str, Any], deleting: bool) -> None:
        route = self.outbox.route(own.id)
        if route is None or route["destination"] != "shared":
            return
        if route["sharing"] != "full":
            if deleting:
                withdrawn = {**route, "destination": "local", "sharing": None,
                             "reason": "the team deleted its redacted copy; the original stays local"}
                self.outbox.record(own.id, own.updated_at, withdrawn, None)
            return
        if _timestamp(change["updated_at"]) <= _timestamp(own.updated_at):
            return   # ours is newer: our queued change wins at the server too
        if deleting:
            self.store.delete(own.id)
            self.outbox.forget(own.id)
            return
        updated = self.store.update(own.id, text=change["text"], kind=change.get("kind"),
                                    tags=change.get("tags"), source=change.get("source"))
        if updated is not None:   # a new version, already in the cloud: record it, queue nothing
            self.outbox.record(own.id, updated.updated_at, route, None)

    def sync(self) -> SyncReport:
        a, b = self.push(), self.pull()
        return SyncReport(pushed=a.pushed, blocked=a.blocked, failed=a.failed, pulled=b.pulled,
                          error=a.error or b.error)

    def start_sync(self, interval_s: float = 5.0) -> None:
        """Push and pull in a background thread until `stop_sync` (or close)."""
        if self._worker is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.sync()
                except StoreError:
                    pass   # a busy store: the next round tries again

        self._worker = threading.Thread(target=loop, name="apex-hybrid-sync", daemon=True)
        self._worker.start()

    def stop_sync(self) -> None:
        if self._worker is not None:
            self._stop.set()
            self._worker.join(timeout=30)
            self._worker = None

    def status(self) -> dict[str, Any]:
        """Pending and blocked operations, retry times and the last errors (no memory text)."""
        return {**self.outbox.status(), "cloud": "configured" if self.cloud is not None else "offline",
                "team_cache_memories": len(self.cache.memories())}

    # -- search ------------------------------------------------------------------------------
    def search(self, query: str, k: int = 10, budget_ms: float = 150.0, rerank: bool = True,
               **filters: Any) -> HybridResult:
        """Local, team cache and cloud in parallel; the cloud only within `budget_ms`.

        Results are fused by reciprocal rank, de-duplicated by id and by normalised text
        (a memory synced both ways appears once), and re-ranked locally when a ranker is set.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty")   # before the cloud is asked
        start = time.perf_counter()
        future = None
        if self.cloud is not None:
            future = self._pool.submit(self.cloud.search, query, 2 * k, budget_ms / 1000)
        lists: list[list[HybridHit]] = []
        vector = None if filters.get("mode") == "keyword" else self.store.embedder.encode_queries([query])[0]
        for origin, store in (("local", self.store), ("team", self.cache)):   # one embedder, one query vector
            lists.append([HybridHit(h.id, h.score, h.text, h.kind, h.tags, h.source, [origin])
                          for h in store.search(query, 2 * k, query_vector=vector, **filters)])
        cloud_state = "offline"
        if future is not None:
            remaining = budget_ms / 1000 - (time.perf_counter() - start)
            try:
                rows = future.result(timeout=max(0.0, remaining))
                lists.append([HybridHit(r["id"], float(r.get("score", 0.0)), r["text"], r.get("kind", "note"),
                                        list(r.get("tags") or []), r.get("source"), ["cloud"]) for r in rows])
                cloud_state = "ok"
            except FutureTimeout:
                cloud_state = "timeout"
            except Exception as exc:  # the client's own deadline (httpx ReadTimeout ...) is a timeout too
                timed_out = isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__
                cloud_state = "timeout" if timed_out else f"error: {type(exc).__name__}: {exc}"[:200]
        hits = _fuse(lists, 60)
        if rerank and self.reranker is not None and hits:
            head = hits[:max(k, 20)]
            texts = [h.text for h in head]
            score, scale = reranker_parts(self.reranker)
            scores = score(query, texts)
            if scale:  # a residual ranker adds each hit's cosine to the query
                scores = with_first_stage(scores, scale, self._head_vectors(head),
                                          query_vector_for(self.store.embedder, query, vector))
            hits = [HybridHit(h.id, float(s), h.text, h.kind, h.tags, h.source, h.origins)
                    for h, s in sorted(zip(head, scores), key=lambda p: -p[1])] + hits[len(head):]
        return HybridResult(hits[:k], partial=cloud_state not in ("ok", "offline"), cloud=cloud_state,
                            elapsed_ms=(time.perf_counter() - start) * 1000)

    def _head_vectors(self, head: list[HybridHit]) -> np.ndarray:
        """Unit vectors of the head's texts: local and team-cache hits from their stores'
        in-memory indexes (the same embedder wrote them); only cloud hits, which come as
        text, are embedded here."""
        vectors: list[np.ndarray | None] = [None] * len(head)
        for origin, store in (("local", self.store), ("team", self.cache)):
            rows = [i for i, hit in enumerate(head) if vectors[i] is None and origin in hit.origins]
            for i, vector in zip(rows, store.indexed_vectors([head[i].id for i in rows])):
                vectors[i] = vector
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            for i, vector in zip(missing, self.store.embedder.encode_documents([head[i].text for i in missing])):
                vectors[i] = vector
        return np.stack(vectors)


def _fuse(lists: list[list[HybridHit]], rrf_k: int) -> list[HybridHit]:
    """RRF over the lists; one hit per id and per normalised text, its origins merged."""
    score: dict[str, float] = {}
    first: dict[str, HybridHit] = {}
    origins: dict[str, list[str]] = {}
    alias: dict[str, str] = {}            # content key -> the id that represents it
    for ranked in lists:
        for rank, hit in enumerate(ranked, start=1):
            key = alias.setdefault(_content_key(hit.text), hit.id) if hit.id not in first else hit.id
            score[key] = score.get(key, 0.0) + 1.0 / (rrf_k + rank)
            first.setdefault(key, hit)
            origins.setdefault(key, [])
            for o in hit.origins:
                if o not in origins[key]:
                    origins[key].append(o)
    ordered = sorted(score, key=lambda i: -score[i])
    return [HybridHit(i, score[i], first[i].text, first[i].kind, first[i].tags, first[i].source, origins[i])
            for i in ordered]
