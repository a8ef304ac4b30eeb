"""The exceptions raised by humanlayer_async.

Every exception the SDK raises on purpose derives from one root::

    HumanLayerError
     ├── ApprovalDenied          a human said no, or the request was cancelled
     │    └── ApprovalTimeout    nobody answered before the request expired
     ├── UnknownRequest          no request has this id
     ├── NotAnApprover           the person deciding is not on the request's allowlist
     ├── ConfigurationError      a constructor argument or environment variable is wrong
     ├── ChannelError            a channel could not deliver or update a message
     ├── StoreError              the store could not read or write
     ├── AlreadyExecuted         a re-attached call already ran; it does not run twice
     ├── OutcomeUnknown          a re-attached call started but never finished; it does not run again
     ├── ArgumentsChanged        the approval was given for other arguments than this call's
     ├── InvalidEdit             an approval's edit names an argument it may not set, or a wrong value
     └── TooManyPending          the HumanLayer already waits for max_pending requests; nothing was asked

Errors from third-party libraries (slack_sdk, aiosmtplib, asyncpg, ...) are converted
at the channel or store boundary into ``ChannelError`` or ``StoreError``, keeping the
original as ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import Decision

__all__ = [
    "AlreadyExecuted",
    "ApprovalDenied",
    "ApprovalTimeout",
    "ArgumentsChanged",
    "ArgumentsEdited",
    "ChannelError",
    "ConfigurationError",
    "HumanLayerError",
    "InvalidEdit",
    "NotAnApprover",
    "OutcomeUnknown",
    "StoreError",
    "TooManyPending",
    "UnknownGrant",
    "UnknownRequest",
]


class HumanLayerError(Exception):
    """The root of every error humanlayer_async raises."""


class ApprovalDenied(HumanLayerError):
    """The gated call was refused: denied by a human, or cancelled.

    The message is a sentence an LLM can act on; ``decision`` holds who decided,
    through which channel, and their comment.
    """

    def __init__(self, message: str, decision: Decision) -> None:
        super().__init__(message)
        self.decision = decision


class ApprovalTimeout(ApprovalDenied):
    """Nobody answered before the request expired; the call did not run."""


class UnknownRequest(HumanLayerError, LookupError):
    """No request has the given id."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"no approval request with id {request_id!r}")
        self.request_id = request_id


class UnknownGrant(HumanLayerError, LookupError):
    """No grant has the given id."""

    def __init__(self, grant_id: str) -> None:
        super().__init__(f"no grant with id {grant_id!r}")
        self.grant_id = grant_id


class NotAnApprover(HumanLayerError, PermissionError):
    """The person deciding is not among the request's approvers, or requested the call.

    ``requester`` is true when they are the one who caused the call: nobody approves
    their own request. ``subject`` is ``"grant"`` when it was a grant they may not give,
    confirm or revoke (``request_id`` is then the tool's or the grant's id).
    """

    def __init__(
        self, request_id: str, by: str, *, requester: bool = False, subject: str = "request"
    ) -> None:
        if requester:
            message = f"{by!r} requested {subject} {request_id!r} and may not decide it"
        else:
            message = f"{by!r} is not an approver for {subject} {request_id!r}"
        super().__init__(message)
        self.request_id = request_id
        self.by = by
        self.requester = requester


class ConfigurationError(HumanLayerError, ValueError):
    """An argument or environment variable is missing or wrong."""


class ChannelError(HumanLayerError):
    """A channel could not deliver or update a message."""


class StoreError(HumanLayerError):
    """The store could not read or write a request or decision."""


class AlreadyExecuted(HumanLayerError):
    """A re-attached call's approved request already ran, and left no JSON result to return.

    Raised instead of running the tool a second time (at most once, never twice).
    ``outcome`` is ``"ok"`` or the type name of what the earlier run raised.
    """

    def __init__(self, request_id: str, function: str, outcome: str | None) -> None:
        super().__init__(
            f"{function} already ran for request {request_id!r} (outcome: {outcome or 'unknown'}) "
            "and recorded no JSON result; it does not run again"
        )
        self.request_id = request_id
        self.outcome = outcome


class OutcomeUnknown(HumanLayerError):
    """A re-attached call's approved request started running and never finished.

    The process died inside the tool, so nobody knows whether its effect happened. The
    SDK does not run it again; a person has to look (the audit trail says so too).
    """

    def __init__(self, request_id: str, function: str) -> None:
        super().__init__(
            f"{function} started for request {request_id!r} but never finished (the process "
            "running it stopped); it does not run again: check its effect by hand"
        )
        self.request_id = request_id


class InvalidEdit(HumanLayerError, ValueError):
    """An approval's edit names an argument that is not editable, or gives it a value of the
    wrong type: nothing was decided, the request stays pending."""

    def __init__(self, request_id: str, argument: str, problem: str) -> None:
        where = f"argument {argument!r}: " if argument else ""
        super().__init__(f"cannot edit request {request_id!r}: {where}{problem}")
        self.request_id = request_id
        self.argument = argument
        self.problem = problem


class ArgumentsChanged(HumanLayerError):
    """The stored request's argument digest differs from this call's: its approval does not apply."""

    def __init__(self, request_id: str, function: str) -> None:
        super().__init__(
            f"request {request_id!r} was approved for other arguments than this call of {function}; "
            "it did not run"
        )
        self.request_id = request_id


class ArgumentsEdited(HumanLayerError):
    """The call was edited after the approver saw it (``seen=`` is an earlier ``fingerprint``):
    their answer would decide a call they did not see. Nothing was decided."""

    def __init__(self, request_id: str, function: str) -> None:
        super().__init__(
            f"the arguments of request {request_id!r} ({function}) were edited after you saw them: "
            "look at the call again before you decide"
        )
        self.request_id = request_id


class TooManyPending(HumanLayerError):
    """The ``HumanLayer`` already waits for ``max_pending`` requests: this call was refused.

    Nothing was stored or sent and the tool did not run. It is a limit against runaway
    agents and floods, not a decision: retry once some of the pending requests are answered.
    """

    def __init__(self, function: str, limit: int) -> None:
        super().__init__(
            f"{function} was not asked for: this HumanLayer already waits for {limit} approval requests "
            "(max_pending); it did not run"
        )
        self.limit = limit
