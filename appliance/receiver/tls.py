"""DICOM over TLS (PS3.15 B.2) on a second port: the server's TLS context from `receiver.tls`.

TLS 1.2 or newer with Python's default ciphers. With `client_ca` a peer must show a certificate
signed by one of those CAs (the mutual authentication of the secure transport profiles);
without it any peer may connect, and the AE title and address checks apply as on the plain port.
"""

from __future__ import annotations

import ssl

from appliance.config import ReceiverTLS
from appliance.errors import ConfigError
from appliance.receiver.net import QuickAckSSLSocket


def server_context(cfg: ReceiverTLS) -> ssl.SSLContext:
    """The TLS context for the receiver's TLS port; ConfigError naming the setting at fault."""
    if cfg.certificate is None or cfg.key is None:
        raise ConfigError("receiver.tls: a TLS port needs both certificate and key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = QuickAckSSLSocket
    try:
        context.load_cert_chain(cfg.certificate, cfg.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"receiver.tls.certificate / receiver.tls.key ({cfg.certificate}, {cfg.key}): "
            f"cannot be used: {_plain(exc)}"
        ) from exc
    if cfg.client_ca is not None:
        try:
            context.load_verify_locations(cafile=cfg.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"receiver.tls.client_ca ({cfg.client_ca}): cannot be read: {_plain(exc)}"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _plain(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
