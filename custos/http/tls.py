"""TLS of the HTTP listener: the gRPC listener's certificate files, reloaded when they change.

Also the client certificate of mutual TLS, in the shape :class:`custos.security.auth.Authenticator` reads.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

log = logging.getLogger("custos.tls")

#: Key of the ASGI scope's ``state`` under which the listener puts the client certificate (DER).
CLIENT_CERT_STATE = "custos_client_cert_der"


class ReloadingSSLContext:
    """A server SSL context whose certificate files are re-read when they change, on the next handshake.

    The same contract as the gRPC listener's credentials (``custos.api.tls``): no restart to rotate
    certificates; a replacement that fails to load is logged and the current certificates stay.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None,
        *,
        client_cert_optional: bool = False,
    ) -> None:
        self._client_cert_optional = client_cert_optional
        self._cert_file = cert_file
        self._key_file = key_file
        self._client_ca_file = client_ca_file
        self._files = tuple(p for p in (cert_file, key_file, client_ca_file) if p is not None)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._current = self._build()
        self.reloads = 0
        #: The context the listener is given; each handshake is switched to the current certificates.
        self.context = self._build()
        self.context.sni_callback = self._on_handshake

    def _stat(self) -> tuple[tuple[int, int], ...]:
        return tuple((s.st_mtime_ns, s.st_size) for s in (p.stat() for p in self._files))

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert_file, self._key_file)
        if self._client_ca_file is not None:
            # Optional (the compliance console, where a token may sign in instead): a certificate that is
            # presented must still verify against the CA.
            context.verify_mode = ssl.CERT_OPTIONAL if self._client_cert_optional else ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self._client_ca_file)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def current(self) -> ssl.SSLContext:
        """The context of the certificates on disk now (rebuilt when a file changed)."""
        with self._lock:
            try:
                stamp = self._stat()
                if stamp != self._stamp:
                    self._current = self._build()
                    self._stamp = stamp
                    self.reloads += 1
                    log.info("certificates reloaded")
            except (OSError, ssl.SSLError, ValueError):
                log.exception("certificate reload failed; keeping the current certificates")
            return self._current

    def _on_handshake(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self.current()


def client_auth_context(der: bytes | None) -> Mapping[str, Any]:
    """The verified client certificate as gRPC's auth context names it (PEM, common name, SANs)."""
    if not der:
        return {}
    cert = x509.load_der_x509_certificate(der)
    common_names = [str(a.value).encode() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    sans: list[bytes] = []
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        sans = [str(name).encode() for name in extension.value.get_values_for_type(x509.DNSName)]
    return {
        "x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()],
        "x509_common_name": common_names,
        "x509_subject_alternative_name": sans,
    }
