"""Code sources (b) and (c): a local git repository, the same repository by file:// URL,
and a dataset folder read through the Hugging Face datasets path; never the network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from apex_models.data.records import Skips, read_records
from apex_models.data.repos import folder_records, repo_license, repo_records
from apex_models.data.sources import ingest_sources
from test_data_sources import config

MIT = ("MIT License\n\nCopyright (c) 2026 Example\n\nPermission is hereby granted, free of charge, to any person "
       "obtaining a copy of this software ... The above copyright notice and this permission notice shall be "
       "included in all copies or substantial portions of the Software.\n")
GOOD = 'def add(a, b):\n    """Add two numbers."""\n    return a + b\n'
SECRET = 'DB = "postgresql://app:Sup3rS3cretPass@db.internal:5432/app"\n'

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "mylib"
    (root / "mylib" / "sub").mkdir(parents=True)
    (root / "LICENSE").write_text(MIT)
    (root / ".gitignore").write_text("build/\n*.generated.py\n")
    (root / "mylib" / "__init__.py").write_text(GOOD)
    (root / "mylib" / "config.py").write_text(SECRET + GOOD.replace("add", "sub").replace("+", "-"))
    (root / "mylib" / "sub" / "mod.py").write_text("def mul(a, b):\n    return a * b\n")
    (root / "mylib" / "sub" / ".gitignore").write_text("local_*.py\n")  # a nested ignore file
    (root / "mylib" / "sub" / "local_notes.py").write_text("x = 1\n")
    (root / "mylib" / "out.generated.py").write_text("y = 2\n")
    (root / "build").mkdir()
    (root / "build" / "copy.py").write_text(GOOD)
    (root / "mylib" / "blob.py").write_bytes(b"\x00\x01binary\x00")
    (root / "mylib" / "latin.py").write_bytes("s = 'na\xefve'\n".encode("latin-1"))
    (root / "mylib" / "huge.py").write_text("z = 0\n" * 200_000)
    (root / "README.md").write_text("# mylib\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "first")
    (root / "mylib" / "untracked.py").write_text("def untracked():\n    return 0\n")  # not ignored: kept
    os.symlink(root / "mylib", root / "mylib" / "loop.py")  # a symlink loop, after the commit
    return root


def test_local_git_repository(repo: Path) -> None:
    skips = Skips()
    records = list(folder_records(repo, "mylib", license=None, extensions=[".py"], max_files=100,
                                  max_file_bytes=100_000, skips=skips))
    assert [r["path"] for r in records] == ["mylib/mylib/__init__.py", "mylib/mylib/config.py",
                                           "mylib/mylib/sub/mod.py", "mylib/mylib/untracked.py"]
    assert {r["license"] for r in records} == {"MIT"} and records[0]["text"] == GOOD
    assert records[0]["attribution"] == "mylib (local repository), MIT" and records[0]["kind"] == "code"
    assert dict(skips.counts) == {"binary": 1, "not_utf8": 1, "too_large": 1, "symlink": 1}
    assert repo_license(repo) == "MIT"


def test_unknown_licence_skips_the_repository(repo: Path) -> None:
    (repo / "LICENSE").write_text("All rights reserved.\n")
    skips = Skips()
    assert list(folder_records(repo, "mylib", license=None, extensions=[".py"], max_files=100,
                               max_file_bytes=100_000, skips=skips)) == []
    assert skips.counts == {"unknown_license": 1}
    kept = list(folder_records(repo, "mylib", license="Apache-2.0", extensions=[".py"], max_files=2,
                               max_file_bytes=100_000, skips=skips))
    assert len(kept) == 2 and skips.counts["over_cap"] == 8 - 2 and kept[0]["license"] == "Apache-2.0"


def test_stage_with_path_and_file_url(repo: Path, tmp_path: Path) -> None:
    """(b) and (c) through the ingest_sources stage: same transforms, same records."""
    cfg = config(stackexchange={"enabled": False}, tldr={"enabled": False}, conala={"enabled": False},
                 repos={"enabled": True, "repos": [{"path": str(repo)}], "extensions": [".py"],
                        "max_files_per_repo": 100, "max_file_bytes": 100_000})
    by_path = ingest_sources(cfg, tmp_path / "no-shared", tmp_path / "b", raw_dir=tmp_path / "raw" / "debian")
    cfg["repos"]["repos"] = [{"git": repo.as_uri()}]
    by_url = ingest_sources(cfg, tmp_path / "no-shared", tmp_path / "c", raw_dir=tmp_path / "raw" / "debian")

    b = list(read_records(tmp_path / "b" / "repos.jsonl"))
    c = list(read_records(tmp_path / "c" / "repos.jsonl"))
    assert by_path["sources"]["repos"]["scrub"] == {"url_password": 1}
    assert "Sup3rS3cretPass" not in json.dumps(b) and "<SECRET:url_password>" in b[1]["text"]
    # the clone has the commit only: no untracked file, no symlink loop
    assert [r["path"] for r in c] == [r["path"] for r in b if "untracked" not in r["path"]]
    assert [r["text"] for r in c] == [r["text"] for r in b if "untracked" not in r["path"]]
    assert c[0]["url"] == f"{repo.as_uri()}#mylib/__init__.py" and c[0]["license"] == "MIT"
    assert by_url["sources"]["repos"]["skipped"]["counts"] == {"binary": 1, "not_utf8": 1, "too_large": 1}
    assert len(list((tmp_path / "raw" / "repos").iterdir())) == 1  # the clone is kept for re-runs

    cfg["repos"]["repos"] = [{"git": (tmp_path / "missing.git").as_uri()}]
    failed = ingest_sources(cfg, tmp_path / "no-shared", tmp_path / "d", raw_dir=tmp_path / "raw" / "debian")
    assert failed["sources"]["repos"]["skipped"]["counts"] == {"fetch_failed": 1}


def test_hf_dataset_path_streams_rows(tmp_path: Path) -> None:
    """The hf_dataset path, on a local dataset folder (the same call streams a Hub id online)."""
    folder = tmp_path / "code-ds"
    folder.mkdir()
    rows = [{"content": GOOD, "path": "a.py", "license": "MIT"},
            {"content": "x = 1\n", "path": "b.py", "license": None},
            {"content": "def f():\n    return 2\n", "path": "c.py", "license": "Apache-2.0"}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    skips = Skips()
    records = list(repo_records({"hf_dataset": str(folder), "split": "train", "text_field": "content",
                                 "path_field": "path", "license_field": "license"},
                                tmp_path / "raw", [".py"], 10, 100_000, skips))
    assert [(r["path"], r["license"]) for r in records] == [("code-ds/a.py", "MIT"), ("code-ds/c.py", "Apache-2.0")]
    assert skips.counts == {"unknown_license": 1}
    bad = Skips()
    assert list(repo_records({"hf_dataset": str(tmp_path / "nothing-here")}, tmp_path, [".py"], 10, 100, bad)) == []
    assert bad.counts == {"fetch_failed": 1}
