"""Code from repositories: a local folder or git checkout, a git URL, a Hugging Face dataset.

Beside the pinned PyPI distributions (:mod:`apex_models.data.pypi`), a team trains on
its own code or on a public repository. Three kinds of input, one record shape (kind
``code``, source ``repos``), and the same chain afterwards (licence filter, scrub,
decontaminate, dedup; :mod:`apex_models.data.transforms`):

- ``path``: a local folder. In a git work tree the files are what ``git ls-files
  --cached --others --exclude-standard`` lists, so every ``.gitignore`` (nested ones,
  ``.git/info/exclude``) is honoured exactly as git does; a plain folder honours its
  top-level ``.gitignore`` (the memory indexer's walk). Symlinks are skipped, so a
  link loop cannot trap the walk.
- ``git``: a URL, cloned once with ``git clone --depth 1`` into the raw folder (re-runs
  reuse the clone and work offline); then as ``path``.
- ``hf_dataset``: a Hugging Face dataset id (or a local dataset folder), streamed with
  ``datasets.load_dataset(..., streaming=True)``, so a multi-GB dataset is never
  downloaded whole; each row's code is in ``text_field`` and its licence in
  ``license_field`` (or the spec's ``license``).

The licence of a repository comes from the spec's ``license`` override, else from its
LICENSE/COPYING file (:func:`apex_models.data.licenses._from_license_text`); unknown
means every file is skipped (``unknown_license``), counted, never guessed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

from apex_models.data.licenses import _from_license_text
from apex_models.data.records import Skips, make_record

log = logging.getLogger(__name__)

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING", "COPYING.txt", "LICENSE.rst")
_LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".go": "go", ".rs": "rust",
              ".java": "java", ".sh": "shell", ".rb": "ruby", ".c": "c", ".cpp": "cpp", ".h": "c", ".md": "markdown"}


def repo_license(root: Path) -> str | None:
    """SPDX id recognised from the repository's licence file, or None."""
    for name in LICENSE_FILES:
        path = root / name
        if path.is_file() and not path.is_symlink():
            try:
                return _from_license_text(path.read_text(encoding="utf-8", errors="replace")[:200_000])
            except OSError:
                return None
    return None


def _is_git_worktree(root: Path) -> bool:
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and Path(proc.stdout.strip()).resolve() == root.resolve()


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files git would track (or the folder's, .gitignore honoured)."""
    if _is_git_worktree(root):
        proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                              capture_output=True, timeout=600, check=True)
        return sorted({p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p})
    from apex_models.runtime.indexer import repository_files

    return [p.relative_to(root).as_posix() for p in repository_files(root)]


def _sample(paths: list[str], cap: int, name: str) -> list[str]:
    """At most `cap` paths, the same on every run, spread across the repository (hash order)."""
    if len(paths) <= cap:
        return paths
    order = sorted(paths, key=lambda p: hashlib.sha256(f"{name}\0{p}".encode()).digest())
    return sorted(order[:cap])


def folder_records(root: Path, name: str, *, license: str | None, extensions: list[str], max_files: int,
                   max_file_bytes: int, url: str = "", skips: Skips | None = None) -> Iterator[dict[str, Any]]:
    """One ``code`` record per source file of the folder `root` (see the module doc)."""
    skips = skips if skips is not None else Skips()
    root = Path(root)
    if not root.is_dir():
        skips.add("missing", str(root))
        return
    license = license or repo_license(root)
    if not license:
        skips.add("unknown_license", name, "no recognised LICENSE/COPYING file; set `license` in the spec")
        return
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    paths = [p for p in list_files(root) if Path(p).suffix.lower() in suffixes]
    kept = _sample(paths, max_files, name)
    for _ in range(len(paths) - len(kept)):
        skips.add("over_cap", name, example=False)
    attribution = f"{name} ({url or 'local repository'}), {license}"
    for rel in kept:
        full = root / rel
        if full.is_symlink():
            skips.add("symlink", f"{name}/{rel}")
            continue
        try:
            size = full.stat().st_size
            if size > max_file_bytes:
                skips.add("too_large", f"{name}/{rel}", f"{size} bytes")
                continue
            data = full.read_bytes()
        except OSError as exc:
            skips.add("unreadable", f"{name}/{rel}", str(exc))
            continue
        if b"\x00" in data:
            skips.add("binary", f"{name}/{rel}")
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            skips.add("not_utf8", f"{name}/{rel}")
            continue
        if not text.strip():
            skips.add("empty", f"{name}/{rel}", example=False)
            continue
        yield make_record(text, kind="code", source="repos", license=license, attribution=attribution,
                          url=f"{url}#{rel}" if url else "", path=f"{name}/{rel}",
                          language=_LANGUAGES.get(Path(rel).suffix.lower(), "code"), repo=name)


def repo_name(url_or_path: str) -> str:
    """A short, file-system-safe name: the last path part without ``.git``."""
    tail = re.split(r"[/:]", url_or_path.rstrip("/"))[-1] or "repo"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tail.removesuffix(".git")) or "repo"


def clone(url: str, dest: Path, ref: str | None = None, timeout: int = 900) -> Path | None:
    """``git clone --depth 1`` `url` into `dest` (reused when already there); None with a logged reason."""
    if (dest / ".git").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["git", "clone", "--depth", "1", "--quiet"] + (["--branch", ref] if ref else []) + [url, str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("git clone %s failed: %s", url, exc)
        return None
    if proc.returncode != 0:
        log.warning("git clone %s failed (exit %d): %s", url, proc.returncode, proc.stderr.strip()[-500:])
        return None
    return dest


def hf_dataset_records(spec: dict[str, Any], max_files: int, max_file_bytes: int,
                       skips: Skips) -> Iterator[dict[str, Any]]:
    """Rows of a Hugging Face dataset (streamed) as ``code`` records; at most `max_files`."""
    try:
        from datasets import load_dataset

        rows = load_dataset(spec["hf_dataset"], spec.get("hf_config"), split=spec.get("split") or "train",
                            streaming=True)
    except Exception as exc:  # offline, unknown id, gated dataset: the source is skipped, the stage goes on
        skips.add("fetch_failed", spec["hf_dataset"], f"{type(exc).__name__}: {exc}")
        return
    name = repo_name(spec["hf_dataset"])
    url = f"https://huggingface.co/datasets/{spec['hf_dataset']}"
    count = 0
    for i, row in enumerate(rows):
        if count >= max_files:
            break
        text = row.get(spec.get("text_field") or "content")
        where = f"{name}/{row.get(spec.get('path_field') or '', '') or i}"
        if not isinstance(text, str) or not text.strip():
            skips.add("no_text", where, example=False)
            continue
        if len(text.encode("utf-8")) > max_file_bytes:
            skips.add("too_large", where)
            continue
        license = spec.get("license") or (row.get(spec["license_field"]) if spec.get("license_field") else None)
        if isinstance(license, list):
            license = " OR ".join(license)
        if not license:
            skips.add("unknown_license", where, example=False)
            continue
        count += 1
        yield make_record(text, kind="code", source="repos", license=str(license),
                          attribution=f"{spec['hf_dataset']} (Hugging Face dataset) row {i}, {license}",
                          url=url, path=where, language="python", repo=name)


def repo_records(spec: dict[str, Any], raw_dir: Path, extensions: list[str], max_files: int, max_file_bytes: int,
                 skips: Skips) -> Iterator[dict[str, Any]]:
    """Records of one code source spec (``path``, ``git`` or ``hf_dataset``; see the config)."""
    if spec.get("hf_dataset"):
        yield from hf_dataset_records(spec, max_files, max_file_bytes, skips)
        return
    if spec.get("git"):
        url = spec["git"]
        name = repo_name(url)
        slug = hashlib.sha256(f"{url}@{spec.get('ref') or ''}".encode()).hexdigest()[:10]
        root = clone(url, Path(raw_dir) / f"{name}-{slug}", spec.get("ref"))
        if root is None:
            skips.add("fetch_failed", url, "git clone failed; see the log")
            return
        yield from folder_records(root, name, license=spec.get("license"), extensions=extensions,
                                  max_files=max_files, max_file_bytes=max_file_bytes, url=url, skips=skips)
        return
    root = Path(spec["path"]).expanduser()
    yield from folder_records(root, repo_name(str(root.resolve())), license=spec.get("license"),
                              extensions=extensions, max_files=max_files, max_file_bytes=max_file_bytes,
                              skips=skips)
