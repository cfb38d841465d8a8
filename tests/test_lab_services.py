"""The lab's server-side services: the CA, nginx, dnsmasq and the HTTP/3 server and client.

The CA and configuration tests run anywhere. The live tests build their own pair of network
namespaces (``gfwsvc-c`` and ``gfwsvc-s`` joined by a veth pair, 198.18.200.0/30 and
2001:db8:200::/64), run the real services in the server side and talk to them from the client
side with curl, dig and ``python -m gfwlab.lab.h3``; they need root and the tools, and tear
everything down afterwards even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from gfwlab.lab import ca as lab_ca
from gfwlab.lab import h3
from gfwlab.lab import services as sv

CLIENT_NS, SERVER_NS = "gfwsvc-c", "gfwsvc-s"
CLIENT_V4, SERVER_V4 = "198.18.200.1", "198.18.200.2"
CLIENT_V6, SERVER_V6 = "2001:db8:200::1", "2001:db8:200::2"
EXTRA_V4 = "198.18.201.2"
"""A second server address (its own /32, routed on-link by the client)."""
ABSENT_V6 = "2001:db8:200::99"
"""An address on the test link that nobody has: datagrams to it vanish (no neighbour)."""
ANSWER_V4, ANSWER_V6 = "198.19.0.2", "2001:db8:5::2"
LISTED = ["www.anything.test", "blocked.example", "bücher.example"]
FILLER = [f"www{i}.filler{i % 13}.example" for i in range(3000)]
"""Enough names that the server needs several certificates and chooses by SNI."""

TOOLS = ("ip", "nginx", "dnsmasq", "curl", "dig")
missing = [t for t in TOOLS if shutil.which(t) is None]
UNABLE = "needs root" if os.geteuid() != 0 else f"missing programs: {', '.join(missing)}"
live = pytest.mark.skipif(os.geteuid() != 0 or bool(missing), reason=UNABLE)
pytestmark = pytest.mark.live


def leaf(path: str) -> x509.Certificate:
    with open(path, "rb") as fh:
        return x509.load_pem_x509_certificates(fh.read())[0]


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def verify(ca_pem: str, cert_pem: str, name: str) -> None:
    """Verify ``cert_pem`` for ``name`` against the CA the way a TLS client would."""
    with open(ca_pem, "rb") as fh:
        store = verification.Store(x509.load_pem_x509_certificates(fh.read()))
    verifier = verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf(cert_pem), [])


# --- the CA ---------------------------------------------------------------------------------


@pytest.fixture
def ca_dir(tmp_path: Path) -> tuple[str, str, str]:
    cert, key = lab_ca.make_ca(str(tmp_path))
    return str(tmp_path), cert, key


def test_make_ca(ca_dir):
    directory, cert_path, key_path = ca_dir
    assert cert_path == os.path.join(directory, "ca.pem")
    assert key_path == os.path.join(directory, "ca.key")
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    cert = leaf(cert_path)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == (
        "gfwlab lab CA"
    )
    assert cert.issuer == cert.subject
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    age = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 364 <= age.days <= 366
    with open(key_path, "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_make_ca_reuse(ca_dir):
    directory, cert_path, _ = ca_dir
    before = Path(cert_path).read_bytes()
    lab_ca.make_ca(directory, reuse=True)
    assert Path(cert_path).read_bytes() == before
    lab_ca.make_ca(directory)
    assert Path(cert_path).read_bytes() != before


def test_server_cert_verifies_for_names_subdomains_and_ips(ca_dir):
    directory, ca_cert, ca_key = ca_dir
    cert_path, key_path = lab_ca.make_server_cert(
        directory, ca_cert, ca_key, LISTED, [SERVER_V4, SERVER_V6]
    )
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    pem = Path(cert_path).read_bytes()
    assert len(x509.load_pem_x509_certificates(pem)) == 2  # leaf, then the CA
    for name in (
        "www.anything.test",
        "sub.www.anything.test",
        "blocked.example",
        "x.blocked.example",
        "xn--bcher-kva.example",
    ):
        verify(ca_cert, cert_path, name)
    with pytest.raises(verification.VerificationError):
        verify(ca_cert, cert_path, "elsewhere.example")
    with pytest.raises(verification.VerificationError):
        verify(ca_cert, cert_path, "a.b.blocked.example")  # wildcards cover one level
    cert = leaf(cert_path)
    ips = {str(ip) for ip in sans(cert).get_values_for_type(x509.IPAddress)}
    assert ips == {SERVER_V4, SERVER_V6}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.ExtendedKeyUsageOID.SERVER_AUTH in eku
    if shutil.which("openssl"):
        res = subprocess.run(
            ["openssl", "verify", "-CAfile", ca_cert, cert_path],
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stderr


def test_names_are_normalised_deduplicated_and_invalid_ones_skipped(ca_dir):
    names = [
        "Example.COM.",
        "example.com",
        "*.example.com",
        "bücher.example",
        "198.19.0.7",
        "bad_name.example",
        "-lead.example",
        "a..b",
        "",
        "x" * 64 + ".example",
        "[2001:db8::7]",
        "ok-name.example",
    ]
    got = lab_ca.normalize_names(names, ["198.19.0.2"])
    assert got.dns == ["example.com", "xn--bcher-kva.example", "ok-name.example"]
    assert [str(ip) for ip in got.ips] == ["198.19.0.2", "198.19.0.7", "2001:db8::7"]
    assert len(got.skipped) == 5
    directory, ca_cert, ca_key = ca_dir
    cert_path, _ = lab_ca.make_server_cert(directory, ca_cert, ca_key, names, [])
    dns = sans(leaf(cert_path)).get_values_for_type(x509.DNSName)
    assert dns == [
        "example.com",
        "*.example.com",
        "xn--bcher-kva.example",
        "*.xn--bcher-kva.example",
        "ok-name.example",
        "*.ok-name.example",
    ]
    with pytest.raises(ValueError, match="no valid"):
        lab_ca.make_server_cert(directory, ca_cert, ca_key, ["bad_name"], [])


def test_thousands_of_names_are_fast(ca_dir):
    directory, ca_cert, ca_key = ca_dir
    names = [f"www.site{i}.example{i % 7}.com" for i in range(5000)]
    start = time.perf_counter()
    cert_path, _ = lab_ca.make_server_cert(directory, ca_cert, ca_key, names[:3000], [])
    assert time.perf_counter() - start < 2.0
    assert len(sans(leaf(cert_path)).get_values_for_type(x509.DNSName)) == 6000
    start = time.perf_counter()
    lab_ca.make_server_cert(directory, ca_cert, ca_key, names, [])
    assert time.perf_counter() - start < 2.0
    verify(ca_cert, cert_path, names[2999])


def test_server_certs_split_long_lists_below_the_openssl_limit(ca_dir):
    directory, ca_cert, ca_key = ca_dir
    certs = lab_ca.make_server_certs(directory, ca_cert, ca_key, [*FILLER, *LISTED], [SERVER_V4])
    assert len(certs) > 1
    assert certs[0].cert == os.path.join(directory, "server.pem")
    assert certs[1].cert == os.path.join(directory, "server-1.pem")
    covered = [n for c in certs for n in c.names]
    assert len(covered) == len(set(covered)) == len(FILLER) + len(LISTED)
    for c in certs:
        der = leaf(c.cert).public_bytes(serialization.Encoding.DER)
        assert len(der) < lab_ca.OPENSSL_MAX_CERT_LIST
        verify(ca_cert, c.cert, "sub." + c.names[-1])
    ips = sans(leaf(certs[0].cert)).get_values_for_type(x509.IPAddress)
    assert [str(ip) for ip in ips] == [SERVER_V4]


def test_ca_bundle(ca_dir):
    directory, ca_cert, _ = ca_dir
    path = lab_ca.ca_bundle(directory, ca_cert)
    data = Path(path).read_bytes()
    assert data.endswith(Path(ca_cert).read_bytes())
    system = lab_ca.system_bundle()
    if system is not None:
        assert data.startswith(Path(system).read_bytes()[:1000])


# --- configuration --------------------------------------------------------------------------


def test_dnsmasq_argv(tmp_path):
    argv = sv.dnsmasq_argv(
        str(tmp_path), answer_v4=ANSWER_V4, answer_v6=ANSWER_V6, listen=[SERVER_V4, SERVER_V6]
    )
    assert "--keep-in-foreground" in argv
    assert {"--no-resolv", "--no-hosts", "--bind-dynamic", "--user=root"} <= set(argv)
    assert f"--listen-address={SERVER_V4}" in argv
    assert f"--listen-address={SERVER_V6}" in argv
    assert f"--address=/#/{ANSWER_V4}" in argv
    assert f"--address=/#/{ANSWER_V6}" in argv
    assert f"--log-facility={tmp_path}/dnsmasq.log" in argv
    assert not any(a.startswith("--dhcp") for a in argv)
    with pytest.raises(ValueError):
        sv.dnsmasq_argv(str(tmp_path), answer_v4="nonsense", answer_v6="", listen=[SERVER_V4])


def test_h3_server_argv(tmp_path, ca_dir):
    directory, ca_cert, ca_key = ca_dir
    certs = lab_ca.make_server_certs(directory, ca_cert, ca_key, LISTED, [])
    argv = sv.h3_server_argv(
        str(tmp_path), certs[0].cert, certs[0].key, host=[SERVER_V4, SERVER_V6], sni_certs=certs
    )
    assert argv[:4] == [sys.executable, "-m", "gfwlab.lab.h3", "serve"]
    assert argv.count("--host") == 2
    assert argv[argv.index("--port") + 1] == "443"
    sni_map = json.loads((tmp_path / "h3-certs.json").read_text())
    assert sni_map[0]["names"] == list(certs[0].names)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_nginx_config_passes_nginx_t(tmp_path, ca_dir):
    directory, ca_cert, ca_key = ca_dir
    certs = lab_ca.make_server_certs(directory, ca_cert, ca_key, [*FILLER, *LISTED], [SERVER_V4])
    state = tmp_path / "state"
    # nginx -t binds the addresses, so use ones that exist here.
    argv = sv.nginx_argv(
        str(state),
        certs[0].cert,
        certs[0].key,
        listen_v4=["127.0.0.1"],
        listen_v6=["::1"],
        sni_certs=certs,
        access_log=False,
        alt_svc_h3=443,
        http_port=free_tcp_port(),
        https_port=free_tcp_port(),
    )
    assert argv[-4:] == ["-c", str(state / "nginx.conf"), "-e", str(state / "nginx-error.log")]
    conf = (state / "nginx.conf").read_text()
    for needle in (
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"pid {state}/nginx.pid;",
        "worker_connections 4096;",
        "keepalive_requests 100000;",
        "access_log off;",
        "server_name _;",
        "listen 127.0.0.1:",
        " default_server;",
        "listen [::1]:",
        'return 200 "gfwlab lab server: $host\\n";',
        "client_body_temp_path",
        "$ssl_server_name",
        "Alt-Svc",
        ".www.anything.test",
    ):
        assert needle in conf, needle
    assert "/var/" not in conf
    assert sv.nginx_check(argv) is None
    assert (state / "nginx-bytes" / "1024").stat().st_size == 1024


# --- HTTP/3 on loopback ---------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; return the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return int(proc.returncode)


def test_h3_loopback(tmp_path, ca_dir):
    directory, ca_cert, ca_key = ca_dir
    certs = lab_ca.make_server_certs(directory, ca_cert, ca_key, [*FILLER, *LISTED], ["127.0.0.1"])
    port = free_udp_port()
    argv = sv.h3_server_argv(
        str(tmp_path), certs[0].cert, certs[0].key, host="127.0.0.1", port=port, sni_certs=certs
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sv.wait_quic(None, "127.0.0.1", port, 20, proc=proc)
        status, body = h3.get(
            f"https://sub.blocked.example:{port}/",
            ca=ca_cert,
            connect_ip="127.0.0.1",
            local_port=None,
            timeout=10,
        )
        assert (status, body) == (
            200,
            f"gfwlab lab server over HTTP/3: sub.blocked.example:{port}\n".encode(),
        )
        status, body = h3.get(
            f"https://127.0.0.1:{port}/bytes/5000",
            ca=ca_cert,
            connect_ip=None,
            local_port=None,
            timeout=10,
        )
        assert (status, body) == (200, bytes(5000))
        with pytest.raises(ConnectionError, match="doesn't match"):
            h3.get(
                f"https://unlisted.example:{port}/",
                ca=ca_cert,
                connect_ip="127.0.0.1",
                local_port=None,
                timeout=10,
            )
    finally:
        assert stop(proc) == 0
    log = (tmp_path / "h3.log").read_text()
    assert "sni=sub.blocked.example" in log
    assert '"GET /bytes/5000"' in log


def test_h3_get_exit_codes(tmp_path, ca_dir):
    port = free_udp_port()  # nothing listens there: the kernel answers port unreachable
    cmd = [
        sys.executable,
        "-m",
        "gfwlab.lab.h3",
        "get",
        f"https://x.test:{port}/",
        "--connect-ip",
        "127.0.0.1",
        "--timeout",
        "3",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "refused" in res.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # open, never answers
        silent.bind(("127.0.0.1", 0))
        cmd[4] = f"https://x.test:{silent.getsockname()[1]}/"
        cmd[-1] = "0.5"
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 28
    assert "timed out" in res.stderr
    res = subprocess.run([*cmd[:4], "http://x.test/"], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "not an https URL" in res.stderr


# --- live: namespaces -----------------------------------------------------------------------


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def in_client(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", CLIENT_NS, *argv, check=False, timeout=timeout)


def https_get(
    lab, name: str, addr: str, path: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """curl ``https://NAME/PATH`` at ``addr`` from the client namespace, trusting the lab's CA."""
    tls = ["curl", "-sS", "--max-time", "10", "--cacert", lab.ca, "--resolve", f"{name}:443:{addr}"]
    return in_client(*tls, *extra, f"https://{name}{path}")


def h3_get(lab, url: str, addr: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``gfwlab.lab.h3 get URL`` from the client namespace, trusting the lab's CA."""
    h3 = [sys.executable, "-m", "gfwlab.lab.h3", "get", url, "--ca", lab.ca, "--connect-ip", addr]
    return in_client(*h3, *extra)


def delete_namespaces() -> None:
    existing = run("ip", "netns", "list", check=False).stdout.split()
    for ns in (CLIENT_NS, SERVER_NS):
        if ns not in existing:
            continue
        for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run("ip", "netns", "del", ns, check=False)


@dataclass
class Lab:
    dir: Path
    ca: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0 or missing:
        pytest.skip(UNABLE)
    delete_namespaces()  # left over from an interrupted run
    state = tmp_path_factory.mktemp("lab")
    logs: list[object] = []
    lab = Lab(state, "")
    try:
        try:
            run("ip", "netns", "add", CLIENT_NS)
        except AssertionError as exc:
            pytest.skip(f"cannot make network namespaces here: {exc}")
        run("ip", "netns", "add", SERVER_NS)
        run(
            "ip",
            "link",
            "add",
            "gfwsvc0",
            "netns",
            CLIENT_NS,
            "type",
            "veth",
            "peer",
            "name",
            "gfwsvc1",
            "netns",
            SERVER_NS,
        )
        for ns, dev, v4, v6 in (
            (CLIENT_NS, "gfwsvc0", CLIENT_V4, CLIENT_V6),
            (SERVER_NS, "gfwsvc1", SERVER_V4, SERVER_V6),
        ):
            run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{v4}/30", "dev", dev)
            run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            run("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
        run(
            "ip",
            "netns",
            "exec",
            SERVER_NS,
            "ip",
            "addr",
            "add",
            f"{EXTRA_V4}/32",
            "dev",
            "gfwsvc1",
        )
        run(
            "ip",
            "netns",
            "exec",
            CLIENT_NS,
            "ip",
            "route",
            "add",
            f"{EXTRA_V4}/32",
            "dev",
            "gfwsvc0",
        )

        ca_cert, ca_key = lab_ca.make_ca(str(state))
        lab.ca = ca_cert
        # The names under test go last, so they are not in the default certificate and the
        # servers must choose by SNI.
        certs = lab_ca.make_server_certs(
            str(state), ca_cert, ca_key, [*FILLER, *LISTED], [SERVER_V4, SERVER_V6]
        )
        assert len(certs) > 1
        argvs = {
            "nginx": sv.nginx_argv(
                str(state),
                certs[0].cert,
                certs[0].key,
                listen_v4=[SERVER_V4],
                listen_v6=[SERVER_V6],
                sni_certs=certs,
            ),
            "dnsmasq": sv.dnsmasq_argv(
                str(state), answer_v4=ANSWER_V4, answer_v6=ANSWER_V6, listen=[SERVER_V4, SERVER_V6]
            ),
            "h3": sv.h3_server_argv(
                str(state),
                certs[0].cert,
                certs[0].key,
                host=[SERVER_V4, SERVER_V6],
                sni_certs=certs,
            ),
        }
        assert sv.nginx_check(argvs["nginx"], SERVER_NS) is None
        for name, argv in argvs.items():
            out = open(state / f"{name}.out", "wb")  # noqa: SIM115 - closed in teardown
            logs.append(out)
            lab.procs[name] = subprocess.Popen(
                ["ip", "netns", "exec", SERVER_NS, *argv], stdout=out, stderr=subprocess.STDOUT
            )
        ready = {
            "nginx": sv.wait_tcp(SERVER_NS, SERVER_V4, 443, 20, proc=lab.procs["nginx"])
            and sv.wait_tcp(SERVER_NS, SERVER_V6, 80, 20, proc=lab.procs["nginx"]),
            "dnsmasq": sv.wait_dns(SERVER_NS, SERVER_V4, 20, proc=lab.procs["dnsmasq"])
            and sv.wait_dns(SERVER_NS, SERVER_V6, 20, proc=lab.procs["dnsmasq"]),
            "h3": sv.wait_quic(SERVER_NS, SERVER_V4, 443, 20, proc=lab.procs["h3"])
            and sv.wait_quic(SERVER_NS, SERVER_V6, 443, 20, proc=lab.procs["h3"]),
        }
        for name, ok in ready.items():
            assert ok, f"{name} not ready: {(state / f'{name}.out').read_text()[-2000:]}"
        yield lab
    finally:
        for proc in lab.procs.values():
            stop(proc)
        for out in logs:
            out.close()  # type: ignore[attr-defined]
        delete_namespaces()


@live
def test_in_netns_runs_in_the_namespace(lab):
    names = [n for _, n in sv.in_netns(SERVER_NS, socket.if_nameindex)]
    assert "gfwsvc1" in names
    assert "gfwsvc1" not in [n for _, n in socket.if_nameindex()]
    assert sv.wait_tcp(CLIENT_NS, SERVER_V4, 443, 5)


@live
@pytest.mark.parametrize(
    "name",
    ["www.anything.test", "sub.blocked.example", "xn--bcher-kva.example", "www7.filler7.example"],
)
@pytest.mark.parametrize("addr", [SERVER_V4, f"[{SERVER_V6}]"])
def test_https_verifies_for_listed_names_and_subdomains(lab, name, addr):
    res = https_get(lab, name, addr, "/some/path", "-w", "\n%{http_version}")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"gfwlab lab server: {name}\n\n2"


@live
def test_https_unlisted_name_fails_verification(lab):
    res = https_get(lab, "unlisted.example", SERVER_V4, "/")
    assert res.returncode == 60, res.stderr  # the server is reached; the name is not covered


@live
@pytest.mark.parametrize("addr", [SERVER_V4, f"[{SERVER_V6}]"])
def test_http(lab, addr):
    res = in_client(
        "curl", "-sS", "--max-time", "10", "-H", "Host: plain.example", f"http://{addr}/anything"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "gfwlab lab server: plain.example\n"
    res = in_client(
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        f"http://{addr}/bytes/102400",
    )
    assert res.stdout == "200 102400"


@live
def test_nginx_logs(lab):
    https_get(lab, "www.anything.test", SERVER_V4, "/logged")
    access = (lab.dir / "nginx-access.log").read_text()
    assert "sni=www.anything.test" in access
    assert "conflicting server name" not in (lab.dir / "nginx-error.log").read_text()


@live
@pytest.mark.parametrize("server", [SERVER_V4, SERVER_V6])
def test_dns_answers_every_name(lab, server):
    a = in_client("dig", "+short", "+time=2", "+tries=2", f"@{server}", "-p", "53", "foo.bar", "A")
    aaaa = in_client(
        "dig", "+short", "+time=2", "+tries=2", f"@{server}", "-p", "53", "anything.example", "AAAA"
    )
    assert a.stdout.split() == [ANSWER_V4]
    assert aaaa.stdout.split() == [ANSWER_V6]
    assert "query[A] foo.bar" in (lab.dir / "dnsmasq.log").read_text()


@live
@pytest.mark.parametrize("addr", [SERVER_V4, SERVER_V6])
def test_h3_get(lab, addr):
    res = h3_get(lab, "https://www.anything.test/", addr, "--timeout", "10")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "gfwlab lab server over HTTP/3: www.anything.test\n"


@live
def test_h3_local_port_and_a_dropped_flow_times_out(lab):
    if shutil.which("iptables") is None:
        pytest.skip("needs iptables")
    # Play censor in the server namespace: drop QUIC from client port 50000 only.
    run(
        "ip",
        "netns",
        "exec",
        SERVER_NS,
        "iptables",
        "-I",
        "INPUT",
        "-p",
        "udp",
        "--sport",
        "50000",
        "--dport",
        "443",
        "-j",
        "DROP",
    )
    url = "https://sub.blocked.example/"
    dropped = h3_get(lab, url, SERVER_V4, "--local-port", "50000", "--timeout", "1.5")
    assert dropped.returncode == 28, dropped.stderr
    assert dropped.stdout == "" and dropped.stderr.count("\n") == 1
    passed = h3_get(lab, url, SERVER_V4, "--local-port", "50001", "--timeout", "10")
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout == "gfwlab lab server over HTTP/3: sub.blocked.example\n"
    assert f"{CLIENT_V4} 50001 sni=sub.blocked.example" in (lab.dir / "h3.log").read_text()


@live
def test_h3_to_an_absent_host_times_out(lab):
    res = h3_get(lab, "https://www.anything.test/", ABSENT_V6, "--timeout", "1")
    assert res.returncode == 28, res.stderr


@live
def test_h3_on_the_wildcard_answers_from_each_address(lab):
    # Bound to ::, a UDP server would answer from the namespace's primary address, not the
    # one the client used; the server binds every address instead.
    argv = sv.h3_server_argv(
        str(lab.dir / "wild"),
        os.path.join(lab.dir, "server.pem"),
        os.path.join(lab.dir, "server.key"),
        host="::",
        port=8443,
    )
    with open(lab.dir / "h3-wild.out", "wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", SERVER_NS, *argv], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        assert sv.wait_quic(SERVER_NS, EXTRA_V4, 8443, 20, proc=proc)
        for addr in (EXTRA_V4, SERVER_V6, SERVER_V4):
            res = h3_get(lab, "https://www1.filler1.example:8443/", addr, "--timeout", "10")
            assert res.returncode == 0, res.stderr
    finally:
        assert stop(proc) == 0
    log = (lab.dir / "wild" / "h3.log").read_text()
    assert f"listening on {EXTRA_V4} port 8443" in log
    assert "listening on :: " not in log


@live
def test_services_stop_cleanly(lab):
    for name, proc in lab.procs.items():
        assert proc.poll() is None, f"{name} died"
        assert stop(proc) == 0, name
    assert not (lab.dir / "nginx.pid").exists()
