"""humanlayer_async: human approval for the risky tools of AI agents, asyncio-native.

::

    hl = HumanLayer()

    @hl.require_approval(condition=lambda amount, **kwargs: amount > 1000)
    async def transfer_money(amount: float, recipient: str) -> str: ...
"""

from ._audit import AuditEntry
from ._client import HumanLayer
from ._exceptions import (
    AlreadyExecuted,
    ApprovalDenied,
    ApprovalTimeout,
    ArgumentsChanged,
    ArgumentsEdited,
    ChannelError,
    ConfigurationError,
    HumanLayerError,
    InvalidEdit,
    NotAnApprover,
    OutcomeUnknown,
    StoreError,
    TooManyPending,
    UnknownGrant,
    UnknownRequest,
)
from ._gate import current_decision
from ._models import ApprovalRequest, Decision, Grant, Principal, Status, Vote
from ._render import mask_secrets
from ._schedule import Escalation

__version__ = "0.1.0"

__all__ = [
    "AlreadyExecuted",
    "ApprovalDenied",
    "ApprovalRequest",
    "ApprovalTimeout",
    "ArgumentsChanged",
    "ArgumentsEdited",
    "AuditEntry",
    "ChannelError",
    "ConfigurationError",
    "Decision",
    "Escalation",
    "Grant",
    "HumanLayer",
    "HumanLayerError",
    "InvalidEdit",
    "NotAnApprover",
    "OutcomeUnknown",
    "Principal",
    "Status",
    "StoreError",
    "TooManyPending",
    "UnknownGrant",
    "UnknownRequest",
    "Vote",
    "__version__",
    "current_decision",
    "mask_secrets",
]
