"""The operator commands of ``humanlayer-async``: serve, console-link, pending, show, approve, deny,
cancel, answer, grants (and grants revoke, grants confirm), stats, audit (and audit verify, audit
export), prune.

Each works against the store named by ``--store`` or ``HUMANLAYER_STORE``, opened and never
created (a mistyped path or schema is "no store at ..."), and decides through the engine's
deciding side and the store alone (approver allowlists, first decision wins, the audit trail;
no runtime, channels or listener), as
``--by`` (default: the OS user), ``via="cli"``. With ``--url`` instead, all but prune, audit
verify and audit export work through a listener's HTTP API (``_remote.RemoteDecisions``, the
same methods), as the user its token names. Tables for people, JSON with ``--json``.
Everything printed for people goes through ``_terminal.write_lines``, so no stored value can
redraw the operator's screen. Exit status: 0 done, 1 refused (unknown id, not an approver,
already decided otherwise, a grant already revoked or no longer live, an audit trail that does
not verify), 2 bad usage or
configuration (no store there, or an API token refused, included), 141 (as a process killed
by SIGPIPE) when the reader of the output went away, as ``| head`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import importlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Unpack

import anyio
import anyio.to_thread

from ._audit import AuditEntry
from ._client import HumanLayer
from ._codec import to_json
from ._durations import parse_duration, parse_since
from ._edits import parse_edit
from ._engine import Decisions
from ._exceptions import ArgumentsEdited, ConfigurationError, HumanLayerError, UnknownRequest
from ._models import ApprovalRequest, Grant, same_name
from ._pages import MAX_PAGE, Filters, Page, read_page
from ._remote import RemoteDecisions, add_url_options, connect
from ._render import describe_decision, describe_votes, format_kwargs, format_value, full_call, summarize
from ._stats import DEFAULT_SINCE, HEADERS, cells, tool_stats
from ._terminal import MIN_PREFIX, log_to_terminal, table, write_lines
from .channels.base import Answered
from .channels.web import TOKEN_ENV, WebChannel
from .stores._chain import (
    AUDIT_KEY_ENV,
    Head,
    Verdict,
    Verifier,
    chain_source,
    environment_key,
    read_export,
    verify_store,
)
from .stores.base import Store
from .stores.url import store_from_url

__all__ = ["COMMANDS", "add_commands", "run_command"]

COMMANDS = (
    "serve",
    "console-link",
    "pending",
    "show",
    "approve",
    "deny",
    "cancel",
    "answer",
    "grants",
    "stats",
    "audit",
    "prune",
)

Deciding = Decisions | RemoteDecisions
"""What the store commands decide through: a store's ``Decisions``, or the HTTP API (``--url``)."""

DEFAULT_LIMIT = 100
"""Pending requests ``pending`` lists without ``--limit``."""

MAX_BATCH = 1000
"""The most requests ``approve --all`` and ``deny --all`` decide at once (listed, then confirmed)."""

_ID_TEXT = re.compile(r"[0-9A-Za-z_-]+")
"""What a request id (and a prefix of one) is made of."""

_SIGPIPE_STATUS = 141
"""128 + SIGPIPE (13): the status a shell shows for a process that SIGPIPE ended."""


class _Refused(Exception):
    """The command ran and the store said no: exit status 1."""


def _page_size(text: str) -> int:
    """``--limit``: a whole number from 1 to ``MAX_PAGE``, for argparse."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_PAGE}")
    return int(text)


def _duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d`` (``_durations.parse_duration``), for argparse."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _since(text: str) -> datetime:
    """A duration back from now (``2h``) or an ISO 8601 time (UTC unless it says otherwise),
    as the web console's stats page reads it too (``_durations.parse_since``), for argparse."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _store_options(*, nested: bool = False) -> argparse.ArgumentParser:
    """``--store`` (or ``--url``) and ``--json``. ``nested``: for a sub-subcommand (``grants revoke``),
    whose defaults would otherwise overwrite what was given before it (``grants --store URL revoke``)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--store",
        default=argparse.SUPPRESS if nested else None,
        help="sqlite:///path/to/file.db or postgresql://... (default: $HUMANLAYER_STORE)",
    )
    add_url_options(options, nested=nested)
    options.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="print JSON instead of a table",
    )
    return options


def add_commands(commands: Any) -> None:
    """Add the operator subcommands to the ``humanlayer-async`` parser's subparsers."""
    store = _store_options()
    by = argparse.ArgumentParser(add_help=False)
    by.add_argument("--by", help="who decides (default: the OS user; not with --url: the token says)")

    serve = commands.add_parser(
        "serve", help="run an app's listener alone (callbacks for a fleet of agent processes)"
    )
    serve.add_argument("app", metavar="APP", help="module:attribute naming a HumanLayer, e.g. myapp.hl:hl")

    link = commands.add_parser(
        "console-link",
        help="print a new sign-in link to the web console (it works once, for a few minutes)",
        description=f"Sign with the key in ${TOKEN_ENV}: the console's token or, with --user, that"
        " user's key. Any process of the console accepts the link, once.",
    )
    link.add_argument(
        "--url", default="http://127.0.0.1:8787", help="where the console's listener is reached"
    )
    link.add_argument("--base-path", default="/approvals", help="the console's base_path")
    link.add_argument("--user", help=f"sign in as this named user (${TOKEN_ENV} holds their key)")
    link.add_argument(
        "--expires-in", type=_duration, default=timedelta(minutes=5), help="how long the link works"
    )

    pending = commands.add_parser(
        "pending",
        parents=[store],
        help="list the requests waiting for a human, a page at a time",
        description="The oldest pending requests (by creation), --limit at a time: when more wait,"
        " standard error says how many in all and how to see the next page (--after the last id"
        " shown). The filters are the store's, read from its indexes, however many are pending.",
    )
    pending.add_argument("--run-id", help="only the requests of this run")
    pending.add_argument("--kind", choices=["approval", "question"], help="only approvals or questions")
    pending.add_argument("--function", help="only the requests of this tool (its name, or module.qualname)")
    pending.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="only those made at least this long ago (15m)",
    )
    pending.add_argument(
        "--limit",
        type=_page_size,
        default=DEFAULT_LIMIT,
        help=f"how many at most (default {DEFAULT_LIMIT}, at most {MAX_PAGE})",
    )
    pending.add_argument("--after", metavar="ID", help="the next page: the last id of the previous one")

    show = commands.add_parser(
        "show", parents=[store], help="print a request's whole call, nothing shortened"
    )
    show.add_argument("id", help="the request id (or a unique prefix of a pending one)")

    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument(
        "--all",
        action="store_true",
        help=f"every pending request of --function (and --run-id, --older-than): listed, then"
        f" confirmed; at most {MAX_BATCH} at once",
    )
    batch.add_argument("--function", help="with --all: the gated function's name (or module.qualname)")
    batch.add_argument("--run-id", help="with --all: only the requests of this run")
    batch.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="with --all: only the requests made at least this long ago (15m)",
    )
    batch.add_argument("--yes", action="store_true", help="with --all: decide without asking")

    approve = commands.add_parser(
        "approve", parents=[store, by, batch], help="approve a pending request (or --all of one function)"
    )
    approve.add_argument("id", nargs="?", help="the request id (or a unique prefix of a pending one)")
    approve.add_argument("--comment", help="a note kept with the decision")
    approve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="approve with an editable argument changed (VALUE as JSON, or text); repeatable",
    )

    deny = commands.add_parser(
        "deny", parents=[store, by, batch], help="deny a pending request (or --all of one function)"
    )
    deny.add_argument("id", nargs="?", help="the request id (or a unique prefix of a pending one)")
    deny.add_argument("--reason", required=True, help="why: the agent is told")

    cancel = commands.add_parser("cancel", parents=[store, by], help="withdraw a pending request")
    cancel.add_argument("id", help="the request id (or a unique prefix of a pending one)")
    cancel.add_argument("--reason", help="why: the agent is told")

    answer = commands.add_parser("answer", parents=[store, by], help="answer a pending question")
    answer.add_argument("id", help="the request id (or a unique prefix of a pending one)")
    answer.add_argument("text", help="the answer")

    _add_grants(commands, store, by)

    stats = commands.add_parser(
        "stats",
        parents=[store],
        help="per-tool approval stats, from the audit trail",
        description="One row per gated tool, over the requests made since --since: how many, what"
        " came of them (approved or denied by a person, timed out, cancelled, failed, granted: run"
        " under a grant, still pending), the approval rate (approved of those a person decided),"
        " the median and nearest-rank 95th percentile wait for a person's decision, how many calls"
        " a shadow-mode gate let run that would have asked, and the top 3 approvers (requests"
        " answered). Questions count as contact_human. --json: a list of objects with the keys"
        " function, requests, approved, denied, timed_out, cancelled, failed, granted, pending,"
        " approval_rate, median_wait_seconds, p95_wait_seconds, top_approvers ([{by, count}]) and"
        " shadowed (null where there is no value).",
    )
    stats.add_argument(
        "--since",
        type=_since,
        default=DEFAULT_SINCE,
        help=f"a duration back (15m, 2h, 7d) or an ISO 8601 time (default: {DEFAULT_SINCE})",
    )

    audit = commands.add_parser(
        "audit", parents=[store], help="print the audit trail; verify or export its hash chains"
    )
    audit.add_argument("--since", type=_since, help="a duration back (15m, 2h, 7d) or an ISO 8601 time")
    audit.add_argument("--request", help="only the entries of this request id")
    _add_audit_actions(audit)

    prune = commands.add_parser("prune", parents=[store], help="delete long-decided requests")
    prune.add_argument(
        "--older-than", type=_duration, help="decided longer ago than this (default: the store's retention)"
    )


def _add_grants(commands: Any, store: argparse.ArgumentParser, by: argparse.ArgumentParser) -> None:
    """``grants`` (the list), ``grants revoke ID`` and ``grants confirm ID``."""
    grants = commands.add_parser(
        "grants",
        parents=[store],
        help="list the grants (calls of a tool allowed without asking); revoke or confirm one",
        description="A grant lets calls of a gated tool run without asking, for a while. Without a"
        " subcommand: the live grants, each with its full id (what revoke and confirm take), its tool,"
        " the arguments a call must have (WHERE; any call when none), who gave it, when it expires"
        " (UTC), how many calls it covered of the most it may (USES; - when no limit), and its state:"
        " active, or waiting for more approvers (its tool needs several: see confirm)."
        " --all adds the expired, used-up and revoked ones.",
    )
    grants.add_argument(
        "--all", action="store_true", help="also the expired, used-up and revoked grants the store keeps"
    )
    actions = grants.add_subparsers(dest="grant_action", title="subcommands", metavar="{revoke,confirm}")
    nested = _store_options(nested=True)
    revoke = actions.add_parser(
        "revoke",
        parents=[nested, by],
        help="end a grant: the calls it covered ask a human again",
        description="Revoke a grant as --by, one who may approve its tool. The calls it covered"
        " ask a human again, in every process, from now on.",
    )
    revoke.add_argument("id", help="the grant's full id, as humanlayer-async grants lists it")
    confirm = actions.add_parser(
        "confirm",
        parents=[nested, by],
        help="give a grant that needs several approvers as one more of them",
        description="Add --by to a live grant's approvers. A grant of a tool that needs several"
        " approvals covers calls once that many distinct approvers gave it; one person counts once.",
    )
    confirm.add_argument("id", help="the grant's full id, as humanlayer-async grants lists it")


def _head(text: str) -> Head:
    try:
        return Head.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_audit_actions(audit: Any) -> None:
    """``audit verify`` and ``audit export``: the trail's hash chains (``stores/_chain.py``)."""
    actions = audit.add_subparsers(dest="audit_action", title="subcommands", metavar="{verify,export}")
    nested = _store_options(nested=True)
    verify = actions.add_parser(
        "verify",
        parents=[nested],
        help="check the audit trail's hash chains; exit 1 naming the first entry modified, deleted,"
        " inserted or reordered",
        description="Check every chain of the audit trail (one per request, one per grant) in a store,"
        " or in an export (--file). Prints 'ok: N entries in M chains' and the head, a digest over"
        " every chain's newest entry. Record the head elsewhere: --expect-head HEAD later checks that"
        " the trail still holds it, which alone catches the newest entries of a chain cut off. A"
        f" keyed trail (HMAC-SHA256) is checked with the key in ${AUDIT_KEY_ENV}.",
    )
    verify.add_argument(
        "--expect-head",
        type=_head,
        metavar="HEAD",
        help="a head an earlier verify printed, which the trail must still hold",
    )
    verify.add_argument(
        "--file", help="an export (audit export) to verify instead of a store; - reads standard input"
    )
    export = actions.add_parser(
        "export",
        parents=[nested],
        help="write the audit trail with its hashes, one JSON object per line",
        description="Every audit entry with its hashes, chain by chain (each oldest first), one JSON"
        " object per line: to archive, and to check elsewhere with audit verify --file.",
    )
    export.add_argument("--format", choices=["jsonl"], default="jsonl", help="one JSON object per line")


def _name(args: argparse.Namespace) -> str:
    """The command as typed, for messages: ``grants revoke``, ``audit verify``, ``approve``."""
    action = getattr(args, "grant_action", None) or getattr(args, "audit_action", None)
    return f"{args.command} {action}" if action else str(args.command)


def run_command(args: argparse.Namespace) -> int:
    """Run one operator command; returns the exit status."""
    # An application may set logging up (the library never does): quiet, except for serve.
    log_to_terminal(logging.INFO if args.command == "serve" else logging.WARNING, sys.stderr)
    try:
        if args.command == "serve":
            return _serve(args.app)
        if args.command == "console-link":
            return _console_link(args)
        if getattr(args, "audit_action", None) == "verify" and args.file is not None:
            return _verify_file(args)  # an export: no store
        status = anyio.run(_operate, _source(args), args)
        sys.stdout.flush()  # here, not at exit: a reader gone away is noticed below
        return status
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        return 130
    except ConfigurationError as exc:
        write_lines([f"humanlayer-async {_name(args)}: {exc}"], sys.stderr)
        return 2
    except (_Refused, HumanLayerError) as exc:
        write_lines([f"humanlayer-async {_name(args)}: {exc}"], sys.stderr)
        return 1


def _source(args: argparse.Namespace) -> Store | RemoteDecisions:
    """The store ``--store`` (else ``$HUMANLAYER_STORE``) names, deciding as ``--by`` (default:
    the OS user); or the HTTP API at ``--url``, as the user its token names."""
    if args.url is None:
        url = args.store or os.environ.get("HUMANLAYER_STORE")
        if not url:
            raise ConfigurationError(
                "no store: pass --store sqlite:///path or postgresql://..., or set HUMANLAYER_STORE"
                " (or --url https://... for a listener's HTTP API)"
            )
        if "by" in args and args.by is None:
            args.by = getpass.getuser()
        return store_from_url(url, create=False)
    if args.store is not None:
        raise ConfigurationError("--url or --store: give one of them")
    if getattr(args, "by", None) is not None:
        raise ConfigurationError("--by does not go with --url: you decide as the user your token names")
    if args.command == "prune" or getattr(args, "audit_action", None) is not None:
        raise ConfigurationError("this command needs the store itself: use --store, not --url")
    return connect(args.url, args.token_file)


def _reader_gone() -> int:
    """Standard output's reader went away (``| head``): end quietly, as SIGPIPE would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere at exit
    os.close(devnull)
    return _SIGPIPE_STATUS


# -- serve ---------------------------------------------------------------------------------


def _load_app(spec: str) -> HumanLayer:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"APP must be module:attribute (like uvicorn's), not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn does: the app's module is where you run it
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, HumanLayer):
        raise ConfigurationError(f"{spec} is a {type(target).__name__}, not a HumanLayer")
    return target


def _serve(spec: str) -> int:
    hl = _load_app(spec)

    async def serve() -> None:
        async with anyio.create_task_group() as task_group:
            await task_group.start(hl.serve)
            write_lines([f"humanlayer-async: serving {spec} on {hl.url}"])
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            task_group.cancel_scope.cancel()

    anyio.run(serve)
    return 0


# -- console-link --------------------------------------------------------------------------


def _console_link(args: argparse.Namespace) -> int:
    key = os.environ.get(TOKEN_ENV)
    if not key:
        raise ConfigurationError(f"set ${TOKEN_ENV} to the console's token (with --user: that user's key)")
    settings: dict[str, Any] = {"base_path": args.base_path, "code_lifetime": args.expires_in}
    web = WebChannel(users={args.user: key}, **settings) if args.user else WebChannel(token=key, **settings)
    write_lines([web.login_url(args.url)])
    return 0


# -- store commands ------------------------------------------------------------------------


async def _operate(source: Store | RemoteDecisions, args: argparse.Namespace) -> int:
    """Run a store command through the engine's deciding side and the store alone (no
    runtime, no channels, no listener, no store follower), or through the HTTP API."""
    try:
        engine = source if isinstance(source, RemoteDecisions) else Decisions(source)
        result = await _HANDLERS[args.command](engine, args)
    finally:
        await source.aclose()
    if isinstance(result, Answered) and result.decision is not None and not result.stands:
        raise _Refused(
            f"request {result.decision.request_id} was already {describe_decision(result.decision)}"
        )
    return 0


def _print(
    args: argparse.Namespace, data: Any, headers: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    if args.json:  # ASCII JSON: every control or bidi character is a \u escape
        print(json.dumps(to_json(data, "output"), indent=2))
    elif rows:
        write_lines(table(headers, rows))


async def _resolve(engine: Deciding, request_id: str) -> str:
    """The full id: ``request_id`` itself, or the one pending request it is a prefix of (the
    store looks for two at most: one is the answer, two say the prefix is ambiguous)."""
    if len(request_id) < MIN_PREFIX:
        raise _Refused(f"{request_id!r} is too short: type at least {MIN_PREFIX} characters of the id")
    try:
        return (await engine.get(request_id)).id
    except UnknownRequest:
        if not _ID_TEXT.fullmatch(request_id):  # no request id has other characters
            raise
        matches = [request.id for request in await engine.pending(id_prefix=request_id, limit=2)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            count = await engine.count_pending(id_prefix=request_id)
            raise _Refused(f"{request_id!r} is the prefix of {count} pending requests") from None
        raise


def _request_data(request: ApprovalRequest) -> dict[str, Any]:
    data = dataclasses.asdict(request)
    data["status"] = request.status.value
    return data


async def _page(
    engine: Deciding, *, limit: int, after: str | None = None, **filters: Unpack[Filters]
) -> Page:
    """A page of pending requests and their count: the API's answer with ``--url``, else read
    from the store as the API reads it (``read_page``)."""
    if isinstance(engine, RemoteDecisions):
        return await engine.page(limit=limit, after=after, **filters)
    return await read_page(engine, limit=limit, after=after, **filters)


async def _pending(engine: Deciding, args: argparse.Namespace) -> None:
    filters = Filters(run_id=args.run_id, kind=args.kind, function=args.function, older_than=args.older_than)
    try:
        page = await _page(engine, limit=args.limit, after=args.after, **filters)
    except UnknownRequest:
        raise _Refused(
            f"--after {args.after}: no request has this id (pruned?): list from the first page again"
        ) from None
    requests = page.requests
    now = datetime.now(UTC)
    rows = [
        (
            request.short_id,
            request.kind,
            request.run_id or "-",
            summarize(request),
            f"{(request.expires_at - now).total_seconds() / 60:.0f} min",
        )
        for request in requests
    ]
    _print(args, [_request_data(r) for r in requests], ("ID", "KIND", "RUN", "CALL", "EXPIRES IN"), rows)
    if not args.json and not requests:
        write_lines(["nothing is pending" if args.after is None else "nothing is pending after it"])
    elif not args.json:  # a hint, kept off the table
        write_lines(
            ["… marks where a call is shortened: humanlayer-async show ID prints all of it"], sys.stderr
        )
    if page.next is not None:  # on standard error, with --json too: the output stays a list
        write_lines(
            [
                f"showing {len(requests):,} of {page.total:,} pending; the next {args.limit:,}:"
                f" the same command with --after {page.next}"
            ],
            sys.stderr,
        )


async def _show(engine: Deciding, args: argparse.Namespace) -> None:
    request = await engine.get(await _resolve(engine, args.id))
    if args.json:
        _print(args, _request_data(request), (), [])
        return
    status = "pending" if request.decision is None else describe_decision(request.decision)
    write_lines([*full_call(request).splitlines(), f"Status: {status}"])


def _show_decision(args: argparse.Namespace, answered: Answered) -> Answered:
    decision = answered.decision
    if decision is None:  # a vote: the request waits for more
        progress = describe_votes(answered.votes, answered.needed)
        if args.json:
            votes = [dataclasses.asdict(vote) for vote in answered.votes]
            _print(args, {"status": "pending", "votes": votes, "needed": answered.needed}, (), [])
        else:
            write_lines([f"counted: {progress}"])
        return answered
    if args.json:
        _print(args, dataclasses.asdict(decision), (), [])
    else:
        write_lines([f"{decision.request_id}: {describe_decision(decision)}"])
    return answered


async def _batch(engine: Deciding, args: argparse.Namespace, approved: bool) -> Answered | None:
    """``--all``: list the pending requests of ``--function`` (and ``--run-id``, ``--older-than``),
    confirm, then decide exactly those, one audited decision each (none that arrived after the
    list). At most ``MAX_BATCH``: more are refused, before anything is listed or decided, saying
    how many match, so that what is confirmed is a list a person can read."""
    if args.id is not None or not args.all or not args.function or getattr(args, "set", None):
        raise _Refused("give a request id, or --all with --function NAME (and no --set)")
    filters = Filters(kind="approval", function=args.function, run_id=args.run_id, older_than=args.older_than)
    page = await _page(engine, limit=MAX_BATCH, **filters)
    if page.next is not None:
        raise _Refused(
            f"{page.total:,} pending requests of {args.function} match, and --all decides at most"
            f" {MAX_BATCH:,} at once: narrow them with --run-id or --older-than (the oldest first),"
            " then run it again for the rest"
        )
    requests = page.requests
    if not requests:
        write_lines([f"nothing of {args.function} is pending"])
        return None
    verb = "approve" if approved else "deny"
    write_lines([f"  {request.short_id}  {summarize(request)}" for request in requests])
    if not args.yes:
        sys.stdout.write(f"{verb} these {len(requests)} requests? [y/N] ")
        sys.stdout.flush()
        reply = await anyio.to_thread.run_sync(sys.stdin.readline)
        if reply.strip().lower() not in ("y", "yes"):
            write_lines(["nothing decided"])
            return None
    refused: Answered | None = None
    edited: list[str] = []
    comment = args.comment if approved else args.reason
    for request in requests:
        try:  # the call as listed: one edited since was not what the operator confirmed
            answered = await engine.decide(
                request.id, approved, by=args.by, comment=comment, via="cli", seen=request.fingerprint
            )
        except ArgumentsEdited:
            edited.append(request.short_id)
            continue
        _show_decision(args, answered)
        if answered.decision is not None and not answered.stands:
            refused = answered
    if edited:
        raise _Refused(
            f"not decided, edited after the list was printed: {', '.join(edited)}; list them again"
        )
    return refused  # the first one someone else had decided: exits 1, naming it


async def _approve(engine: Deciding, args: argparse.Namespace) -> Answered | None:
    if args.all or args.id is None:
        return await _batch(engine, args, True)
    request_id = await _resolve(engine, args.id)
    edits = None
    if args.set:
        schemas = (await engine.get(request_id)).editable or {}
        edits = {}
        for assignment in args.set:
            name, equals, text = assignment.partition("=")
            if not equals or not name:
                raise _Refused(f"--set takes NAME=VALUE, not {assignment!r}")
            edits[name] = parse_edit(text, schemas.get(name))
    answered = await engine.decide(request_id, True, by=args.by, comment=args.comment, via="cli", edits=edits)
    return _show_decision(args, answered)


async def _deny(engine: Deciding, args: argparse.Namespace) -> Answered | None:
    if args.all or args.id is None:
        return await _batch(engine, args, False)
    request_id = await _resolve(engine, args.id)
    return _show_decision(
        args, await engine.decide(request_id, False, by=args.by, comment=args.reason, via="cli")
    )


async def _cancel(engine: Deciding, args: argparse.Namespace) -> Answered:
    request_id = await _resolve(engine, args.id)
    return _show_decision(args, await engine.cancel(request_id, by=args.by, reason=args.reason, via="cli"))


async def _answer(engine: Deciding, args: argparse.Namespace) -> Answered:
    request_id = await _resolve(engine, args.id)
    return _show_decision(args, await engine.respond(request_id, args.text, by=args.by, via="cli"))


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _grant_state(grant: Grant, now: datetime) -> tuple[str, str]:
    """The grant's state as a word for JSON (active, waiting, expired, used up, revoked)
    and as a phrase for people (``waiting for 1 more approver``, ``revoked by ann at ...``)."""
    if grant.revoked_at is not None:
        return "revoked", f"revoked by {grant.revoked_by} at {_utc(grant.revoked_at)}"
    if now >= grant.expires_at:
        return "expired", "expired"
    if grant.max_uses is not None and grant.uses >= grant.max_uses:
        return "used up", "used up"
    missing = grant.approvals - len(grant.by)
    if missing > 0:
        return "waiting", f"waiting for {missing} more approver{'' if missing == 1 else 's'}"
    return "active", "active"


def _grant_data(grant: Grant, now: datetime) -> dict[str, Any]:
    return {**dataclasses.asdict(grant), "state": _grant_state(grant, now)[0]}


def _print_grant(args: argparse.Namespace, grant: Grant, line: str) -> None:
    if args.json:
        _print(args, _grant_data(grant, datetime.now(UTC)), (), [])
    else:
        write_lines([line])


async def _grants(engine: Deciding, args: argparse.Namespace) -> None:
    if args.grant_action == "revoke":
        await _revoke_grant(engine, args)
    elif args.grant_action == "confirm":
        await _confirm_grant(engine, args)
    else:
        await _list_grants(engine, args)


async def _list_grants(engine: Deciding, args: argparse.Namespace) -> None:
    grants = await engine.grants(active=not args.all)
    now = datetime.now(UTC)
    rows = [
        (
            grant.id,
            grant.function,
            format_kwargs(grant.where, 60) if grant.where else "any call",
            ", ".join(grant.by),
            f"{grant.expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            f"{grant.uses}/{'-' if grant.max_uses is None else grant.max_uses}",
            _grant_state(grant, now)[1],
        )
        for grant in grants
    ]
    _print(
        args,
        [_grant_data(grant, now) for grant in grants],
        ("ID", "TOOL", "WHERE", "BY", "EXPIRES AT (UTC)", "USES", "STATE"),
        rows,
    )
    if not args.json and not grants:
        write_lines(["no grants" if args.all else "no live grants (--all lists the ended ones too)"])


async def _revoke_grant(engine: Deciding, args: argparse.Namespace) -> None:
    grant = await engine.revoke_grant(args.id, by=args.by)
    assert grant.revoked_at is not None and grant.revoked_by is not None  # the store revoked it
    revoked = f"by {grant.revoked_by} at {_utc(grant.revoked_at)}"
    if args.by is not None and same_name(grant.revoked_by) != same_name(args.by):  # someone else did, first
        raise _Refused(f"grant {grant.id} of tool {grant.function} was already revoked {revoked}")
    _print_grant(
        args, grant, f"revoked grant {grant.id} of tool {grant.function} {revoked}: its calls ask again"
    )


async def _confirm_grant(engine: Deciding, args: argparse.Namespace) -> None:
    grant = await engine.confirm_grant(args.id, by=args.by)
    given = f"grant {grant.id} of tool {grant.function} given by {', '.join(grant.by)}"
    if grant.confirmed:
        line = f"confirmed {given}: active until {_utc(grant.expires_at)}"
    else:
        line = f"counted: {given}; {_grant_state(grant, datetime.now(UTC))[1]}"
    _print_grant(args, grant, line)


async def _stats(engine: Deciding, args: argparse.Namespace) -> None:
    if isinstance(engine, RemoteDecisions):  # counted by the server, not the trail sent over
        stats = await engine.stats(since=args.since)
    else:
        stats = tool_stats(await engine.history(since=args.since))
    _print(args, [dataclasses.asdict(tool) for tool in stats], HEADERS, [cells(tool) for tool in stats])
    if not args.json and not stats:
        write_lines([f"nothing was asked since {_utc(args.since)}"])


async def _audit(engine: Deciding, args: argparse.Namespace) -> None:
    if args.audit_action == "verify":
        _report(args, await verify_store(_store(engine), environment_key(), args.expect_head))
        return
    if args.audit_action == "export":
        await _export(_store(engine))
        return
    entries: list[AuditEntry] = await engine.history(request_id=args.request, since=args.since)
    rows = [
        (
            f"{entry.at:%Y-%m-%d %H:%M:%S}",
            entry.request_id[:8],
            entry.event.removeprefix("approval."),
            ", ".join(f"{k}={format_value(v, 60)}" for k, v in entry.fields.items() if v is not None),
        )
        for entry in entries
    ]
    _print(
        args,
        [dataclasses.asdict(entry) for entry in entries],
        ("AT (UTC)", "REQUEST", "EVENT", "DETAILS"),
        rows,
    )


def _store(engine: Deciding) -> Store:
    """The store itself, for the commands that work on it alone (``_source`` keeps them from ``--url``)."""
    assert isinstance(engine, Decisions)
    return engine.store


def _count(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _report(args: argparse.Namespace, verdict: Verdict) -> None:
    """What ``audit verify`` found: ok and the head, or ``_Refused`` naming the first problem."""
    problem = verdict.problem
    if args.json:
        data = {
            "ok": problem is None,
            "entries": verdict.entries,
            "chains": verdict.chains,
            "unchained": verdict.unchained,
            "head": str(verdict.head),
            "problem": None if problem is None else dataclasses.asdict(problem),
            "problems": verdict.broken,
        }
        _print(args, data, (), [])
    if problem is not None:
        more = verdict.broken > 1 and f" ({_count(verdict.broken - 1, 'more problem', 'more problems')})"
        raise _Refused(f"{problem.message}{more or ''}")
    if not args.json:
        entries = _count(verdict.entries, "entry", "entries")
        checked = f"{entries} in {_count(verdict.chains, 'chain', 'chains')}"
        if verdict.unchained:  # written before the store chained its entries
            checked += f", and {_count(verdict.unchained, 'older one', 'older ones')} unchained"
        write_lines([f"ok: {checked}", f"head: {verdict.head}"])


def _verify_file(args: argparse.Namespace) -> int:
    """``audit verify --file``: an export checked as a store's trail is, without a database."""
    verifier = Verifier(environment_key(), args.expect_head)
    try:
        if args.file == "-":
            _read_into(verifier, sys.stdin)
        else:
            with open(args.file, encoding="utf-8") as lines:
                _read_into(verifier, lines)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except ValueError as exc:  # not JSON, not an export line, or not UTF-8
        raise _Refused(f"{args.file}: {exc}") from None
    _report(args, verifier.verdict())
    sys.stdout.flush()
    return 0


def _read_into(verifier: Verifier, lines: Iterable[str]) -> None:
    for entry in read_export(lines):
        verifier.add(entry)


async def _export(store: Store) -> None:
    """``audit export``: every entry with its hashes, one line of ASCII JSON each."""
    async for entry in chain_source(store).audit_chain():
        sys.stdout.write(f"{entry.to_line()}\n")


async def _prune(engine: Deciding, args: argparse.Namespace) -> None:
    count = await _store(engine).prune(args.older_than)
    if args.json:
        _print(args, {"pruned": count}, (), [])
    else:
        write_lines([f"pruned {count} decided request{'' if count == 1 else 's'}"])


_HANDLERS: dict[str, Callable[[Deciding, argparse.Namespace], Awaitable[Any]]] = {
    "pending": _pending,
    "show": _show,
    "approve": _approve,
    "deny": _deny,
    "cancel": _cancel,
    "answer": _answer,
    "grants": _grants,
    "stats": _stats,
    "audit": _audit,
    "prune": _prune,
}
