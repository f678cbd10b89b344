"""Encryption at rest for secrets the server must be able to read back (BMC passwords).

Fernet (AES-128-CBC + HMAC-SHA256) from ``cryptography``. The key is never stored in the
database: it comes from ``BRONZE_SECRET_KEY`` or ``<data_dir>/secret.key`` (created 0600).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretBoxError(Exception):
    pass


class SecretBox:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretBoxError(
                "secret key is not a valid Fernet key (32 url-safe base64 bytes)"
            ) from None

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """Load the key file, creating it (mode 0600) if it does not exist."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretBoxError("stored secret cannot be decrypted with this key") from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
