"""Kernel state derived from the engine's verdicts: residual drop blocks as ipset entries.

Once the censor has let a flow bypass its queue (``netns.install_queue_rules``), the kernel
forwards the flow's packets without showing them to the engine. A residual drop block that
starts later on the flow's key (spec §10b "Residual tables": ESNI, FET, QUIC and SNI drops on
(client IP, server IP, server port); static blocking and Shadowsocks/TLS-in-TLS null routes on a
server address or port, spec §6, §7, §12) must still reach it, as it does offline. So each drop
block the engine starts is mirrored here as an entry of an ipset with a timeout; a rule of the
censor namespace (before the bypass accept) takes the bypass mark off a bypassed connection
whose packet matches a set, and the packet goes to the queue. The engine, still the one source
of truth, then drops it (and reports the drop, so ``lab events`` and the analysis of a ``lab
record`` recording both show it) or, if its own table says the block does not cover the flow,
bypasses the flow again (``Censor.rebypass``).

Matching the sets costs every bypassed packet a few hash lookups (measured: 15-25% of bulk
forwarding on the lab's 2-core machine), so bypassed packets cross them only while a block is
in force: the first block puts the jump to the sets' chain (``chains.BYPASSED_CHAIN``) before the
bypass accept, and it is taken out once every block has expired.

The kernel sets only decide which bypassed packets the engine sees again, so a set may cover
more than its key (never less):

=========  ====================================  ===================  ====================
key kind   set element                           client-to-server     server-to-client
=========  ====================================  ===================  ====================
3-tuple    hash:ip,port,ip (client, port, srv)   ``src,dst,dst``      ``dst,src,src``
5-tuple    the 3-tuple set (covers the flow)     ``src,dst,dst``      ``dst,src,src``
server     hash:ip,port (server, port)           ``dst,dst``          ``src,src``
server-ip  hash:ip (server)                      ``dst``              ``src``
2-tuple    the server-ip set (covers more)       ``dst``              ``src``
=========  ====================================  ===================  ====================

``drop-c2s`` blocks go in the sets matched on client-to-server packets, ``drop-s2c`` blocks in
those matched on server-to-client packets; IPv6 keys in sets of family ``inet6``. The ``rst``
policy (HTTP's and SNI's residual resets, which hit a new connection with a probability, spec §3)
has no set: a new connection's SYN always reaches the engine, which draws. Entries expire by
themselves (the timeout is the block's remaining time rounded up to a second: a packet the set
still matches in that last fraction of a second is shown to the engine, which lets it pass).
A block that starts later (FET's static blocking, days after detection) is kept here and
added when it starts.

What the kernel forwards without the engine (``chains.skip_rules``: clean first SYNs, which it
copies to the censor, handshake ACKs, SYN/ACKs, DNS answers) is held back only for the servers
blocks are held on, since every residual key holds its server (``chains.server_of``): the
server of each block, of any policy, goes in ``chains.synoff_set`` (its new connections' SYNs
are queued: one may draw a residual reset), the server of each drop block in
``chains.held_set`` (every packet to or from it that the skips would forward goes to the
queue), each for as long as the block. A block on one site leaves every other site's
connections as cheap as before.

The sets live in the censor namespace and go with it (``lab down``); they outlive the censor
process, so a restarted censor can read them back (:meth:`Kernel.residuals`).
"""

from __future__ import annotations

import contextlib
import heapq
import math
import subprocess
import threading
from collections.abc import Iterator, Sequence

from gfwlab.errors import LabError
from gfwlab.live import blocked
from gfwlab.live.chains import (
    EVERY_ADDRESS,
    IPSET_MAX_TIMEOUT,
    QUEUE_CHAIN,
    SEEN_CHAIN,
    SKIP_CHAIN,
    SYN_CHAIN,
    UdpReplies,
    clean_syn_rule,
    element,
    held_set,
    hold_rules,
    jump_rule,
    kernel_sets,
    seen_rules,
    server_of,
    set_name,
    skip_rules,
    syn_rules,
    synoff_set,
)
from gfwlab.live.engines import ENGINES_CHAIN, dispatch_rules
from gfwlab.live.ipset import open_entries
from gfwlab.live.topology import BYPASS_MARK, QUEUE_NUM
from gfwlab.rules.profile import ResidualKey


class Kernel:
    """Mirrors the engine's residual drop blocks into the censor namespace's ipsets.

    ``argv`` prefixes each command (empty inside the censor namespace; ``ip netns exec NS``
    from outside it).
    """

    def __init__(self, argv: Sequence[str] = (), bypass_mark: int = BYPASS_MARK) -> None:
        self.argv = list(argv)
        self.jump = jump_rule(bypass_mark)
        self.armed = False
        """Whether bypassed packets now cross the sets (the jump is in place)."""
        self.in_force_until = 0.0
        """When the last block written to the kernel has surely expired (engine time)."""
        self.skip = False
        """Whether the skip rules are in force (``chains.skip_rules``)."""
        self.skip_syn_ack = False
        """Whether they skip clean connections' SYN/ACKs."""
        self.syn_paused: bool | None = None
        """Whether the SYN copies are paused (:meth:`pause_syns`); None: not known yet."""
        self.pending: list[tuple[float, int, str, str, float, str, bool]] = []
        """Blocks that start later: (start, seq, set, element, until, server, IPv6)."""
        self._seq = 0
        self.added = 0
        """Entries written to the kernel."""
        self.errors = 0
        """Writes to the kernel that failed: commands, and entries written over netlink."""
        self.entries = open_entries(self.argv, self.command)
        """Where entries are written: netlink inside the namespace (``live/ipset.py``)."""
        self._switching: threading.Thread | None = None
        """The thread taking the jumps out, while it runs (:meth:`_arm`)."""

    def add_residual(
        self,
        kind: ResidualKey,
        policy: str,
        key: tuple[object, ...],
        start: float,
        until: float,
        now: float,
    ) -> bool:
        """Mirror one block (engine times); False if it has no kernel set (``rst``).

        Whatever its policy, its server's new connections' first SYNs are queued from now until
        it ends (``chains.synoff_set``): the engine may draw a residual reset on one (spec §3)."""
        server, v6 = server_of(kind, key)
        failed: LabError | None = None
        try:
            with self._counted():
                self.entries.add(synoff_set(v6), server, _timeout(until - now))
        except LabError as exc:  # raised once the block itself is written
            failed = exc
        name = set_name(kind, policy, v6)
        if name is not None:
            elem, _v6 = element(kind, key)
            if start > now:
                self._seq += 1
                heapq.heappush(self.pending, (start, self._seq, name, elem, until, server, v6))
            else:
                self._add(name, elem, until - now, now, server, v6)
        if failed is not None:
            raise failed
        return name is not None

    def next_due(self) -> float | None:
        """When the next block that starts later is due, or None."""
        return self.pending[0][0] if self.pending else None

    def tick(self, now: float) -> int:
        """Add the blocks that have started by ``now``, and take the jump out once every block
        has expired; returns how many were added."""
        n = 0
        while self.pending and self.pending[0][0] <= now:
            _start, _seq, name, elem, until, server, v6 = heapq.heappop(self.pending)
            if until > now:
                self._add(name, elem, until - now, now, server, v6)
                n += 1
        if self.armed and not self.pending and now >= self.in_force_until:
            self._arm(False)
        return n

    def next_check(self) -> float | None:
        """When :meth:`tick` next has work: a block starts, or the last one has expired."""
        times = [self.pending[0][0]] if self.pending else []
        if self.armed:
            times.append(self.in_force_until)
        return min(times) if times else None

    def _add(self, name: str, elem: str, seconds: float, now: float, server: str, v6: bool) -> None:
        """Add a drop block's element to set ``name``, and its server to the servers whose
        packets all go to the queue (``chains.held_set``), for ``seconds``."""
        timeout = _timeout(seconds)
        if not self.armed:
            self._arm(True)
        with self._counted():
            self.entries.add(name, elem, timeout)
            self.entries.add(held_set(v6), server, timeout)
        self.in_force_until = max(self.in_force_until, now + timeout + 1.0)
        self.added += 1

    def _arm(self, on: bool, wait: bool = False) -> None:
        """Put the jump to the sets' chain and those to the seen chain (``chains.hold_rules``) in
        place (``on``) or take them out; ``armed`` says so at once.

        From the censor's packet loop, which waits meanwhile: the jumps go in with one
        ``iptables-restore`` per family (about 2 ms each here: two inserts). Taking them out
        costs more (a rule deleted from an nf_tables chain is committed only once no packet can
        be crossing it: 20-45 ms for both families, measured in the lab), and the loop need not
        wait for it: every block has expired by then, so the sets match nothing, and the skips
        held off a little longer only send a few more packets to the engine, which judges them
        as it would have. So that is done by a thread (``wait``: here), and the next change of
        the rules waits for it to finish (:meth:`_settle`)."""
        self._settle()
        self.armed = on
        if on or wait:
            self._switch(on)
            return
        self._switching = threading.Thread(target=self._switch_quietly, name="gfwlab-disarm")
        self._switching.start()

    def _settle(self) -> None:
        """Wait for the rules being taken out by a thread (:meth:`_arm`), if they are."""
        if self._switching is not None:
            self._switching.join()
            self._switching = None

    def _switch_quietly(self) -> None:
        with contextlib.suppress(LabError):  # counted in errors (_counted), shown in stats
            self._switch(False)

    def _switch(self, on: bool) -> None:
        """Insert or delete the jumps, for each family in one ``iptables-restore``, each jump a
        rule of its own that only this class writes (the seen chain's are told from the skip
        chain's own last rule by their comment); if that fails (the rules are not as this censor
        left them: a restart, a hand edit), each is checked and put right on its own."""
        verb = "-I" if on else "-D"
        where = " 1" if on else ""
        for tool in ("iptables", "ip6tables"):
            rules = [
                f"{verb} {chain}{where} {_restore_line(rule)}"
                for chain, rule in self._jumps(tool)
                if self.skip or chain == QUEUE_CHAIN  # the hold rules need the skip chain
            ]
            restore = "*mangle\n" + "\n".join(rules) + "\nCOMMIT\n"
            try:
                self.command([f"{tool}-restore", "-w", "--noflush"], restore)
            except LabError:
                self._switch_checked(tool, on)

    def _switch_checked(self, tool: str, on: bool) -> None:
        """What :meth:`_switch` does for ``tool``, a rule at a time, each checked first."""
        self._put(tool, QUEUE_CHAIN, self.jump, on)
        self._skip_state([tool])

    def _put(self, tool: str, chain: str, rule: Sequence[str], on: bool) -> None:
        """``rule`` first in ``chain`` (``on``) or nowhere in it, checked before it is changed."""
        ipt = [tool, "-w", "-t", "mangle"]
        present = self._ok([*ipt, "-C", chain, *rule])
        if on and not present:
            self._run([*ipt, "-I", chain, "1", *rule])
        elif not on and present:
            self._run([*ipt, "-D", chain, *rule])

    def set_skip(
        self,
        on: bool,
        syn_ack: bool = False,
        syn: bool = False,
        udp_replies: UdpReplies | None = None,
        engines: int = 1,
        install: bool = True,
    ) -> None:
        """Let the kernel forward what no active mechanism needs (``chains.skip_rules``): the
        handshake ACK if ``on``, clean connections' SYN/ACKs if ``syn_ack``, their first SYNs
        (copied to the censor, ``chains.syn_rules``, to the group of each one's engine of
        ``engines``) if ``syn``, the ``udp_replies``; except while residual drop blocks are in
        force. Without ``install`` the rules are taken to be in place (the first engine of
        several puts them there: ``live/engines.py``)."""
        if not install:
            self.skip = on or syn_ack or syn or udp_replies is not None
            self.skip_syn_ack = syn_ack
            self.syn_paused = None
            return
        self._settle()
        for tool in ("iptables", "ip6tables"):
            ipt = [tool, "-w", "-t", "mangle"]
            v6 = tool == "ip6tables"
            for chain in (SEEN_CHAIN, SYN_CHAIN):
                if not self._ok([*ipt, "-L", chain, "-n"]):
                    self._run([*ipt, "-N", chain])
            self._run([*ipt, "-F", SKIP_CHAIN])
            self._run([*ipt, "-F", SEEN_CHAIN])
            self._run([*ipt, "-F", SYN_CHAIN])
            for rule in seen_rules(v6, syn_ack=syn_ack, syn=syn):
                self._run([*ipt, "-A", SEEN_CHAIN, *rule])
            for rule in syn_rules(v6, engines=engines) if syn else []:
                self._run([*ipt, "-A", SYN_CHAIN, *rule])
            for rule in skip_rules(
                v6, handshake_ack=on, syn_ack=syn_ack, syn=syn, udp_replies=udp_replies
            ):
                self._run([*ipt, "-A", SKIP_CHAIN, *rule])
            present = self._ok([*ipt, "-C", "FORWARD", *clean_syn_rule()])
            if syn_ack and not present:
                self._run([*ipt, "-A", "FORWARD", *clean_syn_rule()])
            elif not syn_ack and present:
                self._run([*ipt, "-D", "FORWARD", *clean_syn_rule()])
        self.skip = on or syn_ack or syn or udp_replies is not None
        self.skip_syn_ack = syn_ack
        self.syn_paused = None
        self._skip_state()

    def pause_syns(self, paused: bool) -> None:
        """Send SYNs to the queue again (``paused``), or copy clean ones and forward them
        (``chains.syn_rules``); nothing to do if that is already so."""
        if paused == self.syn_paused:
            return
        with self._counted():
            for v6, nets in EVERY_ADDRESS.items():
                for net in nets:
                    if paused:  # no timeout: until resumed (the set's servers have theirs)
                        self.entries.add(synoff_set(v6), net, 0)
                    else:
                        self.entries.delete(synoff_set(v6), net)
        self.syn_paused = paused

    def _skip_state(self, tools: Sequence[str] = ("iptables", "ip6tables")) -> None:
        """The jumps to the seen chain first in the skip chain while blocks are in force
        (``chains.hold_rules``), and nowhere while none is (counters stay)."""
        if not self.skip:
            return
        for tool in tools:
            for rule in hold_rules(tool == "ip6tables"):
                self._put(tool, SKIP_CHAIN, rule, self.armed)

    def adopt(self, now: float) -> None:
        """Take over what a previous censor process left in the kernel (a restart): the blocks
        still in force keep the jumps in place until they expire. Each engine of several puts
        its own copy of the jumps in and takes it out (``live/engines.py``): copies left by the
        engines of a censor that was killed are taken out here but one."""
        left = max((t for _, _, t in self.residuals()), default=0)
        jumped = False
        for tool in ("iptables", "ip6tables"):
            for chain, rule in self._jumps(tool):
                if self._delete_copies(tool, chain, rule):
                    self._run([tool, "-w", "-t", "mangle", "-I", chain, "1", *rule])
                    jumped = True
        if left or jumped:
            self.armed = True
            self.in_force_until = now + left + 1.0

    def dispatch(self, engines: int, pinned: frozenset[int], fail_open: bool) -> None:
        """Hand the queued packets to ``engines`` engines' queues (``engines.dispatch_rules``):
        the chain filled in one ``iptables-restore`` per family, and jumped to just before the
        queue chain's own queue rule (which takes nothing then)."""
        for tool in ("iptables", "ip6tables"):
            ipt = [tool, "-w", "-t", "mangle"]
            if not self._ok([*ipt, "-L", ENGINES_CHAIN, "-n"]):
                self._run([*ipt, "-N", ENGINES_CHAIN])
            rules = dispatch_rules(engines, tool == "ip6tables", QUEUE_NUM, pinned, fail_open)
            lines = [f"-F {ENGINES_CHAIN}"]
            lines += [f"-A {ENGINES_CHAIN} {_restore_line(r)}" for r in rules]
            self._run(
                [f"{tool}-restore", "-w", "--noflush"],
                "*mangle\n" + "\n".join(lines) + "\nCOMMIT\n",
            )
            if not self._ok([*ipt, "-C", QUEUE_CHAIN, "-j", ENGINES_CHAIN]):
                listed = self._run([*ipt, "-S", QUEUE_CHAIN])
                last = sum(line.startswith("-A ") for line in listed.splitlines())
                self._run([*ipt, "-I", QUEUE_CHAIN, str(max(1, last)), "-j", ENGINES_CHAIN])

    def flush(self) -> None:
        """Forget every block (sets emptied, later ones dropped, the jumps taken out: every
        engine's copy)."""
        self.pending.clear()
        for s in kernel_sets():
            self._run(["ipset", "flush", s.name])
        self._arm(False, wait=True)
        for tool in ("iptables", "ip6tables"):
            for chain, rule in self._jumps(tool):
                self._delete_copies(tool, chain, rule)
        self.in_force_until = 0.0

    def _jumps(self, tool: str) -> list[tuple[str, list[str]]]:
        """The rules :meth:`_arm` puts in while blocks are in force, each with its chain."""
        rules = [(QUEUE_CHAIN, self.jump)]
        return rules + [(SKIP_CHAIN, r) for r in hold_rules(tool == "ip6tables")]

    def _delete_copies(self, tool: str, chain: str, rule: list[str]) -> int:
        """Take every copy of ``rule`` out of ``chain`` (each engine of several puts in its
        own); how many there were."""
        copies = 0
        while copies < 64 and self._ok([tool, "-w", "-t", "mangle", "-D", chain, *rule]):
            copies += 1
        return copies

    def residuals(self) -> list[tuple[str, str, int]]:
        """The entries now in force: (set, element, seconds left)."""
        out = []
        for s in kernel_sets():
            text = self._run(["ipset", "list", s.name, "-output", "save"])
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[0] == "add" and parts[3] == "timeout":
                    out.append((parts[1], parts[2], int(parts[4])))
        return out

    def _ok(self, argv: list[str]) -> bool:
        try:
            res = subprocess.run([*self.argv, *argv], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        with self._counted():
            return self.command(argv, stdin)

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """A write of kernel state: counted in :attr:`errors` if it fails (and raised on)."""
        try:
            yield
        except LabError:
            self.errors += 1
            raise

    def command(self, argv: list[str], stdin: str | None = None) -> str:
        """Run ``argv`` (in the namespace ``argv`` of the constructor enters): its output, or
        LabError naming the command and why. Not counted in :attr:`errors` (its caller counts)."""
        try:
            res = subprocess.run(
                [*self.argv, *argv],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LabError(f"{' '.join(argv)}: {exc}") from None
        if res.returncode != 0:
            detail = (res.stderr.strip() or f"exit {res.returncode}").splitlines()[0]
            raise LabError(f"{' '.join(argv)}: {detail}")
        return res.stdout


def _timeout(seconds: float) -> int:
    """An ipset timeout that outlasts ``seconds``: whole seconds, at least one."""
    return min(max(1, math.ceil(seconds)), IPSET_MAX_TIMEOUT)


def _restore_line(args: Sequence[str]) -> str:
    """Rule arguments as ``iptables-restore`` reads them: double quotes around an argument
    with a space (it takes no single quotes)."""
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def queue_rule_packets(iptables_listing: str, target: str = "NFQUEUE") -> int:
    """Packets that hit the rules of ``target``, from ``iptables -t mangle -L CHAIN -v -x -n``."""
    total = 0
    for line in iptables_listing.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == target and parts[0].isdigit():
            total += int(parts[0])
    return total


def queue_counters(argv: Sequence[str] = ()) -> dict[str, int]:
    """The kernel's side of the queue, read in the censor namespace (``argv`` enters it):
    ``kernel_queued``, packets the queue rules took (IPv4 and IPv6, since ``lab up``),
    ``queue_dropped``, packets the kernel dropped because the censor's queue was full, and
    ``kernel_dropped``, packets of flows the engine blocked that the kernel dropped for it
    (``live/blocked.py``)."""
    out = {"kernel_queued": 0, "kernel_skipped": 0, "queue_dropped": 0, "kernel_dropped": 0}
    for tool in ("iptables", "ip6tables"):
        for chain, key, target in (
            (QUEUE_CHAIN, "kernel_queued", "NFQUEUE"),
            (ENGINES_CHAIN, "kernel_queued", "NFQUEUE"),  # several engines (live/engines.py)
            (SKIP_CHAIN, "kernel_skipped", "ACCEPT"),
            (SYN_CHAIN, "kernel_skipped", "ACCEPT"),
            (blocked.CHAIN, "kernel_dropped", "DROP"),
        ):
            res = subprocess.run(
                [*argv, tool, "-w", "-t", "mangle", "-L", chain, "-v", "-x", "-n"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            out[key] += queue_rule_packets(res.stdout, target)
    res = subprocess.run(
        [*argv, "cat", "/proc/net/netfilter/nfnetlink_queue"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 7 and all(p.isdigit() for p in parts[:7]):
            out["queue_dropped"] += int(parts[5]) + int(parts[6])
    return out
