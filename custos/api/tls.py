"""gRPC server credentials from the TLS files; replaced certificate files are read on the next handshake.

No restart is needed to rotate certificates: gRPC asks before each handshake whether the files changed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

log = logging.getLogger("custos.tls")


class ReloadingCredentials:
    """Server credentials whose certificate files are re-read when they change, on the next handshake."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self._files = tuple(p for p in (cert_file, key_file, client_ca_file) if p is not None)
        self._cert_file = cert_file
        self._key_file = key_file
        self._client_ca_file = client_ca_file
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.reloads = 0

    def _stat(self) -> tuple[tuple[int, int], ...]:
        return tuple((s.st_mtime_ns, s.st_size) for s in (p.stat() for p in self._files))

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        pair = (self._key_file.read_bytes(), self._cert_file.read_bytes())
        root = self._client_ca_file.read_bytes() if self._client_ca_file is not None else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=root)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration when a file changed, else None."""
        with self._lock:
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                config = self._configuration()
            except (OSError, ValueError):
                log.exception("certificate reload failed; keeping the current certificates")
                return None
            self._stamp = stamp
            self.reloads += 1
        log.info("certificates reloaded")
        return config

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``; client certificates are required when a client CA is set."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,  # type: ignore[arg-type]  # None means "unchanged" (grpc's documented contract)
            require_client_authentication=self._client_ca_file is not None,
        )
