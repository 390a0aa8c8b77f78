"""TLS contexts for DICOM associations (PS3.15 Annex B, the IHE ATNA secure node).

TLS 1.2 at least, with Python's default cipher choice. The listener, given a CA, requires
every caller to present a certificate issued by that CA (mutual TLS); the caller's AE title
is still checked against the allow-list on top. A client always verifies the peer's
certificate chain and that it names the host it connects to.

Keys must be unencrypted PEM: a service has nobody to type a passphrase (OpenSSL would
otherwise ask on the terminal), so protect the key file with its permissions instead.
"""

from __future__ import annotations

import ssl
from pathlib import Path

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """The listener's context: `cert`/`key` identify the node; with `ca`, callers must present
    a certificate issued by it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_identity(context, cert, key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A caller's context: the peer is verified against `ca` (the system's CAs when None);
    `cert`/`key`, when given, are presented to a peer that asks for a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = MINIMUM_VERSION
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca)
    if cert is not None or key is not None:
        _load_identity(context, cert, key)
    return context


def _load_identity(context: ssl.SSLContext, cert: Path | None, key: Path | None) -> None:
    if cert is None or key is None:
        raise ValueError(f"TLS needs both a certificate and its private key (certificate {cert}, key {key})")
    _existing(cert, "certificate")
    _existing(key, "private key")
    try:
        # an empty password: an encrypted key fails here instead of prompting on the terminal
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as exc:
        raise ValueError(f"TLS certificate {cert} with key {key} could not be loaded (not PEM, encrypted, "
                         f"or not the certificate's key): {exc.reason or exc}") from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    _existing(ca, "CA certificate")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ValueError(f"TLS CA certificate {ca} could not be loaded: {exc.reason or exc}") from None


def _existing(path: Path, what: str) -> None:
    if not Path(path).is_file():
        raise ValueError(f"TLS {what} {path}: no such file")
