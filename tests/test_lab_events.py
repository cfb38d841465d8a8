"""Live: the dated RST events at moments inside and outside their windows (lab up --at), with the
fingerprints read by tshark off the censor's recording; 1.1.1.1 mapped to a lab address; the
TLS-record split passing the national profile and reset with --network cernet."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gfwlab.live.topology import CLIENT_V4, STANDS_FOR_1111
from testenv import LAB_MARKS, client, curl, gfwlab, leftovers, needs_tools

pytestmark = [*LAB_MARKS, needs_tools("tshark")]
SITE = "198.19.0.3"


@contextmanager
def lab(*args: str) -> Iterator[None]:
    gfwlab("lab", "down")
    up = gfwlab("lab", "up", "--seed", "3", *args)
    assert up.returncode == 0, up.stderr
    try:
        yield
    finally:
        gfwlab("lab", "down")
        assert leftovers() == []


@contextmanager
def recording(path: Path) -> Iterator[None]:
    rec = subprocess.Popen(
        [sys.executable, "-m", "gfwlab", "lab", "record", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    try:
        yield
    finally:
        time.sleep(0.5)
        rec.send_signal(signal.SIGINT)
        _out, err = rec.communicate(timeout=30)
        assert rec.returncode == 0, err


def _events() -> list[dict[str, object]]:
    return [json.loads(x) for x in gfwlab("lab", "events").stdout.splitlines()]


def _resets_to_client(path: Path) -> list[tuple[int, int, int]]:
    """(raw seq, window, ttl) of each RST+ACK toward the client in the recording (tshark)."""
    got = subprocess.run(
        [
            shutil.which("tshark") or "tshark",
            "-r",
            str(path),
            "-Y",
            f"tcp.flags.reset == 1 && tcp.flags.ack == 1 && ip.dst == {CLIENT_V4}",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "tcp.seq_raw",
            "-e",
            "tcp.window_size_value",
            "-e",
            "ip.ttl",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("|") for line in got.stdout.splitlines()]
    return [(int(s), int(w), int(t)) for s, w, t in rows]


def _ok(url: str, *extra: str) -> bool:
    got = curl(url, "-o", "/dev/null", "-w", "%{http_code}", *extra)
    return got.returncode == 0 and got.stdout.strip() == "200"


def test_port_443_event_inside_and_outside_its_window(tmp_path: Path) -> None:
    rec = tmp_path / "in.pcap"
    with lab("--at", "2025-08-19T17:00"):
        status = gfwlab("lab", "status").stdout
        assert "censor clock" in status and "2025-08-19T17:0" in status
        with recording(rec):
            assert not _ok("https://example.org/", "--resolve", f"example.org:443:{SITE}")
            assert _ok(f"http://{SITE}/")  # port 80 is untouched
        events = [e for e in _events() if e["mechanism"] == "unconditional_rst_443"]
    assert events and {e["trigger"] for e in events} <= {"syn", "syn-ack"}
    windows = [w for _seq, w, _ttl in _resets_to_client(rec)]
    assert windows[:3] == [1980, 1981, 1982]
    assert [s for s, _w, _t in _resets_to_client(rec)][:3] == [0, 0, 0]
    ttls = [t for _s, _w, t in _resets_to_client(rec)][:3]
    assert ttls == [ttls[0], ttls[0] + 1, ttls[0] + 2]
    out = tmp_path / "out.pcap"
    with lab("--at", "2025-08-19T17:48"):
        with recording(out):
            assert _ok("https://example.org/", "--resolve", f"example.org:443:{SITE}")
        assert not [e for e in _events() if e["mechanism"] == "unconditional_rst_443"]
    assert _resets_to_client(out) == []


def test_port_443_event_outside_in_only_the_syn_ack(tmp_path: Path) -> None:
    # Declare the server side inside the border: the lab client is then an outside client
    # connecting to a Chinese server, and only the server's SYN+ACK draws resets.
    rec = tmp_path / "outside-in.pcap"
    with lab("--at", "2025-08-19T17:00", "--set", "engine.inside=['198.19.0.0/24']"):
        with recording(rec):
            assert not _ok("https://example.org/", "--resolve", f"example.org:443:{SITE}")
        events = [e for e in _events() if e["mechanism"] == "unconditional_rst_443"]
    assert events and {e["trigger"] for e in events} == {"syn-ack"}
    assert {e["direction"] for e in events} == {"outside-in"}
    windows = [w for _seq, w, _ttl in _resets_to_client(rec)]
    assert windows[:3] == [3293, 3294, 3295] and 1980 not in windows


def test_one_one_one_one_mapped_to_a_lab_address(tmp_path: Path) -> None:
    rec = tmp_path / "cf.pcap"
    stand_in = STANDS_FOR_1111
    with lab("--at", "2023-09-10T12:00"):
        with recording(rec):
            assert not _ok(
                "https://one.one.one.one/", "-k", "--resolve", f"one.one.one.one:443:{stand_in}"
            )
            assert _ok("https://example.org/", "--resolve", f"example.org:443:{SITE}")
            assert _ok(f"http://{stand_in}/")  # only TCP/443
        events = [e for e in _events() if e["mechanism"] == "ip_port_rst"]
    assert events and all(e["flow"]["dst"] == stand_in for e in events)  # type: ignore[index]
    resets = _resets_to_client(rec)
    assert len(resets) >= 3 and len({s for s, _w, _t in resets[:3]}) == 1
    # Nothing was ever addressed to 1.1.1.1.
    got = subprocess.run(
        ["tshark", "-r", str(rec), "-Y", "ip.addr == 1.1.1.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert got.stdout.strip() == ""
    with lab("--at", "2023-10-10T12:00"):
        assert _ok("https://one.one.one.one/", "-k", "--resolve", f"one.one.one.one:443:{stand_in}")


def _split_fetch(host: str, ip: str) -> subprocess.CompletedProcess[str]:
    return client(sys.executable, "-m", "gfwlab.evade.tls_split", host, ip, timeout=30)


def test_record_split_passes_national_and_is_reset_on_cernet() -> None:
    with lab("--date", "2026-01-15"):
        assert not _ok("https://www.facebook.com/", "--resolve", "www.facebook.com:443:198.19.0.4")
        split = _split_fetch("www.facebook.com", "198.19.0.5")
        assert split.returncode == 0 and " 200 " in split.stdout, split.stderr
    with lab("--date", "2026-01-15", "--network", "cernet"):
        split = _split_fetch("www.facebook.com", "198.19.0.5")
        assert split.returncode != 0, split.stdout
        events = [e for e in _events() if e["mechanism"] == "tls_sni" and e["action"] == "rst"]
        assert events
