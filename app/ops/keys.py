"""API keys from ``CATDOG_API_KEYS_FILE``: one a line, or ``sha256:<hex>`` of one.

Blank lines and ``#`` comments are ignored. A presented key is hashed with sha256
and compared with every stored digest by ``hmac.compare_digest`` (constant time,
and no early exit, so neither the key nor which entry matched shows in the time
taken). The file is re-read when its modification time, size or inode changes,
checked at most once a second; a file that cannot be read keeps the keys last read.
A key is named in metrics and logs only by its id: the first 8 hex digits of its
sha256. Checks run on the event loop only (REST and gRPC share it): no lock.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from pathlib import Path

from app.core.errors import Unauthenticated
from app.core.metrics import Metrics

log = logging.getLogger("catdog.keys")
CHECK_EVERY_S = 1.0
_HASHED = re.compile(r"sha256:(.*)", re.IGNORECASE)


def parse(text: str, where: str = "keys file") -> list[str]:
    """The sha256 hex digests a keys file names (``ValueError`` on a malformed digest)."""
    digests = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        hashed = _HASHED.fullmatch(line)
        if hashed is None:
            digests += [hashlib.sha256(line.encode()).hexdigest()] if line else []
        elif re.fullmatch(r"[0-9a-f]{64}", digest := hashed[1].strip().lower()):
            digests.append(digest)
        else:
            raise ValueError(f"{where}, line {number}: sha256: needs 64 hex digits")
    return digests


class ApiKeys:
    """The accepted keys, re-read from their file when it changes; counts in ``metrics``."""

    def __init__(self, path: Path, metrics: Metrics) -> None:
        self.path = path
        self.metrics = metrics
        self._stamp: tuple[int, int, int] | None = None
        self._checked = time.monotonic()
        self._digests: list[bytes] = []
        self._reload(first=True)

    def _reload(self, first: bool = False) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp == self._stamp:
                return
            digests = parse(self.path.read_text(), str(self.path))
        except (OSError, ValueError) as exc:
            if first:
                raise ValueError(f"CATDOG_API_KEYS_FILE: {exc}") from exc
            log.error("keeping the API keys read before: %s", exc)
            return
        self._digests = [bytes.fromhex(d) for d in digests]
        self._stamp = stamp
        log.info("API keys: %d read from %s", len(digests), self.path)

    def check(self, presented: str | None) -> str | None:
        """The id of ``presented`` when it is an accepted key, else None."""
        if time.monotonic() - self._checked >= CHECK_EVERY_S:
            self._checked = time.monotonic()
            self._reload()
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = False
        for stored in self._digests:  # every entry, whatever matched: no early exit
            found |= hmac.compare_digest(digest, stored)
        return digest.hex()[:8] if found else None

    def authenticate(self, authorization: str | None) -> str:
        """The id of the key an ``authorization`` value (``Bearer <key>``) presents, counted
        by id; ``Unauthenticated``, counted by reason, when it presents no accepted key."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        key = self.check(token.strip() if scheme.lower() == "bearer" else None)
        if key is None:
            self.metrics.auth_refused.labels(reason="invalid" if authorization else "missing").inc()
            raise Unauthenticated(bool(authorization))
        self.metrics.key_requests.labels(key_id=key).inc()
        return key
