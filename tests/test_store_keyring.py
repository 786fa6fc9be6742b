"""The OS keyring as a key source, with keyring's fail backend and an in-memory backend double."""

from __future__ import annotations

import base64
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail

from apex_models.runtime import MemoryStore, OnnxEmbedder, StoreError, load_bundle
from apex_models.runtime.keys import DEFAULT_SERVICE, delete_keyring_key, keyring_key, store_account


class InMemoryKeyringDouble(KeyringBackend):
    """Test double for an OS keyring: a dict, so no test touches the real OS store."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        if self.entries.pop((service, username), None) is None:
            raise PasswordDeleteError("no such entry")


@pytest.fixture()
def backend():
    previous = keyring.get_keyring()
    double = InMemoryKeyringDouble()
    keyring.set_keyring(double)
    yield double
    keyring.set_keyring(previous)


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder()


def test_a_store_keyed_by_the_keyring_round_trips(tmp_path: Path, embedder: OnnxEmbedder, backend) -> None:
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, keyring_service=DEFAULT_SERVICE) as store:
        memory_id = store.add("the keyring holds this store's key", kind="note")
    entry = backend.entries[(DEFAULT_SERVICE, store_account(folder))]
    key = base64.b64decode(entry)
    assert len(key) == 32 and key != bytes(32)
    assert entry.encode() not in b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    with MemoryStore.open(folder, embedder, keyring_service=DEFAULT_SERVICE, create=False) as store:
        assert store.get(memory_id).text == "the keyring holds this store's key"  # type: ignore[union-attr]
    with MemoryStore.open(folder, embedder, key=key) as store:  # the same raw key
        assert len(store) == 1
    other = tmp_path / "t"
    assert keyring_key(other) != key  # every store gets its own key


def test_keyring_errors_are_clear(tmp_path: Path, embedder: OnnxEmbedder, backend) -> None:
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, key=bytes(range(32))):
        pass
    with pytest.raises(StoreError, match="no key for the existing store"):
        MemoryStore.open(folder, embedder, keyring_service=DEFAULT_SERVICE)
    backend.entries[(DEFAULT_SERVICE, store_account(folder))] = base64.b64encode(bytes(32)).decode()
    with pytest.raises(StoreError, match="wrong key"):
        MemoryStore.open(folder, embedder, keyring_service=DEFAULT_SERVICE)
    backend.entries[(DEFAULT_SERVICE, store_account(folder))] = "not base64 !"
    with pytest.raises(StoreError, match="is not a 32-byte key"):
        MemoryStore.open(folder, embedder, keyring_service=DEFAULT_SERVICE)
    assert delete_keyring_key(folder) and not delete_keyring_key(folder)
    with pytest.raises(StoreError, match="no key for"):
        keyring_key(tmp_path / "new", create=False)
    with pytest.raises(StoreError, match="exactly one of passphrase, key or keyring_service"):
        MemoryStore.open(folder, embedder, key=bytes(32), keyring_service=DEFAULT_SERVICE)


def test_no_backend_fails_with_a_clear_error(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(StoreError, match="no OS keyring backend"):
            MemoryStore.open(tmp_path / "s", embedder, keyring_service=DEFAULT_SERVICE)
        assert not (tmp_path / "s").exists()
    finally:
        keyring.set_keyring(previous)
