"""Store keys kept in the OS keyring (macOS Keychain, Windows Credential Locker, Secret Service).

The alternative to a passphrase: a random 256-bit key is made the first time a store is
created and kept in the keyring under (service, the store's absolute path), so nothing
has to be typed or put in an environment variable, and nothing key-like touches the
store's folder. Needs the `keyring` package (in the runtime extra) and a working backend;
on a headless machine without one, every call fails with a StoreError that says so.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from apex_models.runtime.store import DB_NAME, StoreError

DEFAULT_SERVICE = "apex-memory"
KEY_BYTES = 32


def _keyring():
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        raise StoreError("the OS keyring needs the 'keyring' package: pip install keyring "
                         "(or open the store with a passphrase)") from None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring):
        raise StoreError("no OS keyring backend is available on this machine (keyring found none: on Linux "
                         "install and unlock a Secret Service such as gnome-keyring, or configure one with "
                         "PYTHON_KEYRING_BACKEND); open the store with a passphrase instead")
    return keyring


def store_account(path: str | Path) -> str:
    """The keyring user name of a store: its absolute path, so every store has its own key."""
    return str(Path(path).expanduser().resolve())


def keyring_key(path: str | Path, service: str = DEFAULT_SERVICE, create: bool = True) -> bytes:
    """The 32-byte key of the store at `path` from the OS keyring.

    A store that does not exist yet gets a fresh random key (when `create`); an existing
    store without a keyring entry is an error, never a new key (that key could not open it).
    """
    from keyring.errors import KeyringError

    keyring = _keyring()
    account = store_account(path)
    try:
        value = keyring.get_password(service, account)
    except KeyringError as exc:
        raise StoreError(f"the OS keyring refused to read the key of {account}: {exc}") from None
    if value is None:
        if (Path(account) / DB_NAME).is_file():
            raise StoreError(f"the OS keyring has no key for the existing store {account} (service {service!r}); "
                             "it was created with another key source or on another account")
        if not create:
            raise StoreError(f"no key for {account} in the OS keyring (service {service!r})")
        key = os.urandom(KEY_BYTES)
        try:
            keyring.set_password(service, account, base64.b64encode(key).decode("ascii"))
        except KeyringError as exc:
            raise StoreError(f"the OS keyring refused to store a key for {account}: {exc}") from None
        return key
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise StoreError(f"the OS keyring entry for {account} (service {service!r}) is not a {KEY_BYTES}-byte key")
    return key


def delete_keyring_key(path: str | Path, service: str = DEFAULT_SERVICE) -> bool:
    """Remove a store's key from the keyring (the store becomes unreadable); True if one existed."""
    from keyring.errors import PasswordDeleteError

    try:
        _keyring().delete_password(service, store_account(path))
    except PasswordDeleteError:
        return False
    return True
