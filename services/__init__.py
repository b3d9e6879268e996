"""The connector's only door to Microsoft: mailbox backends for Graph and EWS.

Plain Python (never imports odoo).  Callers use :class:`MailboxBackend`
through :class:`GraphBackend` or :class:`EwsBackend`; see :mod:`services.backend`.
"""

from .backend import (
    ContactChange,
    ContactResult,
    MailboxBackend,
    MarkedContact,
    RemoteAddress,
    RemoteAttendee,
    RemoteContact,
    RemoteEvent,
    RemoteFolder,
    RemoteMailbox,
    RemoteMessage,
    SyncPage,
)
from .errors import (
    AuthenticationError,
    BatchBodyNotBase64,
    ConnectionProblem,
    ExchangeError,
    FolderNotFound,
    ItemNotFound,
    SyncStateExpired,
    ThrottledError,
    TimeBudgetExceeded,
)
from .throttle import RetryPolicy, RunBudget

__all__ = [
    "AuthenticationError",
    "BatchBodyNotBase64",
    "ConnectionProblem",
    "ContactChange",
    "ContactResult",
    "ExchangeError",
    "FolderNotFound",
    "ItemNotFound",
    "MailboxBackend",
    "MarkedContact",
    "RemoteAddress",
    "RemoteAttendee",
    "RemoteContact",
    "RemoteEvent",
    "RemoteFolder",
    "RemoteMailbox",
    "RemoteMessage",
    "RetryPolicy",
    "RunBudget",
    "SyncPage",
    "SyncStateExpired",
    "ThrottledError",
    "TimeBudgetExceeded",
]
