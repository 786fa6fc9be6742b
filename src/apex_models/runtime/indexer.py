"""Index a repository into a memory store: code-aware chunks, re-indexed only where files changed.

Python files are cut along the syntax tree (each top-level function, each class header
with its docstring, each method), so a hit points at one definition; other text files
are cut into paragraph groups of about `CHUNK_CHARS`. Every chunk is a memory of kind
"code" (source files) or "note" (documentation) whose source is `path:first-last` line,
tagged "indexed" and `sha:<file hash>`: a later run skips files whose hash is unchanged,
replaces the chunks of changed files and removes those of deleted ones. `.gitignore` is
honoured (pathspec), and `.git`, virtual environments and caches are always skipped.
"""

from __future__ import annotations

import ast
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pathspec

from apex_models.runtime.store import MemoryStore

CODE_SUFFIXES = {".py", ".js", ".ts", ".tsx", ".jsx", ".go", ".rs", ".java", ".c", ".h", ".cpp", ".rb", ".sh",
                 ".sql", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini"}
DOC_SUFFIXES = {".md", ".rst", ".txt"}
ALWAYS_SKIP = [".git/", ".venv/", "venv/", "node_modules/", "__pycache__/", ".cache/", ".mypy_cache/",
               ".pytest_cache/", "*.egg-info/"]
CHUNK_CHARS = 1500
MAX_FILE_BYTES = 300_000
INDEXED_TAG = "indexed"


@dataclass
class IndexReport:
    files_seen: int = 0
    files_indexed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # 1-based first line
    end: int    # 1-based last line


def repository_files(root: Path) -> list[Path]:
    """Indexable files under root, minus .gitignore'd ones and the always-skipped folders."""
    patterns = list(ALWAYS_SKIP)
    gitignore = root / ".gitignore"
    if gitignore.is_file():
        patterns += gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    spec = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    files = []
    for folder, dirs, names in os.walk(root):
        base = Path(folder).relative_to(root)
        # prune ignored folders here, so a virtual environment is never walked at all
        dirs[:] = sorted(d for d in dirs if not spec.match_file((base / d).as_posix() + "/"))
        for name in sorted(names):
            rel = (base / name).as_posix()
            if Path(name).suffix.lower() in CODE_SUFFIXES | DOC_SUFFIXES and not spec.match_file(rel):
                files.append(root / rel)
    return sorted(files)


def python_chunks(source: str) -> list[Chunk]:
    """One chunk per top-level function, per class header (+ docstring) and per method.

    Module-level code between definitions goes into paragraph chunks, so imports and
    constants stay searchable. Falls back to paragraphs when the file does not parse.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return text_chunks(source)
    lines = source.splitlines()
    chunks, covered = [], set()

    def emit(start: int, end: int) -> None:
        text = "\n".join(lines[start - 1:end]).strip()
        if text:
            chunks.append(Chunk(text, start, end))
        covered.update(range(start, end + 1))

    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            emit(start, node.end_lineno or node.lineno)
        elif isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            header_end = (min(min([m.lineno] + [d.lineno for d in m.decorator_list]) for m in methods) - 1
                          if methods else node.end_lineno or node.lineno)
            emit(start, header_end)
            for m in methods:
                emit(min([m.lineno] + [d.lineno for d in m.decorator_list]), m.end_lineno or m.lineno)
            covered.update(range(start, (node.end_lineno or node.lineno) + 1))
    rest = "\n".join("" if i + 1 in covered else line for i, line in enumerate(lines))
    return sorted(chunks + text_chunks(rest), key=lambda c: c.start)


def text_chunks(text: str, limit: int = CHUNK_CHARS) -> list[Chunk]:
    """Paragraphs (blank-line separated) grouped up to `limit` characters, with their lines."""
    chunks: list[Chunk] = []
    block: list[tuple[int, str]] = []
    size = 0
    paragraph: list[str] = []
    para_start = 0

    def flush_block() -> None:
        nonlocal block, size
        body = "\n".join(line for _, line in block).strip()
        if body:
            chunks.append(Chunk(body, block[0][0], block[-1][0]))
        block, size = [], 0

    def close_paragraph() -> None:
        nonlocal paragraph, size
        if not paragraph:
            return
        length = sum(len(line) + 1 for line in paragraph)
        if block and size + length > limit:
            flush_block()
        block.extend((para_start + i, line) for i, line in enumerate(paragraph))
        size += length
        paragraph = []

    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not paragraph:
                para_start = number
            paragraph.append(line)
        else:
            close_paragraph()
    close_paragraph()
    if block:
        flush_block()
    return chunks


def _existing(store: MemoryStore) -> dict[str, tuple[str, list[str]]]:
    """path -> (sha tag, memory ids) for chunks an earlier run indexed."""
    out: dict[str, tuple[str, list[str]]] = {}
    for memory in store.memories():
        if INDEXED_TAG not in memory.tags or not memory.source:
            continue
        path = memory.source.rsplit(":", 1)[0]
        sha = next((t for t in memory.tags if t.startswith("sha:")), "")
        out.setdefault(path, (sha, []))[1].append(memory.id)
    return out


def index_repository(store: MemoryStore, root: str | Path, batch_size: int = 64) -> IndexReport:
    """Bring the store's chunks of `root` up to date with the files on disk."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root} to index")
    report = IndexReport()
    existing = _existing(store)
    seen = set()
    pending: list[dict[str, Any]] = []
    for path in repository_files(root):
        rel = path.relative_to(root).as_posix()
        seen.add(rel)
        report.files_seen += 1
        data = path.read_bytes()
        if len(data) > MAX_FILE_BYTES or b"\0" in data[:4096]:
            report.skipped.append(rel)
            continue
        sha = "sha:" + hashlib.sha256(data).hexdigest()[:16]
        old_sha, old_ids = existing.get(rel, ("", []))
        if old_sha == sha:
            report.files_unchanged += 1
            continue
        report.chunks_removed += store.delete_many(old_ids)
        text = data.decode("utf-8", errors="replace")
        chunks = python_chunks(text) if path.suffix == ".py" else text_chunks(text)
        kind = "note" if path.suffix.lower() in DOC_SUFFIXES else "code"
        tags = [INDEXED_TAG, sha, path.suffix.lstrip(".").lower() or "text"]
        pending += [{"text": f"{rel}\n{c.text}", "kind": kind, "tags": tags, "source": f"{rel}:{c.start}-{c.end}"}
                    for c in chunks]
        report.files_indexed += 1
        while len(pending) >= batch_size:
            report.chunks_added += len(store.add_many(pending[:batch_size]))
            pending = pending[batch_size:]
    if pending:
        report.chunks_added += len(store.add_many(pending))
    for rel, (_, old_ids) in existing.items():
        if rel not in seen:
            report.files_removed += 1
            report.chunks_removed += store.delete_many(old_ids)
    return report
