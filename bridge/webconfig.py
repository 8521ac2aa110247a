"""The web-config file: TLS and basic auth for the HTTP server.

The format is the one Prometheus' Go exporters read (exporter-toolkit's
`--web.config.file`), so an operator can reuse a file written for node_exporter:

    tls_server_config:
      cert_file: server.crt            # paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')
    http_server_config:
      headers:
        X-Content-Type-Options: nosniff

Every key of that format is either honoured or refused with a message that says what to do
instead; an unknown key is an error (a typo must not silently turn security off).
Differences: only HTTP/1.1 is served (`http2` is accepted and has no effect); the client
auth types that take a client certificate without verifying it, `curve_preferences`,
`rate_limit` and the inline `cert`/`key`/`client_ca` are refused.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import ConfigError
from bridge.yamlfile import read_yaml


class WebConfigError(ConfigError, ValueError):
    """The web-config file cannot be used: the message names the file, the key and the fix."""


CLIENT_AUTH_TYPES = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
# Go's names for client auth types that accept a certificate without verifying it: the
# ssl module cannot do that, and it would not authenticate anybody anyway.
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}

# Go's names of the cipher suites it accepts in `cipher_suites`, to OpenSSL's. The TLS 1.3
# suites cannot be chosen (neither in Go nor here): they are accepted and always on.
TLS12_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
TLS13_CIPHERS = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                 "TLS_CHACHA20_POLY1305_SHA256")

# The response headers the format lets an operator set, with the values allowed when
# the header is an enumeration (exactly as the Go exporters check them).
EXTRA_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

_BCRYPT = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file",
             "client_allowed_sans", "min_version", "max_version", "cipher_suites",
             "prefer_server_cipher_suites")
_HTTP_KEYS = ("http2", "headers")
_REFUSED = {
    "rate_limit": "rate limiting is not supported; remove it (limit scrapes with the "
                  "scrape interval, or in a proxy in front of the bridge)",
    "tls_server_config.cert": "inline certificates are not supported; write the PEM to a "
                              "file and set cert_file",
    "tls_server_config.key": "inline keys are not supported; write the PEM to a file "
                             "(mode 0600) and set key_file",
    "tls_server_config.client_ca": "inline CA certificates are not supported; write the "
                                   "PEM to a file and set client_ca_file",
    "tls_server_config.curve_preferences": "curve preferences are not supported; remove "
                                           "the key (OpenSSL's default groups are used)",
}


@dataclass(frozen=True)
class TlsConfig:
    """`tls_server_config`, paths resolved against the web-config file's directory."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()  # Go's names; TLS 1.2 only
    prefer_server_cipher_suites: bool = True

    @property
    def files(self) -> tuple[Path, ...]:
        """The files a handshake depends on (the server reloads them when they change)."""
        return (self.cert_file, self.key_file,
                *((self.client_ca_file,) if self.client_ca_file else ()))

    def context(self) -> ssl.SSLContext:
        """A server-side SSL context; raises ssl.SSLError or OSError if a file is bad."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        ctx.maximum_version = TLS_VERSIONS[self.max_version]
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            ctx.load_verify_locations(cafile=self.client_ca_file)
        ctx.verify_mode = {"NoClientCert": ssl.CERT_NONE,
                           "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                           "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}[
            self.client_auth_type]
        tls12 = [TLS12_CIPHERS[name] for name in self.cipher_suites if name in TLS12_CIPHERS]
        if tls12:
            ctx.set_ciphers(":".join(tls12))
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def allows(self, peercert: Mapping[str, object] | None) -> bool:
        """Whether a verified client certificate passes `client_allowed_sans` (if set):
        one of its DNS, IP, e-mail or URI subject alternative names must be listed."""
        if not self.client_allowed_sans:
            return True
        if not peercert:
            return False
        names = peercert.get("subjectAltName", ())
        assert isinstance(names, tuple)
        return any(value in self.client_allowed_sans for kind, value in names
                   if kind in ("DNS", "IP Address", "email", "URI"))


@dataclass(frozen=True)
class WebConfig:
    """TLS (None: plain HTTP), basic auth users (none: no auth) and extra headers."""

    path: Path
    tls: TlsConfig | None = None
    # user -> bcrypt hash; not in repr so that no log line ever shows a hash
    basic_auth_users: Mapping[str, str] = field(default_factory=dict, repr=False)
    headers: tuple[tuple[str, str], ...] = ()


def load(path: Path) -> WebConfig:
    """Read and check a web-config file, including that its certificate and key load."""
    try:
        raw = read_yaml(str(path), "web-config file")
    except WebConfigError:
        raise
    except ConfigError as exc:
        raise WebConfigError(str(exc)) from None
    where = _Where(path)
    if raw is None:
        return WebConfig(path)
    top = where.mapping(raw, "", _TOP_KEYS)
    tls = _tls(where, top.get("tls_server_config"), path.parent)
    users = _users(where, top.get("basic_auth_users"))
    headers = _headers(where, top.get("http_server_config"))
    return WebConfig(path, tls, users, headers)


@dataclass(frozen=True)
class _Where:
    """Builds errors that name the file and the key."""

    path: Path

    def error(self, key: str, message: str) -> WebConfigError:
        return WebConfigError(f"{self.path}: {key}: {message}" if key else
                              f"{self.path}: {message}")

    def mapping(self, value: object, key: str, known: tuple[str, ...]) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping of {', '.join(known)}, "
                                  f"not {type(value).__name__}")
        for name in value:
            full = f"{key}.{name}" if key else str(name)
            if full in _REFUSED:
                raise self.error(full, _REFUSED[full])
            if name not in known:
                raise self.error(full, f"unknown key; the keys here are {', '.join(known)}")
        return {str(k): v for k, v in value.items()}

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, not {value!r}")
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of strings, not {value!r}")
        return tuple(value)


def _tls(where: _Where, raw: object, base: Path) -> TlsConfig | None:
    key = "tls_server_config"
    if raw is None or raw == {}:
        return None
    tls = where.mapping(raw, key, _TLS_KEYS)
    for required in ("cert_file", "key_file"):
        if required not in tls:
            raise where.error(f"{key}.{required}", "missing: TLS needs both cert_file and "
                                                   "key_file (or remove tls_server_config "
                                                   "to serve plain HTTP)")

    def file(name: str) -> Path:
        resolved = base / where.string(tls[name], f"{key}.{name}")
        if not resolved.is_file():
            raise where.error(f"{key}.{name}", f"{resolved} is not a readable file (paths "
                                               "are relative to the web-config file)")
        return resolved

    auth = where.string(tls.get("client_auth_type", "NoClientCert"), f"{key}.client_auth_type")
    if auth in _UNVERIFIED_CLIENT_AUTH:
        raise where.error(f"{key}.client_auth_type", f"{auth} takes client certificates "
                          "without verifying them, which authenticates nobody; use "
                          "RequireAndVerifyClientCert with client_ca_file")
    if auth not in CLIENT_AUTH_TYPES:
        raise where.error(f"{key}.client_auth_type", f"{auth!r} is not one of "
                                                     f"{', '.join(CLIENT_AUTH_TYPES)}")
    ca = file("client_ca_file") if "client_ca_file" in tls else None
    if ca is not None and auth == "NoClientCert":
        raise where.error(f"{key}.client_ca_file", "is set but client_auth_type is "
                          "NoClientCert; set client_auth_type: RequireAndVerifyClientCert "
                          "(or remove client_ca_file)")
    if ca is None and auth != "NoClientCert":
        raise where.error(f"{key}.client_ca_file", f"missing: client_auth_type {auth} "
                          "verifies client certificates against the CAs in this file")
    sans = where.strings(tls.get("client_allowed_sans", []), f"{key}.client_allowed_sans")
    if sans and auth != "RequireAndVerifyClientCert":
        raise where.error(f"{key}.client_allowed_sans", "needs client_auth_type: "
                          "RequireAndVerifyClientCert (otherwise a client may send no "
                          "certificate to match)")
    versions = []
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = where.string(tls.get(name, default), f"{key}.{name}")
        if version not in TLS_VERSIONS:
            raise where.error(f"{key}.{name}", f"{version!r} is not one of "
                                               f"{', '.join(TLS_VERSIONS)}")
        versions.append(version)
    if TLS_VERSIONS[versions[0]] > TLS_VERSIONS[versions[1]]:
        raise where.error(f"{key}.min_version", f"{versions[0]} is above max_version "
                                                f"{versions[1]}")
    ciphers = where.strings(tls.get("cipher_suites", []), f"{key}.cipher_suites")
    for name in ciphers:
        if name not in TLS12_CIPHERS and name not in TLS13_CIPHERS:
            raise where.error(f"{key}.cipher_suites", f"unknown cipher suite {name!r}; the "
                              f"known ones are {', '.join((*TLS12_CIPHERS, *TLS13_CIPHERS))}")
    if ciphers and TLS_VERSIONS[versions[0]] < ssl.TLSVersion.TLSv1_3 and \
            not any(name in TLS12_CIPHERS for name in ciphers):
        raise where.error(f"{key}.cipher_suites", "lists no TLS 1.2 suite, so TLS 1.2 "
                          "clients could not connect; add one or set min_version: TLS13")
    config = TlsConfig(
        cert_file=file("cert_file"), key_file=file("key_file"), client_auth_type=auth,
        client_ca_file=ca, client_allowed_sans=sans, min_version=versions[0],
        max_version=versions[1], cipher_suites=ciphers,
        prefer_server_cipher_suites=where.boolean(
            tls.get("prefer_server_cipher_suites", True),
            f"{key}.prefer_server_cipher_suites"))
    try:
        config.context()
    except (ssl.SSLError, OSError) as exc:
        raise where.error(f"{key}.cert_file", f"cannot use {config.cert_file} with "
                          f"{config.key_file}"
                          + (f" and CA file {config.client_ca_file}" if ca else "")
                          + f": {exc}; check that they are PEM files and that key_file is "
                          "the private key of cert_file") from None
    return config


def _users(where: _Where, raw: object) -> dict[str, str]:
    key = "basic_auth_users"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise where.error(key, "must be a mapping of user name to bcrypt hash")
    users = {}
    for user, hashed in raw.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise where.error(f"{key}.{user}", "a user name is a non-empty string without "
                                               "':' (basic auth cannot carry one)")
        # Never quote the value: it may be a password pasted by mistake.
        match = _BCRYPT.fullmatch(hashed) if isinstance(hashed, str) else None
        if match is None or not 4 <= int(match.group(1)) <= 31:
            raise where.error(f"{key}.{user}", "is not a bcrypt hash ($2y$10$ followed by 53 "
                                               "characters); make one with "
                                               "htpasswd -nBC 10 \"\" | tr -d ':\\n'")
        users[user] = hashed
    return users


def _headers(where: _Where, raw: object) -> tuple[tuple[str, str], ...]:
    key = "http_server_config"
    if raw is None:
        return ()
    http = where.mapping(raw, key, _HTTP_KEYS)
    if "http2" in http:
        where.boolean(http["http2"], f"{key}.http2")  # only HTTP/1.1 is served either way
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise where.error(f"{key}.headers", "must be a mapping of header name to value")
    out = []
    for name, value in headers.items():
        full = f"{key}.headers.{name}"
        if name not in EXTRA_HEADERS:
            raise where.error(full, f"cannot be set; the headers that can are "
                                    f"{', '.join(EXTRA_HEADERS)}")
        text = where.string(value, full)
        if "\r" in text or "\n" in text:
            raise where.error(full, "a header value is one line")
        allowed = EXTRA_HEADERS[name]
        if allowed and text not in allowed:
            raise where.error(full, f"{text!r} is not one of {', '.join(allowed)}")
        out.append((name, text))
    return tuple(out)
