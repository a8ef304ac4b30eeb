"""Reading replies (quotes of common mail clients, clear answers only), reply tokens, verdicts."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from humanlayer_async.channels._mail_auth import (
    Verdict,
    authentication_results,
    failed_check,
    received_spf,
    sender_check,
)
from humanlayer_async.channels._mail_reply import parse_answer, strip_quotes
from humanlayer_async.channels._reply_token import TOKEN_LENGTH, ReplyTokens

QUOTED = "> An agent wants to make this call and needs your approval:\n> approve\n> deny: <reason>\n"

CLIENT_REPLIES = {
    "gmail": (
        "Deny - not this quarter\r\n\r\nOn Tue, Nov 25, 2026 at 10:02\u202fAM Approvals <\r\n"
        "approvals+abc@replies.company.com> wrote:\r\n\r\n" + QUOTED.replace("\n", "\r\n")
    ),
    "gmail in French": "deny: pas ce trimestre\n\nLe mar. 25 nov. 2026 à 10:02, Approvals <a@b.c> a écrit :\n"
    + QUOTED,
    "apple mail": (
        "Deny: not this quarter\n\nSent from my iPhone\n\n"
        "> On 25 Nov 2026, at 10:02, Approvals wrote:\n" + QUOTED
    ),
    "thunderbird": "deny, not this quarter\n\nOn 11/25/26 10:02 AM, Approvals wrote:\n" + QUOTED,
    "outlook desktop": (
        "deny: not this quarter\n\n-----Original Message-----\nFrom: Approvals <approvals@company.com>\n"
        "Sent: Tuesday, November 25, 2026 10:02 AM\nTo: Alice\nSubject: [Approval needed]\n\napprove\n"
    ),
    "outlook web": (
        "Deny. not this quarter\n\n________________________________\n"
        "From: Approvals <approvals@company.com>\n"
        "Sent: Tuesday, November 25, 2026 10:02\nTo: Alice\n\napprove\n"
    ),
    "outlook without separator": (
        "deny: not this quarter\n\n*From:* Approvals\n*Sent:* Tuesday\n*Subject:* approve\n"
    ),
    "bottom-posted": QUOTED + "\ndeny: not this quarter\n\n-- \nAlice Example\nHead of Ops\n",
}


@pytest.mark.parametrize("client", sorted(CLIENT_REPLIES))
def test_replies_from_common_clients_read_as_the_answer_above_the_quote(client: str) -> None:
    stripped = strip_quotes(CLIENT_REPLIES[client])
    assert "approve" not in stripped.lower()
    answer = parse_answer(stripped)
    assert answer is not None and answer[0] is False
    assert answer[1] in {"not this quarter", "pas ce trimestre"}


def test_inline_answers_between_quoted_lines_are_kept() -> None:
    text = "> Should we ship?\nYes, ship it\n> And the docs?\nThey can wait.\n"
    assert strip_quotes(text) == "Yes, ship it\nThey can wait."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("approve", (True, None)),
        ("  Approved  ", (True, None)),
        ("YES", (True, None)),
        ("lgtm.", (True, None)),
        ("Approved, go ahead", (True, "go ahead")),
        ("\n\napprove: after 5pm\nthanks", (True, "after 5pm")),
        ("deny", (False, None)),
        ("Denied: vendor not verified", (False, "vendor not verified")),
        ("reject - too expensive", (False, "too expensive")),
        ("rejected.", (False, None)),
        ("No, wrong customer", (False, "wrong customer")),
        ("no", (False, None)),
        ("deny:nope", (False, "nope")),
        ("No problem, go ahead", None),
        ("not approved", None),
        ("approve?", None),
        ("approve!", None),
        ("Yes please", None),
        ("No.1 priority, ship it", None),
        ("no-brainer, approve", None),
        ("I approve", None),
        ("", None),
        ("\n \n", None),
    ],
)
def test_only_clear_answers_decide(text: str, expected: tuple[bool, str | None] | None) -> None:
    assert parse_answer(text) == expected


@given(st.text())
def test_any_text_is_an_answer_or_none_never_an_error(text: str) -> None:
    answer = parse_answer(strip_quotes(text))
    assert answer is None or isinstance(answer[0], bool)


@given(st.sampled_from(["deny", "Reject", "NO"]), st.sampled_from([":", ",", " -", "."]), st.text(min_size=1))
def test_a_reason_after_the_word_is_kept(word: str, separator: str, reason: str) -> None:
    reason = " ".join(reason.split())
    answer = parse_answer(f"{word}{separator} {reason}")
    assert answer == (False, reason or None)


def test_tokens_round_trip_and_refuse_what_was_not_made_for_them() -> None:
    tokens = ReplyTokens(b"k" * 32)
    recipients = ("alice@company.com", "bob@company.com")
    request_id = secrets.token_hex(16)
    token = tokens.make(request_id, 1, recipients[1])
    assert len(token) == TOKEN_LENGTH == 44 and token == token.lower()
    assert tokens.read(token, recipients) == (request_id, 1)
    assert tokens.read(token.upper(), recipients) == (request_id, 1)  # a mail system may change case
    assert tokens.read(token, tuple(reversed(recipients))) is None  # made for bob, not alice
    assert tokens.read(token, recipients[:1]) is None  # no such recipient
    assert ReplyTokens(b"other key").read(token, recipients) is None
    flipped = token[:10] + ("a" if token[10] != "a" else "b") + token[11:]
    assert tokens.read(flipped, recipients) is None
    for bad in ("", token[:-1], token + "a", "1" * 44, "!" * 44):
        assert tokens.read(bad, recipients) is None
    with pytest.raises(ValueError, match="32-hex-digit"):
        tokens.make("not-hex", 0, recipients[0])
    assert repr(tokens) == "ReplyTokens(secret=***)"


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")], None),
        ([("spf", "softfail")], "spf=softfail"),
        ([("spf", "fail")], "spf=fail"),
        ([("spf", "neutral"), ("dkim", "none")], None),
        ([("dkim", "fail"), ("dkim", "pass")], None),
        ([("dkim", "fail")], "dkim=fail"),
        ([("dmarc", "fail"), ("spf", "pass")], "dmarc=fail"),
    ],
)
def test_failing_verdicts(verdicts: list[tuple[str, str]], expected: str | None) -> None:
    assert failed_check([Verdict(method, result) for method, result in verdicts]) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "mx.google.com; dkim=pass header.i=@company.com header.s=s1 header.b=TrM8; "
            "spf=pass (google.com: domain of alice@company.com designates 1.2.3.4) "
            "smtp.mailfrom=alice@company.com; "
            "dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=company.com",
            [("dkim", "pass", None), ("spf", "pass", "company.com"), ("dmarc", "pass", "company.com")],
        ),
        (  # RFC 8601's own example, with a version and a reason
            'example.com 1; dkim/1=pass reason="good signature" header.d=Example.COM; '
            "spf=fail smtp.mailfrom=example.net",
            [("dkim", "pass", "example.com"), ("spf", "fail", "example.net")],
        ),
        (  # comments (nested, with escapes) and quoted strings hide nothing and forge nothing
            "mx; dkim=pass (header.d=company.com (nested \\) header.d=x)) header.d=evil.example; "
            'spf=pass smtp.mailfrom="alice;(x)"@company.com',
            [("dkim", "pass", "evil.example"), ("spf", "pass", "company.com")],
        ),
        ("mx.company.com; none", []),
        ("mx.company.com; spf=pass; arc=pass; iprev=pass policy.iprev=1.2.3.4", [("spf", "pass", None)]),
        (  # Microsoft's style, with stray domain statements
            "spf=softfail (sender IP is 1.2.3.4) smtp.mailfrom=gmail.com; clientdomain.com; dkim=fail "
            "header.d=clientdomain.com;clientdomain.com; dmarc=fail action=quarantine "
            "header.from=clientdomain.com",
            [("dkim", "fail", "clientdomain.com"), ("dmarc", "fail", "clientdomain.com")],
        ),
        ("", []),
    ],
)
def test_authentication_results_are_read_with_the_domain_each_result_names(
    header: str, expected: list[tuple[str, str, str | None]]
) -> None:
    assert authentication_results(header) == [Verdict(*verdict) for verdict in expected]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "Pass (sender SPF authorized) identity=mailfrom; client-ip=209.85.160.180; "
            "helo=mail.company.com; envelope-from=Alice@Company.com; receiver=x@inbound.postmarkapp.com",
            Verdict("spf", "pass", "company.com"),
        ),
        (
            'pass (a; envelope-from=alice@company.com) receiver=mx; envelope-from="b@evil.example"',
            Verdict("spf", "pass", "evil.example"),
        ),
        (
            "pass identity=helo; helo=company.com; envelope-from=postmaster@company.com",
            Verdict("spf", "pass"),
        ),
        ("softfail client-ip=1.2.3.4", Verdict("spf", "softfail")),
        ("", None),
        (None, None),
    ],
)
def test_received_spf_speaks_for_the_envelope_sender(header: str | None, expected: Verdict | None) -> None:
    assert received_spf(header) == expected


def test_a_pass_vouches_only_for_its_own_domain_and_seen_verdicts_only_refuse() -> None:
    passing = [Verdict("spf", "pass", "company.com")]
    assert sender_check("alice@company.com", passing, required=True) is None
    assert sender_check("alice@sub.company.com", passing, required=True) == (
        "no SPF, DKIM or DMARC pass for sub.company.com, the From domain"
    )
    forged = [Verdict("dmarc", "pass", "company.com")]
    assert sender_check("alice@company.com", [], forged, required=True) == (
        "the provider reported no SPF, DKIM or DMARC verdict"
    )
    assert sender_check("alice@company.com", [], forged, required=False) is None
    failing = [Verdict("spf", "fail", "evil.example")]
    assert sender_check("alice@company.com", passing, failing, required=True) == (
        "the message failed its sender checks (spf=fail)"
    )
    assert sender_check("alice@company.com", [Verdict("dkim", "pass")], required=True) is not None
