"""`apex`: verify model bundles, keep a local semantic memory, evaluate bundles.

Importing this module stays light (typer and rich only): the runtime (ONNX Runtime,
FAISS) loads inside the commands that need it, and nothing here imports torch.
Results go to stdout as JSON; errors are one line on stderr with exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from apex_models.cli_support import print_json, user_errors
from apex_models.evaluation.cli import eval_app

app = typer.Typer(
    help="apex: small developer-specific models and the memory runtime that ships them.\n\n"
         "bundle: verify an exported model bundle. memory: add to, search and forget in a local "
         "encrypted memory store. eval: score a bundle on a BEIR-layout benchmark. serve: run the "
         "cloud memory service. sync: what the hybrid runtime has queued, blocked or failing "
         "on its way to a team's cloud.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bundle_app = typer.Typer(help="Inspect and verify model bundles.", no_args_is_help=True)
memory_app = typer.Typer(help="A local, encrypted memory store (SQLite + FAISS + BM25) embedded with a bundle. "
                              "The passphrase comes from $APEX_MEMORY_PASSPHRASE or --passphrase-env VAR.",
                         no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")
app.add_typer(memory_app, name="memory")
app.add_typer(eval_app, name="eval")
sync_app = typer.Typer(help="The hybrid runtime's sync with a team's cloud: what is queued, blocked or failing.",
                       no_args_is_help=True)
app.add_typer(sync_app, name="sync")

StoreOpt = Annotated[Path, typer.Option("--store", help="Store folder.", file_okay=False)]
BundleOpt = Annotated[Path, typer.Option("--bundle", help="Bundle folder (has manifest.json).")]
PrecisionOpt = Annotated[str | None, typer.Option(help="fp32 or int8; default: the manifest's choice.")]


def bundle_summary(bundle: Any) -> dict[str, Any]:
    """What `apex bundle verify` prints: identity, models, precisions and file totals."""
    m = bundle.manifest
    return {
        "bundle": str(bundle.root),
        "verified": True,
        "schema_version": m.schema_version,
        "bundle_version": m.bundle_version,
        "created_at": m.created_at,
        "git_commit": m.git_commit,
        "profile": m.profile,
        "files": len(m.files),
        "bytes": sum(f.bytes for f in m.files.values()),
        "models": {
            name: {"task": s.task, "base_model": s.base_model,
                   **({"dimension": s.dimension} if s.task == "embedding" else {}),
                   **({"labels": s.labels} if hasattr(s, "labels") else {}),
                   "precisions": sorted(s.onnx), "default_precision": s.default_precision}
            for name, s in m.models.items()
        },
    }


@bundle_app.command("verify")
def bundle_verify(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle folder.")],
    public_key: Annotated[Path | None, typer.Option(help="Ed25519 public key (PEM): also require a valid "
                                                         "signature by its private key.")] = None,
) -> None:
    """Check every file against manifest.json's sha256 (and the signature) and print a JSON summary."""
    with user_errors():
        from apex_models.runtime.bundle import load_bundle

        summary = bundle_summary(load_bundle(bundle_dir, verify=True, public_key=public_key))
        print_json(summary | {"signature_verified": public_key is not None})


@bundle_app.command("keygen")
def bundle_keygen(out_dir: Annotated[Path, typer.Argument(help="Folder for bundle-signing.key/.pub.")]) -> None:
    """Create an Ed25519 key pair for signing bundles (the private key is written mode 0600)."""
    with user_errors():
        from apex_models.export.signing import generate_keypair

        private, public = generate_keypair(out_dir)
        print_json({"private_key": str(private), "public_key": str(public)})


@bundle_app.command("sign")
def bundle_sign(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle folder.")],
    private_key: Annotated[Path, typer.Option(help="Ed25519 private key (PEM) from `apex bundle keygen`.")],
) -> None:
    """Verify the bundle's checksums, then write manifest.sig, its ed25519 signature."""
    with user_errors():
        from apex_models.export.signing import sign_bundle
        from apex_models.runtime.bundle import load_bundle

        load_bundle(bundle_dir, verify=True)
        print_json({"signature": str(sign_bundle(bundle_dir, private_key))})


PassphraseEnvOpt = Annotated[str, typer.Option(
    "--passphrase-env", help="Name of the environment variable that holds the store's passphrase "
                             "(never pass a passphrase itself on the command line).")]
DEFAULT_PASSPHRASE_ENV = "APEX_MEMORY_PASSPHRASE"
KeyringOpt = Annotated[bool, typer.Option(
    "--keyring", help="Take the store's key from the OS keyring (service 'apex-memory', made when the store "
                      "is created) instead of a passphrase.")]


def _passphrase(variable: str) -> str:
    """The passphrase from the environment: arguments end up in shell history and `ps`."""
    import os

    from apex_models.runtime.store import StoreError

    value = os.environ.get(variable, "")
    if not value:
        raise StoreError(f"no passphrase: set {variable} (or name another variable with --passphrase-env)")
    return value


def _bundle_model(loaded: Any, name: str) -> Any:
    """The bundle's ranker or intent model, or a clear error when this bundle has none."""
    from apex_models.runtime.store import StoreError

    factory = getattr(loaded, name, None)
    if not callable(factory):
        raise StoreError(f"this runtime's bundles have no {name}() yet; search without --{name.replace('ranker', 'rerank')}")
    try:
        return factory()
    except Exception as exc:  # e.g. a bundle built without that model
        raise StoreError(f"the bundle has no usable {name}: {exc}") from None


def _open_store(store: Path, bundle: Path, precision: str | None, passphrase_env: str, keyring: bool,
                create: bool = False, rerank: bool = False, intent: bool = False, planner: bool = False):
    """The store with its key from the OS keyring (--keyring) or the passphrase variable, and
    the bundle's ranker / intent model when a search asks for them, and its planner (when it
    ships one) for plan."""
    from apex_models.runtime import MemoryStore, load_bundle
    from apex_models.runtime.keys import DEFAULT_SERVICE
    from apex_models.runtime.store import DB_NAME, StoreError

    passphrase = None if keyring else _passphrase(passphrase_env)
    if not create and not (store / DB_NAME).is_file():
        raise StoreError(f"no memory store at {store}")
    loaded = load_bundle(bundle)
    return MemoryStore.open(store, loaded.embedder(precision=precision), passphrase=passphrase,
                            keyring_service=DEFAULT_SERVICE if keyring else None, create=create,
                            reranker=_bundle_model(loaded, "ranker") if rerank else None,
                            intent=_bundle_model(loaded, "intent") if intent else None,
                            planner=loaded.planner() if planner and loaded.has("planner") else None)


def _memory_json(memory: Any) -> dict[str, Any]:
    return {"id": memory.id, "text": memory.text, "kind": memory.kind, "tags": memory.tags,
            "source": memory.source, "created_at": memory.created_at, "updated_at": memory.updated_at,
            "relations": [{"relation": r.relation, "id": r.other_id, "direction": r.direction}
                          for r in memory.relations]}


def _parse_relation(value: str) -> tuple[str, str]:
    relation, sep, target = value.partition(":")
    if not sep or not relation or not target:
        raise ValueError(f"--relation takes RELATION:ID, got {value!r}")
    return relation, target


@memory_app.command("add")
def memory_add(
    text: Annotated[str, typer.Argument(help="The memory's text.")],
    store: StoreOpt,
    bundle: BundleOpt,
    kind: Annotated[str, typer.Option(help="A category: note, code, decision, error, ...")] = "note",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag; repeat for several.")] = None,
    source: Annotated[str | None, typer.Option(help="Where it came from (file path, URL...).")] = None,
    relation: Annotated[list[str] | None, typer.Option(
        "--relation", help="An edge to an existing memory, RELATION:ID (e.g. fixes:3f2a...); repeatable.")] = None,
    passphrase_env: PassphraseEnvOpt = DEFAULT_PASSPHRASE_ENV, keyring: KeyringOpt = False,
    precision: PrecisionOpt = None,
) -> None:
    """Embed TEXT and store it encrypted (the store is created if missing); prints {"id": ...}."""
    with user_errors():
        relations = [_parse_relation(r) for r in relation or []]
        with _open_store(store, bundle, precision, passphrase_env, keyring, create=True) as memories:
            memory_id = memories.add(text, kind=kind, tags=tag or [], source=source, relations=relations)
        print_json({"id": memory_id})


@memory_app.command("search")
def memory_search(
    query: Annotated[str, typer.Argument(help="What to look for, in natural language or code.")],
    store: StoreOpt,
    bundle: BundleOpt,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many hits.")] = 10,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Only this kind; repeat for several.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only memories with this tag; repeat: all.")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only memories created at or after this ISO time (without a zone: UTC).")] = None,
    until: Annotated[str | None, typer.Option(
        help="Only memories created before this ISO time (without a zone: UTC).")] = None,
    source_prefix: Annotated[str | None, typer.Option(help="Only memories whose source starts with this.")] = None,
    mode: Annotated[str, typer.Option(help="hybrid (dense + keyword), dense or keyword.")] = "hybrid",
    rerank: Annotated[int, typer.Option(
        "--rerank", min=0, help="Re-score the fused top N with the bundle's ranker (0: off; 20 is typical).")] = 0,
    intent: Annotated[bool, typer.Option(
        "--intent", help="Classify the query with the bundle's intent model and favour the kinds it suggests "
                         "(debug_error: error memories, code_search: code...).")] = False,
    passphrase_env: PassphraseEnvOpt = DEFAULT_PASSPHRASE_ENV, keyring: KeyringOpt = False,
    precision: PrecisionOpt = None,
) -> None:
    """Print the k best memories as a JSON list (best first), each with why it matched.

    Why: the retrievers' ranks, the matched terms, the intent and its boost, the
    re-ranker's rank and score."""
    import dataclasses

    with user_errors():
        with _open_store(store, bundle, precision, passphrase_env, keyring, rerank=rerank > 0,
                         intent=intent) as memories:
            hits = memories.search(query, k=k, kind=kind or None, tags=tag, since=since, until=until,
                                   source_prefix=source_prefix, mode=mode, rerank=rerank or False,
                                   intent=None if intent else False)
        print_json([{"id": h.id, "score": round(h.score, 6), "text": h.text, "kind": h.kind, "tags": h.tags,
                     "source": h.source, "created_at": h.created_at,
                     "why": {**dataclasses.asdict(h.why), "retrievers": h.why.retrievers}} for h in hits])


@memory_app.command("plan")
def memory_plan(
    goal: Annotated[str, typer.Argument(help="What you want to get done.")],
    store: StoreOpt,
    bundle: BundleOpt,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many relevant memories to return as context.")] = 5,
    min_similarity: Annotated[float, typer.Option(
        help="The closest 'procedure' memory gives the steps only when its cosine to the goal reaches this.")] = 0.4,
    passphrase_env: PassphraseEnvOpt = DEFAULT_PASSPHRASE_ENV, keyring: KeyringOpt = False,
    precision: PrecisionOpt = None,
) -> None:
    """Print steps for GOAL and the memories that bear on it as JSON.

    When the bundle ships a planner (only once it beat retrieval), it
    writes the steps with those memories as context. Otherwise they come
    from the closest memory of kind 'procedure' (add one with --kind
    procedure: a title line, then one step per line); with none close
    enough, steps is empty and source is null."""
    with user_errors():
        with _open_store(store, bundle, precision, passphrase_env, keyring, planner=True) as memories:
            result = memories.plan(goal, k=k, min_similarity=min_similarity)
        print_json({"goal": result.goal, "steps": result.steps, "source": result.source or None,
                    "similarity": None if result.similarity is None else round(result.similarity, 4),
                    "context": [{"id": h.id, "score": round(h.score, 6), "text": h.text, "kind": h.kind}
                                for h in result.context]})


@memory_app.command("forget")
def memory_forget(
    memory_ids: Annotated[list[str], typer.Argument(help="Ids of the memories to erase.")],
    store: StoreOpt,
    bundle: BundleOpt,
    passphrase_env: PassphraseEnvOpt = DEFAULT_PASSPHRASE_ENV, keyring: KeyringOpt = False,
    precision: PrecisionOpt = None,
) -> None:
    """Erase memories with no trace on disk (rows zeroed, WAL truncated); prints what was erased."""
    from apex_models.runtime.store import StoreError

    with user_errors():
        with _open_store(store, bundle, precision, passphrase_env, keyring) as memories:
            done = {memory_id: memories.forget(memory_id) for memory_id in memory_ids}
        missing = [i for i, ok in done.items() if not ok]
        print_json({"forgotten": [i for i, ok in done.items() if ok], "not_found": missing})
        if missing:
            raise StoreError(f"no memory {', '.join(missing)} in {store}")


@memory_app.command("index")
def memory_index(
    repository: Annotated[Path, typer.Argument(help="Repository folder to index (honours .gitignore).",
                                               file_okay=False)],
    store: StoreOpt,
    bundle: BundleOpt,
    passphrase_env: PassphraseEnvOpt = DEFAULT_PASSPHRASE_ENV, keyring: KeyringOpt = False,
    precision: PrecisionOpt = None,
) -> None:
    """Index a repository's code and docs as memories; prints a JSON report.

    One memory per definition or paragraph group; re-running updates only the files
    that changed."""
    with user_errors():
        from apex_models.runtime.indexer import index_repository

        with _open_store(store, bundle, precision, passphrase_env, keyring, create=True) as memories:
            report = index_repository(memories, repository, progress=True)
        print_json({"repository": str(repository), **report.as_dict()})


@memory_app.command("stats")
def memory_stats(store: StoreOpt, bundle: BundleOpt, passphrase_env: PassphraseEnvOpt = DEFAULT_PASSPHRASE_ENV,
                 keyring: KeyringOpt = False, precision: PrecisionOpt = None) -> None:
    """Print counts per kind, index state and the embedder in use as JSON."""
    with user_errors():
        with _open_store(store, bundle, precision, passphrase_env, keyring) as memories:
            print_json({"store": str(store), **memories.stats()})


@memory_app.command("export")
def memory_export(
    store: StoreOpt,
    bundle: BundleOpt,
    out: Annotated[Path | None, typer.Option(help="Write to this file (mode 600) instead of stdout.")] = None,
    passphrase_env: PassphraseEnvOpt = DEFAULT_PASSPHRASE_ENV, keyring: KeyringOpt = False,
    precision: PrecisionOpt = None,
) -> None:
    """Print every memory, DECRYPTED, as a JSON list (oldest first, with relations). Handle with care."""
    import json
    import os

    with user_errors():
        with _open_store(store, bundle, precision, passphrase_env, keyring) as memories:
            data = [_memory_json(memories.get(m.id) or m) for m in memories.memories()]
        if out is None:
            print_json(data)
            return
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print_json({"exported": len(data), "out": str(out)})


@sync_app.command("status")
def sync_status(store: StoreOpt) -> None:
    """Print, as JSON, what waits to be pushed and what the last check before sending blocked.

    Also: when the next retry is due, the last errors, and how many memories are routed
    local or shared. Needs no passphrase: the outbox keeps counts and times in clear,
    never memory text."""
    from apex_models.hybrid.outbox import SYNC_DB, Outbox
    from apex_models.runtime.store import StoreError

    with user_errors():
        if not (store / SYNC_DB).is_file():
            raise StoreError(f"no hybrid sync state at {store} (a store opened with HybridMemory has {SYNC_DB})")
        outbox = Outbox(store, None, None)
        try:
            print_json({"store": str(store), **outbox.status()})
        finally:
            outbox.close()


@app.command("serve")
def serve_command(
    bundle: Annotated[Path | None, typer.Option(help="Bundle whose embedder the server uses "
                                                     "(default: $APEX_BUNDLE).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; the default is loopback only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    data_dir: Annotated[Path | None, typer.Option(help="Folder of the private PostgreSQL used when "
                                                       "$APEX_DATABASE_URL is unset (default: .apex-cloud).")] = None,
    precision: PrecisionOpt = None,
) -> None:
    """Run the cloud memory service (HTTP API, OpenAPI at /docs).

    Production sets $APEX_DATABASE_URL to its PostgreSQL. Without it, a private PostgreSQL
    runs in --data-dir for as long as the server (initdb on first start; the server
    binaries must be installed) and the first start writes an operator token to
    <data-dir>/operator-token. Every other setting is an APEX_* variable (serving/README.md).
    """
    with user_errors():
        from apex_models.cloud.postgres import PostgresError
        from apex_models.cloud.server import serve
        from apex_models.cloud.settings import Settings

        overrides = {k: v for k, v in {"bundle": bundle, "data_dir": data_dir, "precision": precision}.items()
                     if v is not None}
        settings = Settings(**overrides)
        if settings.bundle is None:
            raise ValueError("no bundle: pass --bundle or set APEX_BUNDLE")
        try:
            serve(settings, host=host, port=port)
        except PostgresError as exc:
            raise ValueError(str(exc)) from None


if __name__ == "__main__":
    app()
