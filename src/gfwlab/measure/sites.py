"""Probe sites in the lab: every host name of a test list gets its own address, DNS and TLS.

The ``i``-th name the lab is asked to serve gets ``198.19.1.0 + i`` (up to 198.19.239.255:
61,184 sites) and keeps it while the lab is up, an address
local to the server namespace (:data:`gfwlab.live.topology.SITES_V4`), so a residual block that
one site's measurement starts (keyed on client IP, server IP and port, spec §3, §4a, §5) never
touches another site's. For the running lab this module writes:

- ``sites.hosts`` in the lab's state folder (``ADDRESS NAME`` lines), which dnsmasq reads with
  ``--addn-hosts`` and rereads on SIGHUP: the lab's DNS answers each name with its address;
- ``site-certs/`` (certificates signed by the lab CA, a few dozen names each, so none comes
  near OpenSSL's 100 kB limit, see :mod:`gfwlab.lab.ca`) and ``site-certs.map``, the nginx
  ``map`` from SNI to certificate that the lab's default HTTPS server reads, reloaded by SIGHUP.

nginx already answers any host name on every address (the default server listens on the
wildcard address). Nothing here reaches the censor: the files are written on the host and the
services are signalled by pid.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Sequence

from gfwlab.errors import LabError
from gfwlab.lab import ca
from gfwlab.lab.services import in_netns
from gfwlab.lab.state import LabState
from gfwlab.live.topology import SERVER_NS, SERVER_V4

FIRST_SITE = int(ipaddress.IPv4Address("198.19.1.0"))
LAST_SITE = int(ipaddress.IPv4Address("198.19.239.255"))
MAX_SITES = LAST_SITE - FIRST_SITE + 1
SHARD_BYTES = 2000
"""Subject-alternative-name bytes per site certificate (a few dozen names)."""


def site_address(index: int) -> str:
    """The lab address of site number ``index`` (0-based)."""
    if not 0 <= index < MAX_SITES:
        raise LabError(f"the lab has addresses for {MAX_SITES} probe sites, not {index + 1}")
    return str(ipaddress.IPv4Address(FIRST_SITE + index))


def assign(hosts: Sequence[str], known: dict[str, str] | None = None) -> dict[str, str]:
    """Host name -> its lab address: the ``known`` ones keep theirs (a name keeps its address
    for the lab's lifetime, so runs with different lists never share an address), new ones
    take the next free addresses in list order."""
    if len(hosts) > MAX_SITES:
        raise LabError(f"{len(hosts)} host names: the lab has addresses for {MAX_SITES} sites")
    out = dict(known or {})
    new = [h for h in dict.fromkeys(hosts) if h not in out]
    if len(out) + len(new) > MAX_SITES:  # start over: only this list's names
        out = {}
        new = list(dict.fromkeys(hosts))
    used = {int(ipaddress.IPv4Address(a)) - FIRST_SITE for a in out.values()}
    index = 0
    for h in new:
        while index in used:
            index += 1
        out[h] = site_address(index)
        index += 1
    return out


def served(path: str) -> dict[str, str]:
    """The names a ``sites.hosts`` file maps, name -> address."""
    return {name: addr for addr, name in _pairs(path)}


def _pairs(path: str) -> list[tuple[str, str]]:
    """The two-column lines of one of the lab's site files (none if it cannot be read)."""
    try:
        with open(path, encoding="ascii") as fh:
            return [(p[0], p[1]) for p in (line.split() for line in fh) if len(p) == 2]
    except (OSError, UnicodeDecodeError):
        return []


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _signal(st: LabState, name: str) -> None:
    for entry in st.processes():
        if entry.get("name") == name and isinstance(entry.get("pid"), int):
            try:
                os.kill(entry["pid"], signal.SIGHUP)
            except ProcessLookupError:
                raise LabError(f"the lab's {name} is not running (gfwlab lab status)") from None
            return
    raise LabError(f"the lab has no {name} (is it up? gfwlab lab up)")


def _check_serves_sites(st: LabState) -> None:
    """Refuse, before writing or signalling anything, a lab whose services were not started
    to read the site files (a lab made by an older gfwlab)."""
    dnsmasq = [p for p in st.processes() if p.get("name") == "dnsmasq"]
    hosts_ok = any(
        any(str(a).startswith("--addn-hosts=") for a in p.get("argv", [])) for p in dnsmasq
    )
    try:
        with open(st.file("nginx.conf"), encoding="utf-8") as fh:
            nginx_ok = "$gfwlab_site_cert" in fh.read()
    except OSError:
        nginx_ok = False
    if not (hosts_ok and nginx_ok):
        raise LabError(
            "the lab that is up cannot serve probe sites (it was made by another gfwlab "
            "version); gfwlab lab down, then lab up"
        )


def _cert_map(path: str) -> dict[str, str]:
    """The names ``site-certs.map`` gives a certificate, name -> certificate file."""
    return {name: cert.rstrip(";") for name, cert in _pairs(path)}


def _lean(cert_file: str, key_file: str) -> None:
    """Make a site's files cheap to load: nginx loads a site's certificate and key on every
    handshake (the certificate is a ``map`` variable), and the probe and its control parse
    what the server sends. The certificate file keeps only the site's own certificate (the
    lab CA is the clients' trust anchor: a server need not send it, and most do not), and the
    EC key is written as SEC 1 (``EC PRIVATE KEY``), which OpenSSL 3 reads in half the time
    of PKCS #8. Together about 2 ms less per handshake on the lab's machine."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    with open(cert_file, "rb") as fh:
        pem = fh.read()
    end = b"-----END CERTIFICATE-----\n"
    leaf = pem[: pem.index(end) + len(end)] if end in pem else pem
    with open(key_file, "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), None)
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    for path, data, mode in ((cert_file, leaf, 0o644), (key_file, sec1, 0o600)):
        tmp = f"{path}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)


def install(hosts: Sequence[str], *, timeout: float = 60.0) -> dict[str, str]:
    """Serve ``hosts`` in the running lab (with the names served before); return host name
    -> address for ``hosts``.

    Only names not served yet get certificates (a new folder of ``site-certs/`` per call that
    adds names); a list served already changes nothing, so probing it again costs no
    certificates and no reload. Waits until dnsmasq answers the last name with its address
    and nginx presents a certificate for it (both checked from the server namespace, without
    the censor).
    """
    st = LabState.load()
    if st.status != "up":
        raise LabError("the lab is not up (gfwlab lab up)")
    _check_serves_sites(st)
    known = served(st.file("sites.hosts"))
    everything = assign(hosts, known)
    mapping = {h: everything[h] for h in dict.fromkeys(hosts)}
    cert_dir, map_file = st.file("site-certs"), st.file("site-certs.map")
    certified = _cert_map(map_file)
    kept = all(everything.get(h) == a for h, a in known.items())  # not started over
    if not kept or not all(os.path.exists(c) for c in set(certified.values())):
        shutil.rmtree(cert_dir, ignore_errors=True)
        certified = {}
    new = [h for h in everything if ca.dns_name(h) == h and h not in certified]
    if new:
        os.makedirs(cert_dir, exist_ok=True)
        batch = os.path.join(cert_dir, f"batch-{len(os.listdir(cert_dir))}")
        ca_cert, ca_key = st.file("ca/ca.pem"), st.file("ca/ca.key")
        certs = ca.make_server_certs(batch, ca_cert, ca_key, new, [], max_bytes=SHARD_BYTES)
        for c in certs:
            _lean(c.cert, c.key)
            certified.update((n, os.path.abspath(c.cert)) for n in c.names)
        _write_atomic(map_file, "".join(f"{n} {c};\n" for n, c in certified.items()))
        _signal(st, "nginx")
    if everything != known:
        _write_atomic(st.file("sites.hosts"), "".join(f"{a} {h}\n" for h, a in everything.items()))
        _signal(st, "dnsmasq")
    if mapping:
        last = list(mapping)[-1]
        _wait_served(last, mapping[last], st.file("ca/ca.pem"), timeout)
    return mapping


def _wait_served(host: str, address: str, ca_file: str, timeout: float) -> None:
    import dns.message  # noqa: PLC0415
    import dns.query  # noqa: PLC0415

    ctx = ssl.create_default_context(cafile=ca_file)

    def check() -> str | None:
        deadline = time.monotonic() + timeout
        why = "not tried"
        while time.monotonic() < deadline:
            try:
                reply = dns.query.udp(dns.message.make_query(host, "A"), SERVER_V4, timeout=1)
                got = [r.address for rr in reply.answer for r in rr if hasattr(r, "address")]
                if got != [address]:
                    why = f"DNS answers {got} for {host}"
                    time.sleep(0.1)
                    continue
                with (
                    socket.create_connection((address, 443), timeout=2) as raw,
                    ctx.wrap_socket(raw, server_hostname=host),
                ):
                    return None
            except (OSError, ssl.SSLError, dns.exception.DNSException) as exc:
                why = f"{host}: {exc}"
                time.sleep(0.1)
        return why

    import dns.exception  # noqa: PLC0415

    why = in_netns(SERVER_NS, check)
    if why is not None:
        raise LabError(f"the lab did not start serving the probe sites: {why}")
