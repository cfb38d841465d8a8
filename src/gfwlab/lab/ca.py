"""The lab's own certificate authority and the server certificate it signs.

The server namespace answers for *every* host name, so its certificate names every domain the
lab is asked about (each with a ``*.`` wildcard so subdomains verify too) plus the server's
addresses. Clients trust it through ``ca.pem`` (or ``ca-bundle.pem``, the system bundle with the
lab CA appended).

Files written, all into the given directory:

``ca.pem`` / ``ca.key``
    the CA certificate and its key (EC P-256, PKCS#8, mode 0600).
``server.pem`` / ``server.key``
    the leaf certificate followed by the CA certificate, and the leaf key (mode 0600).
``server-1.pem`` / ``server-1.key`` ...
    further leaves when :func:`make_server_certs` splits a long name list.
``ca-bundle.pem``
    the system trust bundle (if there is one) followed by the lab CA.

Size matters: each name costs about 40 bytes of certificate (name and wildcard), so 2,500
names make a ~100 kB certificate. OpenSSL clients (curl, Python's ``ssl``) refuse a certificate
list larger than 100 kB by default (``SSL_CTX_set_max_cert_list``) with "excessive message
size"; see :data:`OPENSSL_MAX_CERT_LIST`. :func:`make_server_certs` splits a long list over
several certificates that a server chooses between by SNI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CA_BUNDLE = "ca-bundle.pem"
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, BSDs
)
CA_COMMON_NAME = "gfwlab lab CA"
SERVER_COMMON_NAME = "gfwlab lab server"
CA_VALIDITY = dt.timedelta(days=365)
BACKDATE = dt.timedelta(days=1)
OPENSSL_MAX_CERT_LIST = 100 * 1024
"""OpenSSL's default limit on the size of a peer's certificate list, in bytes."""

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(slots=True)
class NameSet:
    """Host names and addresses ready to go into a certificate, and what had to be skipped."""

    dns: list[str] = field(default_factory=list)
    """Valid, lower-case, ASCII (IDNA-encoded) DNS names, deduplicated, in first-seen order."""
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=list)
    """Addresses, deduplicated; names that were address literals end up here too."""
    skipped: list[str] = field(default_factory=list)
    """Inputs that are neither a valid DNS name nor an address."""


def dns_name(name: str) -> str | None:
    """``name`` as a certificate-ready DNS name (lower case, IDNA, no trailing dot), or None.

    A leading ``*.`` is dropped (the certificate gets the wildcard anyway). Labels must be
    letters, digits and inner hyphens, 1-63 characters; the whole name at most 253.
    """
    name = name.strip().rstrip(".").lower()
    name = name.removeprefix("*.")
    if not name:
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    if len(name) > 253:
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


def normalize_names(names: Iterable[str], ips: Iterable[str] = ()) -> NameSet:
    """Validate, IDNA-encode and deduplicate ``names`` and ``ips`` for :func:`make_server_cert`.

    Invalid addresses in ``ips`` raise ValueError (they are configuration, not data); invalid
    names are counted in :attr:`NameSet.skipped` and otherwise ignored.
    """
    out = NameSet()
    seen_ip: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()

    def add_ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        if addr not in seen_ip:
            seen_ip.add(addr)
            out.ips.append(addr)

    for ip in ips:
        add_ip(ipaddress.ip_address(ip.strip().strip("[]")))
    seen: set[str] = set()
    for raw in names:
        try:
            add_ip(ipaddress.ip_address(raw.strip().strip("[]")))
            continue
        except ValueError:
            pass
        name = dns_name(raw)
        if name is None:
            out.skipped.append(raw)
        elif name not in seen:
            seen.add(name)
            out.dns.append(name)
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_ca(ca_cert: str, ca_key: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read a CA written by :func:`make_ca`."""
    with open(ca_cert, "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    with open(ca_key, "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key}: not an EC private key")
    return cert, key


LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
"""The key usage of every certificate the lab CA signs for a server or a client: signatures
only (ECDSA keys; the extended key usage says which end)."""


def make_ca(directory: str, *, reuse: bool = False) -> tuple[str, str]:
    """Create the lab CA in ``directory``; return the paths of ``ca.pem`` and ``ca.key``.

    The CA is an EC P-256 key with a self-signed certificate (CN "gfwlab lab CA",
    basicConstraints CA:TRUE critical, keyUsage keyCertSign + cRLSign critical) valid from one
    day ago for a year. With ``reuse`` an existing, loadable, still-valid CA in ``directory`` is
    kept (so a CA once imported into a browser keeps working); otherwise a new one replaces it.
    """
    os.makedirs(directory, exist_ok=True)
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    if reuse and os.path.exists(cert_path) and os.path.exists(key_path):
        try:
            cert, _ = load_ca(cert_path, key_path)
        except (ValueError, OSError):
            pass
        else:
            if cert.not_valid_after_utc - _now() > dt.timedelta(days=7):
                return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gfwlab"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _sign_server_cert(
    directory: str,
    stem: str,
    ca: x509.Certificate,
    signer: ec.EllipticCurvePrivateKey,
    dns: list[str],
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> tuple[str, str, int]:
    """Sign one leaf for ``dns`` (each also as ``*.name``) and ``ips``; write STEM.pem/.key."""
    sans: list[x509.GeneralName] = []
    for name in dns:
        sans.append(x509.DNSName(name))
        sans.append(x509.DNSName("*." + name))
    sans.extend(x509.IPAddress(ip) for ip in ips)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now - BACKDATE + CA_VALIDITY, ca.not_valid_after_utc)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, SERVER_COMMON_NAME),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gfwlab"),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    cert_path = os.path.join(directory, stem + ".pem")
    key_path = os.path.join(directory, stem + ".key")
    _write(key_path, _key_pem(key), 0o600)
    _write(
        cert_path,
        cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM),
    )
    return cert_path, key_path, len(cert.public_bytes(serialization.Encoding.DER))


def _checked(names: Iterable[str], ips: Iterable[str]) -> NameSet:
    wanted = normalize_names(names, ips)
    if wanted.skipped:
        log.info("server certificate: skipped %d invalid name(s)", len(wanted.skipped))
    if not wanted.dns and not wanted.ips:
        raise ValueError("no valid host name or address to put in the server certificate")
    return wanted


def make_server_cert(
    directory: str,
    ca_cert: str,
    ca_key: str,
    names: Iterable[str],
    ips: Iterable[str],
) -> tuple[str, str]:
    """Sign one server certificate for ``names`` and ``ips``; return paths of server.pem/.key.

    Every valid DNS name ``n`` gets the SANs ``n`` and ``*.n`` (one level of subdomain);
    every address an IP SAN. Unicode names are IDNA-encoded, duplicates dropped, invalid
    names skipped (their number is logged at INFO; :func:`normalize_names` gives the list).
    The certificate has extendedKeyUsage serverAuth and is valid from one day ago for a year
    (but not beyond the CA). ``server.pem`` holds the leaf followed by the CA certificate;
    ``server.key`` (mode 0600) a fresh EC P-256 key. Raises ValueError when nothing valid is
    left to certify. Above ~2,500 names OpenSSL clients reject the certificate as too large:
    use :func:`make_server_certs` for long lists.
    """
    os.makedirs(directory, exist_ok=True)
    wanted = _checked(names, ips)
    ca, signer = load_ca(ca_cert, ca_key)
    cert_path, key_path, size = _sign_server_cert(
        directory, "server", ca, signer, wanted.dns, wanted.ips
    )
    if size > OPENSSL_MAX_CERT_LIST:
        log.warning(
            "server certificate is %d kB (%d names): OpenSSL clients such as curl reject "
            "certificate lists over %d kB by default; use make_server_certs",
            size // 1024,
            len(wanted.dns),
            OPENSSL_MAX_CERT_LIST // 1024,
        )
    return cert_path, key_path


@dataclass(frozen=True, slots=True)
class ServerCert:
    """One certificate of a set made by :func:`make_server_certs`."""

    cert: str
    key: str
    names: tuple[str, ...]
    """The DNS names it covers (each also as ``*.name``), IDNA-encoded."""


SHARD_BYTES = 48 * 1024
"""SAN bytes per certificate in :func:`make_server_certs`: well below OpenSSL's 100 kB."""


def make_server_certs(
    directory: str,
    ca_cert: str,
    ca_key: str,
    names: Iterable[str],
    ips: Iterable[str],
    *,
    max_bytes: int = SHARD_BYTES,
) -> list[ServerCert]:
    """Like :func:`make_server_cert` but split over as many certificates as the names need.

    Each certificate carries at most about ``max_bytes`` of subject alternative names, so
    every one stays acceptable to OpenSSL clients however long the list. The first is
    ``server.pem``/``server.key`` and also carries every address in ``ips`` (it is the one to
    use as the default); the others are ``server-1.pem``/``.key``, ``server-2.pem`` ... A
    server picks among them by SNI (:func:`gfwlab.lab.services.nginx_argv` and the HTTP/3
    server take the list as ``sni_certs``). 100,000 names take about two seconds.
    """
    os.makedirs(directory, exist_ok=True)
    wanted = _checked(names, ips)
    ca, signer = load_ca(ca_cert, ca_key)
    shards: list[list[str]] = [[]]
    used = sum(18 if ip.version == 6 else 6 for ip in wanted.ips)
    for name in wanted.dns:
        cost = 2 * len(name) + 8
        if shards[-1] and used + cost > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += cost
    out: list[ServerCert] = []
    for i, shard in enumerate(shards):
        stem = "server" if i == 0 else f"server-{i}"
        cert_path, key_path, _ = _sign_server_cert(
            directory, stem, ca, signer, shard, wanted.ips if i == 0 else []
        )
        out.append(ServerCert(cert_path, key_path, tuple(shard)))
    return out


def system_bundle() -> str | None:
    """The system's CA bundle file, if one of the usual ones exists."""
    for path in SYSTEM_BUNDLES:
        if os.path.isfile(path):
            return path
    return None


def ca_bundle(directory: str, ca_cert: str) -> str:
    """Write ``ca-bundle.pem``: the system bundle (when there is one) plus the lab CA."""
    os.makedirs(directory, exist_ok=True)
    data = b""
    system = system_bundle()
    if system is not None:
        with open(system, "rb") as fh:
            data = fh.read()
        if data and not data.endswith(b"\n"):
            data += b"\n"
    with open(ca_cert, "rb") as fh:
        data += fh.read()
    path = os.path.join(directory, CA_BUNDLE)
    _write(path, data)
    return path
