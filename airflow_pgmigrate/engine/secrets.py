"""Keeping secrets out of messages: redaction of passwords and credentials in URIs, and hints for TLS failures.

Every error text that may quote a server, a client program or a user's input passes through :func:`redact` before it
reaches a log, an exception, XCom or a report. Known secrets (the connection's password, the TLS key's passphrase)
are replaced wherever they appear, raw or percent-encoded; credentials of any ``scheme://user:password@`` URI and
``password=...`` settings are replaced even when the secret is not known (a URI pasted into a config field).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

MASK = "***"

#: ``scheme://user:password@``: the password part (anything up to the last ``@`` before the host).
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*):(?P<secret>[^\s@'\"]*)@")
#: ``password=...`` / ``sslpassword=...`` in a libpq connection string, a URI query or an environment listing.
_SETTING = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*|\bPGPASSWORD\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&'\"]+)",
                      re.IGNORECASE)
#: ``password 'secret'`` in SQL: a foreign server's or user mapping's OPTIONS, ``CREATE ROLE ... PASSWORD '...'``; any
#: option whose name holds password, secret or passphrase (postgres_fdw's ``sslpassword``), quoted or not.
_SQL_PASSWORD = re.compile(r"(?P<head>(?:\b\w*|\"[^\"\n]{0,64}?)(?:password|secret|passphrase)(?:\w*\b|[^\"\n]{0,64}\")"
                           r"\s+)(?P<secret>'(?:[^']|'')*')", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every known secret and every credential-looking part replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote_plus(secret, safe="")}:
            text = text.replace(form, MASK)
    text = _URI_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    text = _SQL_PASSWORD.sub(lambda m: f"{m.group('head')}'{MASK}'", text)
    return _SETTING.sub(lambda m: f"{m.group('head')}{MASK}", text)


def has_credentials(text: str) -> bool:
    """Whether ``text`` holds a ``scheme://user:password@`` URI or a ``password=`` setting."""
    return bool(_URI_PASSWORD.search(text) or _SETTING.search(text))


#: (pattern in libpq's or the server's message, the TLS setting to fix, what to do). First match wins.
_TLS_HINTS: tuple[tuple[str, str, str], ...] = (
    (r"root certificate file .* does not exist|could not read root certificate file", "sslrootcert",
     "the CA certificate file was not found on the worker: set the connection extra 'sslrootcert' to the path of "
     "the CA file that signed the server's certificate (for Amazon RDS: the region's global-bundle.pem)"),
    (r"certificate verify failed|unable to get local issuer|self[- ]signed certificate", "sslrootcert",
     "the server's certificate is not signed by the CA in 'sslrootcert': point the connection extra 'sslrootcert' "
     "at the CA that signed it (sslmode=require skips the check, but then the server's identity is not verified)"),
    (r"does not match host name|server certificate for .* does not match", "sslmode",
     "sslmode=verify-full checks that the host name is in the server's certificate: connect with a name the "
     "certificate lists, or use sslmode=verify-ca"),
    (r"certificate file .* does not exist|could not open certificate file|could not load (?:client )?certificate",
     "sslcert", "the client certificate file was not found: fix the connection extra 'sslcert' (and 'sslkey')"),
    (r"bad decrypt|could not load private key|sslpassword|private key file .* (?:cannot|could not)", "sslpassword",
     "the client key could not be read: check the connection extras 'sslkey' and 'sslpassword' (the key's "
     "passphrase)"),
    (r"private key file .* (?:has group or world access|must be owned)", "sslkey",
     "the client key file is readable by others: chmod 0600 the file named by the connection extra 'sslkey'"),
    (r"certificate key file .* does not exist|private key file .* does not exist", "sslkey",
     "the client key file was not found: fix the connection extra 'sslkey'"),
    (r"connection requires a valid client certificate|certificate authentication failed|"
     r"unknown ca|certificate required|tlsv1 alert|sslv3 alert", "sslcert",
     "the server requires a client certificate it trusts (for its user name): set the connection extras 'sslcert' "
     "and 'sslkey' to a certificate issued for this login by a CA the server trusts"),
    (r"server does not support SSL", "sslmode",
     "the server does not offer TLS: enable ssl on the server, or lower the connection extra 'sslmode'"),
    (r"no encryption|hostnossl|SSL off", "sslmode",
     "the server accepts only TLS connections: set the connection extra 'sslmode' to verify-full (with "
     "'sslrootcert'), or at least require"),
)


def tls_hint(message: str, params: Mapping[str, str] | None = None) -> str:
    """A sentence naming the TLS setting to fix when ``message`` is a TLS failure; empty otherwise."""
    for pattern, setting, advice in _TLS_HINTS:
        if re.search(pattern, message, re.IGNORECASE):
            current = (params or {}).get(setting)
            now = f" (now {setting}={current})" if current and setting != "sslpassword" else ""
            return f"TLS setting to fix: {setting}{now}: {advice}"
    return ""


def explain_failure(message: str, secrets: Iterable[str | None] = (), params: Mapping[str, str] | None = None) -> str:
    """A client or server error made safe to show: redacted, with the TLS hint appended when there is one."""
    text = redact(" ".join(message.split()), secrets)
    hint = tls_hint(text, params)
    return f"{text}. {hint}" if hint else text


__all__ = ["MASK", "explain_failure", "has_credentials", "redact", "tls_hint"]
