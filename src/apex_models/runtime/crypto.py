"""Encryption at rest for the memory store: AES-256-GCM blobs and key derivation.

Every secret field is sealed as one blob, ``nonce (12 bytes) || ciphertext+tag``, with
associated data that names the memory and the field ("<id>|record", "<id>|vector"), so a
blob copied onto another row or into another column fails authentication instead of
decrypting as someone else's memory. Keys come from a passphrase through scrypt
(memory-hard, parameters and salt kept in the store's meta table) or are given raw.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 16
# scrypt cost: n=2**15, r=8 takes 32 MiB and roughly 0.1 s, once per open.
DEFAULT_KDF = {"name": "scrypt", "n": 2**15, "r": 8, "p": 1}
KEY_CHECK_PLAINTEXT = b"apex-memory key check v1"
KEY_CHECK_AAD = b"meta|key_check"


class DecryptionError(Exception):
    """A blob failed authentication: wrong key, tampering, or a blob moved to another row."""


@dataclass(frozen=True)
class KdfParams:
    """How a passphrase becomes a key; stored (public) in the meta table."""

    n: int
    r: int
    p: int
    salt: bytes

    @classmethod
    def fresh(cls) -> "KdfParams":
        return cls(n=DEFAULT_KDF["n"], r=DEFAULT_KDF["r"], p=DEFAULT_KDF["p"], salt=os.urandom(SALT_BYTES))

    def to_json(self) -> str:
        return json.dumps({"name": "scrypt", "n": self.n, "r": self.r, "p": self.p, "salt": self.salt.hex()})

    @classmethod
    def from_json(cls, text: str) -> "KdfParams":
        d = json.loads(text)
        if d.get("name") != "scrypt":
            raise ValueError(f"unknown key derivation {d.get('name')!r}")
        return cls(n=int(d["n"]), r=int(d["r"]), p=int(d["p"]), salt=bytes.fromhex(d["salt"]))


def derive_key(passphrase: str, params: KdfParams) -> bytes:
    """32-byte key from a passphrase; scrypt makes each guess cost memory and time."""
    if not passphrase:
        raise ValueError("the passphrase is empty")
    kdf = Scrypt(salt=params.salt, length=KEY_BYTES, n=params.n, r=params.r, p=params.p)
    return kdf.derive(passphrase.encode("utf-8"))


class Sealer:
    """AES-256-GCM with a fresh random nonce per blob (96-bit nonces: safe far past 2**32 blobs)."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"a raw key must be exactly {KEY_BYTES} bytes")
        self._aead = AESGCM(bytes(key))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("blob too short")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError("authentication failed") from None

    @staticmethod
    def plaintext_size(blob_size: int) -> int:
        """Bytes that a sealed blob of `blob_size` bytes opens to (nonce and tag removed)."""
        return blob_size - NONCE_BYTES - 16

    def open_into(self, blob: bytes | memoryview, aad: bytes, out: memoryview) -> None:
        """Open `blob` into `out`, a writable buffer of exactly `plaintext_size(len(blob))` bytes.

        For large blobs: AESGCM.decrypt builds its result through an extra copy into fresh
        memory, about 7x slower than decrypting in place (45 ms against 6 ms for 100 MB
        here), which is most of reading a 100k-memory index snapshot. On DecryptionError
        `out` holds unauthenticated bytes: the caller must discard it.
        """
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("blob too short")
        try:
            self._aead.decrypt_into(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad, out)
        except InvalidTag:
            raise DecryptionError("authentication failed") from None

    def key_check(self) -> bytes:
        """An encrypted known constant: opening it proves the key before any row is read."""
        return self.seal(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD)

    def verify_key_check(self, blob: bytes) -> bool:
        try:
            return self.open(blob, KEY_CHECK_AAD) == KEY_CHECK_PLAINTEXT
        except DecryptionError:
            return False
