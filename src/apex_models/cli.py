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
         "bundle: verify an exported model bundle. memory: add to and search a local semantic "
         "memory store. eval: score a bundle on a BEIR-layout benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bundle_app = typer.Typer(help="Inspect and verify model bundles.", no_args_is_help=True)
memory_app = typer.Typer(help="A local semantic memory store (SQLite + FAISS) embedded with a bundle.",
                         no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")
app.add_typer(memory_app, name="memory")
app.add_typer(eval_app, name="eval")

StoreOpt = Annotated[Path, typer.Option("--store", help="Store folder (created if missing).", file_okay=False)]
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
            name: {"task": s.task, "base_model": s.base_model, "dimension": s.dimension,
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


def _open_store(store: Path, bundle: Path, precision: str | None):
    from apex_models.runtime import MemoryStore, load_bundle

    return MemoryStore.open(store, load_bundle(bundle).embedder(precision=precision))


@memory_app.command("add")
def memory_add(
    text: Annotated[str, typer.Argument(help="The memory's text.")],
    store: StoreOpt,
    bundle: BundleOpt,
    kind: Annotated[str, typer.Option(help="A category, e.g. note, decision, snippet.")] = "note",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag; repeat for several.")] = None,
    source: Annotated[str | None, typer.Option(help="Where it came from (file, URL...).")] = None,
    precision: PrecisionOpt = None,
) -> None:
    """Embed TEXT and store it; prints {"id": ...}."""
    with user_errors():
        with _open_store(store, bundle, precision) as memories:
            memory_id = memories.add(text, kind=kind, tags=tag or [], source=source)
        print_json({"id": memory_id})


@memory_app.command("search")
def memory_search(
    query: Annotated[str, typer.Argument(help="What to look for, in natural language or code.")],
    store: StoreOpt,
    bundle: BundleOpt,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many hits.")] = 10,
    kind: Annotated[str | None, typer.Option(help="Only memories of this kind.")] = None,
    precision: PrecisionOpt = None,
) -> None:
    """Print the k most similar memories as a JSON list (best first)."""
    with user_errors():
        with _open_store(store, bundle, precision) as memories:
            hits = memories.search(query, k=k, kind=kind)
        print_json([{"id": h.id, "score": round(h.score, 6), "text": h.text, "kind": h.kind,
                      "tags": h.tags, "source": h.source} for h in hits])


@memory_app.command("stats")
def memory_stats(store: StoreOpt, bundle: BundleOpt, precision: PrecisionOpt = None) -> None:
    """Print counts per kind and the embedder in use as JSON."""
    with user_errors():
        with _open_store(store, bundle, precision) as memories:
            print_json({"store": str(store), **memories.stats()})


if __name__ == "__main__":
    app()
