"""Index a repository into a memory store: code-aware chunks, re-indexed only where files changed.

Python files are cut along the syntax tree (each top-level function, each class header
with its docstring, each method), so a hit points at one definition; Markdown and
reStructuredText files at their headings (one chunk per section); other text files into
paragraph groups of about `CHUNK_CHARS`. Every chunk is a memory of kind
"code" (source files) or "note" (documentation) whose source is `path:first-last` line,
tagged "indexed", `sha:<file hash>` and `index:<folder id>` (the first 12 hex digits of
the sha256 of the folder's absolute path): a later run over the same folder skips files
whose hash is unchanged, replaces the chunks of changed files and removes those of deleted,
oversized or binary ones. A run touches only chunks with its own folder id, so several
repositories share a store and memories a user tagged "indexed" are never removed (chunks
written before the folder id existed are replaced once, when their file is seen again).
`.gitignore` files are honoured at every level (pathspec, each relative to its folder), and
`.git`, virtual environments and caches are always skipped.

Relations: after every run the Python chunks are linked by what their code references,
read from the syntax tree: `imports` (a chunk with `import pkg.mod` or `from pkg.mod import
name` -> the chunk defining `name` in that repository module, else the module's first
chunk) and `calls` (a chunk calling `name(...)` or `obj.name(...)` -> the chunk defining
`name`: in the same file when it has one, else in every repository file that defines it
once). Edges into re-indexed files disappear with their old chunks, so every run
recomputes all edges (parsing is cheap; only changed files are re-embedded) and writes
them in one transaction. `store.related(id)` walks them.
"""

from __future__ import annotations

import ast
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pathspec

from apex_models.runtime.embedder import _progress
from apex_models.runtime.store import MemoryStore

CODE_SUFFIXES = {".py", ".js", ".ts", ".tsx", ".jsx", ".go", ".rs", ".java", ".c", ".h", ".cpp", ".rb", ".sh",
                 ".sql", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini"}
DOC_SUFFIXES = {".md", ".markdown", ".rst", ".txt"}
SECTION_SUFFIXES = {".md", ".markdown", ".rst"}
ALWAYS_SKIP = [".git/", ".venv/", "venv/", "node_modules/", "__pycache__/", ".cache/", ".mypy_cache/",
               ".pytest_cache/", "*.egg-info/"]
CHUNK_CHARS = 1500
MAX_FILE_BYTES = 300_000
INDEXED_TAG = "indexed"
ROOT_TAG_PREFIX = "index:"


@dataclass
class IndexReport:
    files_seen: int = 0
    files_indexed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    relations: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # 1-based first line
    end: int    # 1-based last line


def _ignore_spec(folder: Path, always: list[str] | None = None) -> pathspec.PathSpec | None:
    """The patterns of `folder`/.gitignore (plus `always`), matched relative to `folder`."""
    patterns = list(always or [])
    gitignore = folder / ".gitignore"
    if gitignore.is_file():
        patterns += gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    return pathspec.PathSpec.from_lines("gitwildmatch", patterns) if patterns else None


def repository_files(root: Path) -> list[Path]:
    """Indexable files under root, minus .gitignore'd ones (at every level, as git reads
    them: each file's patterns relative to its own folder) and the always-skipped folders."""
    specs: dict[Path, pathspec.PathSpec | None] = {Path("."): _ignore_spec(root, ALWAYS_SKIP)}

    def ignored(rel: Path, is_dir: bool) -> bool:
        for depth in range(len(rel.parts)):
            base = Path(*rel.parts[:depth]) if depth else Path(".")
            spec = specs.get(base)
            if spec is not None and spec.match_file(Path(*rel.parts[depth:]).as_posix() + ("/" if is_dir else "")):
                return True
        return False

    files = []
    for folder, dirs, names in os.walk(root):
        base = Path(folder).relative_to(root)
        if base != Path("."):
            specs[base] = _ignore_spec(root / base)
        # prune ignored folders here, so a virtual environment is never walked at all
        dirs[:] = sorted(d for d in dirs if not ignored(base / d, True))
        for name in sorted(names):
            if Path(name).suffix.lower() in CODE_SUFFIXES | DOC_SUFFIXES and not ignored(base / name, False):
                files.append(root / base / name)
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


_RST_UNDERLINE = set("=-~^\"'`#*+:._")


def _heading_lines(lines: list[str], suffix: str) -> list[int]:
    """0-based indexes of the lines that start a section: Markdown `#` headings outside code
    fences, or reStructuredText titles (a text line underlined, and maybe overlined, by one
    repeated punctuation character at least as long as the title)."""
    starts: list[int] = []
    fenced = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if suffix == ".rst":
            under = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if (stripped and not set(stripped) <= _RST_UNDERLINE and len(under) >= len(stripped)
                    and len(set(under)) == 1 and under[0] in _RST_UNDERLINE):
                over = lines[i - 1].strip() if i else ""
                starts.append(i - 1 if over and over == under else i)
        else:
            if stripped.startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and stripped.startswith("#") and stripped.lstrip("#").startswith(" "):
                starts.append(i)
    return starts


def section_chunks(text: str, suffix: str, limit: int = CHUNK_CHARS) -> list[Chunk]:
    """Markdown / reStructuredText cut at headings: one chunk per section, a long section in
    paragraph groups of about `limit` characters that each start with the section's title."""
    lines = text.splitlines()
    bounds = sorted({0, *_heading_lines(lines, suffix)}) + [len(lines)]
    chunks: list[Chunk] = []
    for start, end in zip(bounds, bounds[1:]):
        body = "\n".join(lines[start:end])
        title = next((line.strip() for line in lines[start:end] if line.strip()), "")
        for i, piece in enumerate(text_chunks(body, limit)):
            prefix = "" if i == 0 or piece.text.startswith(title) else title + "\n"
            chunks.append(Chunk(prefix + piece.text, start + piece.start, start + piece.end))
    return chunks


@dataclass
class PythonRefs:
    """What a Python file defines and references, by line, for the relation pass."""

    defs: list[tuple[str, int]] = field(default_factory=list)           # (name, line of def)
    calls: list[tuple[str, int]] = field(default_factory=list)          # (called name, line)
    imports: list[tuple[str, str | None, int]] = field(default_factory=list)  # (module, name, line)


def python_refs(source: str, module: str) -> PythonRefs:
    """Definitions, calls and imports of one file (`module` dotted, for relative imports)."""
    refs = PythonRefs()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return refs
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            refs.defs.append((node.name, node.lineno))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name:
                refs.calls.append((name, node.lineno))
        elif isinstance(node, ast.Import):
            refs.imports += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(p for p in [*parts, base] if p)
            for alias in node.names:
                refs.imports.append((f"{base}.{alias.name}" if base else alias.name, None, node.lineno))
                refs.imports.append((base, alias.name, node.lineno))
    return refs


def _module_name(rel: str) -> str:
    """billing/vat.py -> billing.vat; pkg/__init__.py -> pkg; src/ layouts keep their prefix off."""
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts and parts[0] == "src":
        parts = parts[1:]
    return ".".join(parts)


def _chunk_at(chunks: list[tuple[int, int, str]], line: int) -> str | None:
    """The id of the (narrowest) chunk covering `line`."""
    covering = [(end - start, memory_id) for start, end, memory_id in chunks if start <= line <= end]
    return min(covering)[1] if covering else None


def root_tag(root: Path) -> str:
    """`index:<id>`: which folder's index run owns a chunk (sha256 of its absolute path)."""
    return ROOT_TAG_PREFIX + hashlib.sha256(str(Path(root).resolve()).encode("utf-8")).hexdigest()[:12]


def code_relations(store: MemoryStore, root: Path) -> list[tuple[str, str, str]]:
    """(src id, dst id, "imports" | "calls") edges between the indexed Python chunks of `root`."""
    chunks: dict[str, list[tuple[int, int, str]]] = {}
    owner = root_tag(root)
    for memory in store.memories():
        if owner not in memory.tags or not memory.source or not memory.source.split(":")[0].endswith(".py"):
            continue
        path, lines = memory.source.rsplit(":", 1)
        start, end = (int(x) for x in lines.split("-"))
        chunks.setdefault(path, []).append((start, end, memory.id))
    refs = {rel: python_refs((root / rel).read_text(encoding="utf-8", errors="replace"), _module_name(rel))
            for rel in chunks if (root / rel).is_file()}
    modules = {_module_name(rel): rel for rel in refs}
    defined: dict[str, list[tuple[str, str]]] = {}  # name -> [(file, chunk id)]
    for rel, r in refs.items():
        for name, line in r.defs:
            target = _chunk_at(chunks[rel], line)
            if target:
                defined.setdefault(name, []).append((rel, target))
    edges: dict[tuple[str, str], str] = {}
    for rel, r in refs.items():
        for module, name, line in r.imports:
            target_file = modules.get(module)
            src = _chunk_at(chunks[rel], line)
            if target_file is None or src is None or target_file == rel:
                continue
            named = [cid for f, cid in defined.get(name or "", []) if f == target_file]
            dst = named[0] if named else min(chunks[target_file])[2]
            edges.setdefault((src, dst), "imports")
        for name, line in r.calls:
            src = _chunk_at(chunks[rel], line)
            candidates = defined.get(name, [])
            local = [cid for f, cid in candidates if f == rel]
            per_file: dict[str, list[str]] = {}
            for f, cid in candidates:
                per_file.setdefault(f, []).append(cid)
            targets = local or [ids[0] for ids in per_file.values() if len(ids) == 1]
            for dst in targets:
                if src and dst != src:
                    edges.setdefault((src, dst), "calls")
    return [(src, dst, relation) for (src, dst), relation in sorted(edges.items())]


def _existing(store: MemoryStore, owner: str) -> tuple[dict[str, tuple[str, list[str]]], dict[str, list[str]]]:
    """(path -> (sha tag, memory ids) of the chunks an earlier run over this folder wrote,
    path -> ids of chunks an older version wrote with no folder id: "indexed" and a
    `sha:` tag but no `index:` one; they are replaced when a file of that path is seen)."""
    own: dict[str, tuple[str, list[str]]] = {}
    legacy: dict[str, list[str]] = {}
    for memory in store.memories():
        if INDEXED_TAG not in memory.tags or not memory.source:
            continue
        path = memory.source.rsplit(":", 1)[0]
        sha = next((t for t in memory.tags if t.startswith("sha:")), "")
        if owner in memory.tags:
            own.setdefault(path, (sha, []))[1].append(memory.id)
        elif sha and not any(t.startswith(ROOT_TAG_PREFIX) for t in memory.tags):
            legacy.setdefault(path, []).append(memory.id)
    return own, legacy


def index_repository(store: MemoryStore, root: str | Path, batch_size: int = 64, progress: bool = False
                     ) -> IndexReport:
    """Bring the store's chunks of `root` up to date with the files on disk, then relink them.

    `progress` shows two bars on stderr (the CLI turns them on): reading the files, then
    embedding the chunks of the changed ones.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root} to index")
    report = IndexReport()
    owner = root_tag(root)
    existing, legacy = _existing(store, owner)
    seen = set()
    pending: list[dict[str, Any]] = []
    files = repository_files(root)
    for path in _progress(files, progress, "read", unit="file"):
        rel = path.relative_to(root).as_posix()
        seen.add(rel)
        report.files_seen += 1
        data = path.read_bytes()
        old_sha, old_ids = existing.get(rel, ("", []))
        old_ids = old_ids + legacy.get(rel, [])
        if len(data) > MAX_FILE_BYTES or b"\0" in data[:4096]:
            report.skipped.append(rel)  # and what an earlier run indexed of it goes: it is no longer indexed
            report.chunks_removed += store.delete_many(old_ids)
            continue
        sha = "sha:" + hashlib.sha256(data).hexdigest()[:16]
        if old_sha == sha and rel not in legacy:
            report.files_unchanged += 1
            continue
        report.chunks_removed += store.delete_many(old_ids)
        text = data.decode("utf-8", errors="replace")
        suffix = path.suffix.lower()
        chunks = (python_chunks(text) if suffix == ".py"
                  else section_chunks(text, ".rst" if suffix == ".rst" else ".md") if suffix in SECTION_SUFFIXES
                  else text_chunks(text))
        kind = "note" if path.suffix.lower() in DOC_SUFFIXES else "code"
        tags = [INDEXED_TAG, owner, sha, path.suffix.lstrip(".").lower() or "text"]
        pending += [{"text": f"{rel}\n{c.text}", "kind": kind, "tags": tags, "source": f"{rel}:{c.start}-{c.end}"}
                    for c in chunks]
        report.files_indexed += 1
    # Embedding is the slow part: its own bar, over the chunks of every changed file.
    batches = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]
    for batch in _progress(batches, progress and bool(batches), "embed", unit="batch"):
        report.chunks_added += len(store.add_many(batch))
    for rel, (_, old_ids) in existing.items():
        if rel not in seen:
            report.files_removed += 1
            report.chunks_removed += store.delete_many(old_ids)
    report.relations = store.link_many(code_relations(store, root))
    return report
