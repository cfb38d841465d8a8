"""``gfwlab probe``, ``gfwlab grade`` and ``gfwlab lists`` (registered in :mod:`gfwlab.cli`)."""

# Annotations evaluated as written, not strings: gfwlab.cli says why.

import json
import os
import sys
from typing import Annotated, Any

import typer

from gfwlab.options import DateOpt, InputError, SeedOpt, SetOpt, console, err, progress_bar

MAX_CONCURRENCY = 512


def _load_list(path: str) -> Any:
    from gfwlab.measure import lists  # noqa: PLC0415

    try:
        got = lists.load(path)
    except lists.ListError as exc:
        raise InputError(str(exc)) from None
    for w in got.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, markup=True)
    if not got.entries:
        raise InputError(f"{path}: no usable URL in the test list")
    return got


def probe(
    test_list: Annotated[
        str, typer.Option("--list", help="A Citizen Lab CSV test list, or 'builtin'.")
    ],
    lab: Annotated[
        bool,
        typer.Option(
            "--lab/--system",
            help="Through the lab's censor (default) or the machine's own network and resolver.",
        ),
    ] = True,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", min=1, max=MAX_CONCURRENCY, help="URLs measured at once."),
    ] = 16,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Write measurements.jsonl, events.jsonl and "
            "run.json to this folder (whole or not at all).",
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            help="With --lab and no lab up: bring one "
            "up with this profile for the run (and down after).",
        ),
    ] = None,
    date: DateOpt = None,
    sets: SetOpt = None,
    seed: SeedOpt = 0,
    control_resolver: Annotated[
        str | None,
        typer.Option(
            "--control-resolver",
            help="The control's DNS resolver (default: the lab's, queried outside the censor).",
        ),
    ] = None,
    control_netns: Annotated[
        str | None,
        typer.Option(
            "--control-netns",
            help="--system: the network namespace "
            "the control runs in (none: no control, no verdicts).",
        ),
    ] = None,
    naive: Annotated[
        bool,
        typer.Option(
            "--naive",
            help="A deliberately naive verdict: every failure is tcp_ip (to test graders).",
        ),
    ] = False,
    dns_only: Annotated[
        bool,
        typer.Option(
            "--dns-only",
            help="Only the DNS scan: every name once, many in "
            "flight; prints the rate and the injected names.",
        ),
    ] = False,
    h3: Annotated[
        bool, typer.Option("--h3/--no-h3", help="Also try HTTP/3 (off for large scans).")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Measure a test list: DNS (with a control), TCP, TLS with the SNI, HTTP(S), HTTP/3;
    OONI Web Connectivity verdicts, gfwlab's attribution, graded against the censor's events."""
    got = _load_list(test_list)
    if dns_only:
        _dns_scan(got, lab, control_resolver, as_json)
        return
    if not lab:
        _probe_system(got, concurrency, out, control_netns, control_resolver, naive, h3, as_json)
        return
    from gfwlab.lab import lifecycle  # noqa: PLC0415
    from gfwlab.lab.state import LabState  # noqa: PLC0415
    from gfwlab.measure import session  # noqa: PLC0415

    made = False
    if LabState.load().status != "up":
        opts = lifecycle.UpOptions(profile=profile or "gfw", date=date, sets=sets or [], seed=seed)
        with err.status("making the lab…"):
            lifecycle.up(opts, log=lambda _m: None)
        made = True
    elif profile or date or sets:
        raise InputError(
            "--profile/--date/--set make a lab for the run, but a lab is already "
            "up (gfwlab lab down, or leave them out)"
        )
    try:
        with progress_bar("probing", "of", quiet=as_json) as bar:
            task = bar.add_task("probe", total=len(got.entries))
            run = session.probe_lab(
                got.entries,
                out_dir=out,
                concurrency=concurrency,
                control_resolver=control_resolver,
                argv=sys.argv,
                naive=naive,
                h3=h3,
                progress=lambda n: bar.update(task, completed=n),
            )
    finally:
        if made:
            lifecycle.down()
    _show(run.measurements, run.grade, as_json, out)


def _probe_system(
    got: Any,
    concurrency: int,
    out: str | None,
    control_netns: str | None,
    control_resolver: str | None,
    naive: bool,
    h3: bool,
    as_json: bool,
) -> None:
    import time  # noqa: PLC0415

    from gfwlab.measure import ooni  # noqa: PLC0415
    from gfwlab.measure import probe as probing  # noqa: PLC0415
    from gfwlab.measure.verdict import naive as naive_verdict  # noqa: PLC0415

    if control_netns is not None and not os.path.exists(os.path.join("/run/netns", control_netns)):
        raise InputError(f"--control-netns {control_netns}: no such network namespace")
    setup = probing.system_setup(control_netns, control_resolver if control_netns else None)
    setup.h3 = h3
    started = time.time()
    with progress_bar("probing", "of", quiet=as_json) as bar:
        task = bar.add_task("probe", total=len(got.entries))
        results = probing.run(
            setup,
            got.entries,
            concurrency=concurrency,
            progress=lambda n: bar.update(task, completed=n),
        )
    if naive:
        for r in results:
            r.verdict = naive_verdict(r.obs)
    report = ooni.report_id(started, 0)
    ms = [ooni.measurement(r, report=report, test_start=started, asn="AS0") for r in results]
    if out is not None:
        info = ooni.run_info(
            started=started, finished=time.time(), profile=None, date=None, seed=None, argv=sys.argv
        )
        ooni.publish(
            out,
            {
                "measurements.jsonl": ooni.jsonl(ms),
                "events.jsonl": "",
                "run.json": json.dumps(info, indent=2) + "\n",
            },
        )
    _show(ms, None, as_json, out)


def _dns_scan(got: Any, lab: bool, control_resolver: str | None, as_json: bool) -> None:
    from gfwlab.measure import dnscheck, sites  # noqa: PLC0415
    from gfwlab.measure.probe import system_resolver  # noqa: PLC0415
    from gfwlab.measure.sniff import enter_netns  # noqa: PLC0415

    hosts = got.hosts()
    if lab:
        from gfwlab.lab.services import in_netns  # noqa: PLC0415
        from gfwlab.live.topology import CLIENT_NS, SERVER_V4  # noqa: PLC0415

        addresses = sites.install(hosts)
        with progress_bar("scanning", "of", quiet=as_json) as bar:
            task = bar.add_task("scan", total=len(hosts))
            res = in_netns(
                CLIENT_NS,
                lambda: dnscheck.scan(
                    hosts, SERVER_V4, progress=lambda n: bar.update(task, completed=n)
                ),
            )
        injected = res.injected(control={h: [a] for h, a in addresses.items()})
    else:
        enter_netns(None)
        res = dnscheck.scan(hosts, control_resolver or system_resolver())
        injected = res.injected()
    summary = {
        "names": len(hosts),
        "elapsed_s": round(res.elapsed_s, 3),
        "queries_per_s": round(res.rate, 1),
        "injected": len(injected),
        "injected_names": injected[:50],
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(
        f"{len(hosts)} names in {res.elapsed_s:.2f} s ({res.rate:,.0f} queries/s): "
        f"{len(injected)} with injected answers"
    )
    for name in injected[:20]:
        console.print(f"  {name}")


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


def _show(ms: list[dict[str, Any]], graded: Any, as_json: bool, out: str | None) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "measurements": len(ms),
                    "grade": graded.as_dict() if graded else None,
                    "out": out,
                },
                indent=2,
            )
        )
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="Web Connectivity verdicts", title_justify="left")
    for col in (
        "input",
        "cat",
        "blocking",
        "accessible",
        "mechanism",
        "injector",
        "residual",
        "truth",
        "right",
    ):
        table.add_column(col, overflow="fold")
    limit = 60
    for m in ms[:limit]:
        tk = m["test_keys"]
        x = tk["x_gfwlab"]
        t = x.get("truth") or {}
        right = {True: "[green]yes[/]", False: "[red]no[/]", None: "–"}[x.get("correct")]
        table.add_row(
            m["input"],
            m["annotations"].get("category_code", ""),
            _fmt(tk["blocking"]),
            _fmt(tk["accessible"]),
            _fmt(x["mechanism"]),
            _fmt(x["injector"]),
            "yes" if x["residual"] else "",
            (f"{_fmt(t.get('blocking'))} {_fmt(t.get('mechanism'))}" if t else ""),
            right,
        )
    console.print(table)
    if len(ms) > limit:
        console.print(f"… and {len(ms) - limit} more (see --out or --json)")
    if graded is not None:
        console.print(
            f"graded against the censor's events: {graded.right} right, "
            f"{graded.wrong} wrong, {graded.no_verdict} without a verdict "
            f"(score {graded.score:.1%})"
        )
    if out:
        console.print(f"results: {out}")


def grade(
    results: Annotated[
        str, typer.Argument(help="OONI web_connectivity JSON lines (or a probe's --out folder).")
    ],
    session: Annotated[
        str,
        typer.Option(
            "--session",
            help="The lab session folder: "
            "events.jsonl and sites.json (a probe's --out) or "
            "sites.hosts (the lab's state folder).",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score any tool's Web Connectivity verdicts against the censor's events of a session."""
    from gfwlab.measure import grade as grading  # noqa: PLC0415

    try:
        events, addresses = grading.read_session(session)
        rows = grading.read_results(results)
    except grading.GradeError as exc:
        raise InputError(str(exc)) from None
    g = grading.grade(rows, events, addresses)
    if as_json:
        print(json.dumps(g.as_dict(), indent=2))
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="Per site", title_justify="left")
    for col in ("input", "verdict", "expected", "mechanism", "expected mechanism", "right"):
        table.add_column(col, overflow="fold")
    for r in g.rows[:200]:
        table.add_row(
            str(r["input"]),
            _fmt(r["blocking"]),
            _fmt(r["expected"]),
            _fmt(r["mechanism"]),
            _fmt(r["expected_mechanism"]),
            {True: "[green]yes[/]", False: "[red]no[/]", None: "–"}[r["correct"]],
        )
    console.print(table)
    matrix = Table(title="Confusion matrix (rows: truth, columns: verdict)", title_justify="left")
    matrix.add_column("truth \\ verdict")
    for col in grading.BLOCKING_ORDER:
        matrix.add_column(col, justify="right")
    for row in grading.BLOCKING_ORDER[:-1]:
        matrix.add_row(
            row, *(str(g.confusion.get((row, col), 0) or "") for col in grading.BLOCKING_ORDER)
        )
    console.print(matrix)
    console.print(
        f"{g.right} right, {g.wrong} wrong, {g.no_verdict} without a verdict: score {g.score:.1%}"
    )
