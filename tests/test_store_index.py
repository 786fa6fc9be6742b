"""`apex memory index`: code-aware chunks of a repository, .gitignore honoured, incremental re-index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apex_models.cli import app
from apex_models.runtime import MemoryStore, OnnxEmbedder, load_bundle
from apex_models.runtime.indexer import index_repository, python_chunks, text_chunks

KEY = bytes(range(9, 41))

MODULE = '''"""Billing helpers."""

import decimal

VAT_RATE = decimal.Decimal("0.2")


def add_vat(amount):
    """Price including VAT."""
    return amount * (1 + VAT_RATE)


class InvoiceNumberer:
    """Hands out gap-free invoice numbers per tenant."""

    prefix = "INV"

    def __init__(self, start=1):
        self.next = start

    @staticmethod
    def format_number(n):
        return f"INV-{n:06d}"
'''


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder()


def _repo(root: Path) -> Path:
    (root / "billing").mkdir(parents=True)
    (root / "billing" / "vat.py").write_text(MODULE)
    (root / "README.md").write_text("# Shop\n\nRun `make dev` to start the shop.\n\nInvoices are numbered per tenant.\n")
    (root / ".gitignore").write_text("secrets.txt\nbuild/\n")
    (root / "secrets.txt").write_text("never index this zqxsecret")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("x = 1\n")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "site.py").write_text("y = 2\n")
    return root


def test_python_chunks_follow_definitions() -> None:
    chunks = python_chunks(MODULE)
    starts = {c.text.splitlines()[0]: (c.start, c.end) for c in chunks}
    assert starts["def add_vat(amount):"] == (8, 10)
    assert starts['class InvoiceNumberer:'][0] == 13
    assert starts["def __init__(self, start=1):"] == (18, 19)
    assert starts["@staticmethod"] == (21, 23)  # decorators stay with their method
    assert any("VAT_RATE = " in c.text for c in chunks)  # module-level code is kept too
    assert python_chunks("def broken(:\n    pass\n")[0].text.startswith("def broken")
    long = "\n\n".join(f"paragraph {i} " + "word " * 100 for i in range(10))
    assert all(len(c.text) <= 1500 for c in text_chunks(long)) and len(text_chunks(long)) > 3


def test_index_search_and_reindex(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    repo = _repo(tmp_path / "repo")
    with MemoryStore.open(tmp_path / "store", embedder, key=KEY) as store:
        first = index_repository(store, repo)
        assert first.files_seen == 2 and first.files_indexed == 2 and first.chunks_added >= 6
        sources = {m.source.rsplit(":", 1)[0] for m in store.memories()}  # type: ignore[union-attr]
        assert sources == {"billing/vat.py", "README.md"}
        hit = store.search("function that adds VAT to a price", k=1)[0]
        assert hit.source == "billing/vat.py:8-10" and hit.kind == "code"
        assert store.search("zqxsecret", k=5, mode="keyword") == []

        again = index_repository(store, repo)
        assert again.files_unchanged == 2 and again.chunks_added == 0 and again.chunks_removed == 0

        (repo / "billing" / "vat.py").write_text(MODULE.replace("add_vat", "add_sales_tax"))
        (repo / "README.md").unlink()
        changed = index_repository(store, repo)
        assert changed.files_indexed == 1 and changed.files_removed == 1 and changed.files_unchanged == 0
        assert store.search("add_sales_tax", k=1, mode="keyword")[0].source == "billing/vat.py:8-10"
        assert all("add_vat" not in m.text for m in store.memories())
        assert all(not (m.source or "").startswith("README.md") for m in store.memories())


def test_cli_index(tmp_path: Path, minilm_bundle: Path) -> None:
    repo = _repo(tmp_path / "repo")
    env = {"APEX_MEMORY_PASSPHRASE": "index test"}
    common = ["--store", str(tmp_path / "store"), "--bundle", str(minilm_bundle)]
    result = CliRunner().invoke(app, ["memory", "index", str(repo), *common], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files_indexed"] == 2
    missing = CliRunner().invoke(app, ["memory", "index", str(tmp_path / "nope"), *common], env=env)
    assert missing.exit_code == 1 and missing.stderr.startswith("error: no folder")


INVOICE = '''"""Invoices."""

from billing.vat import add_vat
from .vat import InvoiceNumberer


def total(amount):
    return add_vat(amount)


def next_invoice():
    return InvoiceNumberer().format_number(1)
'''


def _edges(store: MemoryStore, memory_id: str) -> set[tuple[str, str]]:
    """(relation, target source) of a chunk's outgoing edges."""
    memory = store.get(memory_id)
    assert memory is not None
    return {(r.relation, store.get(r.other_id).source) for r in memory.relations  # type: ignore[union-attr]
            if r.direction == "out"}


def test_relations_from_imports_and_calls_survive_a_reindex(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "billing" / "__init__.py").write_text("\"\"\"Billing.\"\"\"\n")
    (repo / "billing" / "invoice.py").write_text(INVOICE)
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as store:
        report = index_repository(store, repo)
        by_source = {m.source: m.id for m in store.memories()}
        expected = {
            "billing/invoice.py:1-4": {("imports", "billing/vat.py:8-10"), ("imports", "billing/vat.py:13-17")},
            "billing/invoice.py:7-8": {("calls", "billing/vat.py:8-10")},
            "billing/invoice.py:11-12": {("calls", "billing/vat.py:13-17"), ("calls", "billing/vat.py:21-23")},
        }
        assert report.relations == 5
        for source, edges in expected.items():
            assert _edges(store, by_source[source]) == edges
        assert _edges(store, by_source["billing/vat.py:8-10"]) == set()
        walked = store.related(by_source["billing/invoice.py:11-12"], depth=1)
        assert {r.memory.source for r in walked} == {"billing/vat.py:13-17", "billing/vat.py:21-23"}

        (repo / "billing" / "vat.py").write_text(MODULE.replace('"""Price including VAT."""', '"""Gross price."""'))
        again = index_repository(store, repo)
        assert again.files_indexed == 1 and again.files_unchanged >= 2 and again.relations == 5
        by_source = {m.source: m.id for m in store.memories()}
        for source, edges in expected.items():  # the edges point at the new chunks of vat.py
            assert _edges(store, by_source[source]) == edges


def test_markdown_and_rst_are_cut_at_their_headings() -> None:
    from apex_models.runtime.indexer import section_chunks

    md = "# Shop\n\nIntro.\n\n```bash\n# not a heading\nmake dev\n```\n\n## Invoices\n\nNumbered per tenant.\n"
    chunks = section_chunks(md, ".md")
    assert [(c.start, c.end) for c in chunks] == [(1, 8), (10, 12)]
    assert chunks[0].text.startswith("# Shop") and "# not a heading" in chunks[0].text
    assert chunks[1].text == "## Invoices\nNumbered per tenant."
    rst = "=====\nGuide\n=====\n\nIntro text.\n\nInstall\n-------\n\npip install shop\n"
    chunks = section_chunks(rst, ".rst")
    assert [(c.start, c.end) for c in chunks] == [(1, 5), (7, 10)]
    assert chunks[1].text.startswith("Install\n-------")
    long = "# Big\n\n" + "\n\n".join(f"paragraph {i} " + "x" * 400 for i in range(8))
    pieces = section_chunks(long, ".md", limit=1000)
    assert len(pieces) > 2 and all(p.text.startswith("# Big") for p in pieces)


def test_a_run_removes_only_the_chunks_of_its_own_folder(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    """Two repositories share a store, and a memory a user tagged "indexed" is never the
    indexer's: re-indexing one folder, even one whose files are all gone, leaves both alone."""
    shop, other = _repo(tmp_path / "shop"), tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("# Deploys\n\nDeploys go out on Tuesdays.\n")
    with MemoryStore.open(tmp_path / "store", embedder, key=KEY) as store:
        mine = store.add("my own note: the indexed dashboards are slow", tags=["indexed", "perf"],
                         source="grafana")
        index_repository(store, shop)
        shop_ids = {m.id for m in store.memories() if (m.source or "").startswith("billing/")}
        second = index_repository(store, other)
        assert second.files_removed == 0 and second.chunks_removed == 0 and second.files_indexed == 1
        (other / "notes.md").unlink()
        emptied = index_repository(store, other)
        assert emptied.files_removed == 1
        assert store.get(mine) is not None and shop_ids <= {m.id for m in store.memories()}
        assert index_repository(store, shop).files_unchanged == 2


def test_skipped_files_lose_their_old_chunks_and_nested_gitignores_count(tmp_path: Path,
                                                                         embedder: OnnxEmbedder) -> None:
    from apex_models.runtime.indexer import MAX_FILE_BYTES, repository_files

    repo = tmp_path / "repo"
    (repo / "sub" / "gen").mkdir(parents=True)
    (repo / "sub" / ".gitignore").write_text("gen/\n")
    (repo / "sub" / "gen" / "g.py").write_text("GENERATED = 1\n")
    (repo / "sub" / "kept.py").write_text("def kept():\n    return 1\n")
    (repo / "guide.markdown").write_text("# Guide\n\nThe quokka section explains releases.\n")
    (repo / "big.py").write_text("def small():\n    return 2\n")
    assert [p.relative_to(repo).as_posix() for p in repository_files(repo)] == ["big.py", "guide.markdown",
                                                                                "sub/kept.py"]
    with MemoryStore.open(tmp_path / "store", embedder, key=KEY) as store:
        index_repository(store, repo)
        assert store.search("quokka", k=1, mode="keyword")[0].source.startswith("guide.markdown:")
        (repo / "big.py").write_text("x = 1\n" * (MAX_FILE_BYTES // 6 + 1))
        report = index_repository(store, repo)
        assert report.skipped == ["big.py"] and report.chunks_removed == 1
        assert all(not (m.source or "").startswith("big.py") for m in store.memories())


def test_chunks_written_before_folder_ids_are_replaced_once(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    """A store indexed by an older version (chunks tagged "indexed" and sha:, no index:)."""
    from apex_models.runtime.indexer import root_tag

    repo = _repo(tmp_path / "repo")
    with MemoryStore.open(tmp_path / "store", embedder, key=KEY) as store:
        old = store.add("billing/vat.py\ndef add_vat(amount): ...", kind="code",
                        tags=["indexed", "sha:0123456789abcdef", "py"], source="billing/vat.py:8-10")
        report = index_repository(store, repo)
        assert store.get(old) is None and report.chunks_removed == 1
        assert all(root_tag(repo) in m.tags for m in store.memories())
        assert index_repository(store, repo).files_unchanged == 2
