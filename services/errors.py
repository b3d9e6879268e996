"""Errors raised by the Microsoft backends.

Every error keeps Microsoft's own error code (``code``: a Graph ``error.code``
such as ``ErrorItemNotFound`` / ``syncStateNotFound``, an EWS ``ResponseCode``
such as ``ErrorServerBusy``, or an OAuth ``error`` such as ``invalid_grant``),
the HTTP status when there was one and the request id Microsoft gave, so that
logs and the Odoo sync-run record can show what Microsoft said.  Tokens and
passwords are never put into these messages.
"""


class ExchangeError(Exception):
    """Base error: something Microsoft (Graph, EWS or the identity platform) refused.

    ``outcome_unknown`` is True when a request that changes the mailbox
    (a create, a move) may have been carried out although no answer came
    back (read timeout, dropped connection, 502/504): it was not sent again,
    and the caller should look before doing it again.
    """

    outcome_unknown = False

    def __init__(self, message, code=None, status=None, request_id=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id

    def __str__(self):
        details = [
            part
            for part in (
                self.code,
                f"HTTP {self.status}" if self.status else None,
                f"request-id {self.request_id}" if self.request_id else None,
            )
            if part
        ]
        if details:
            return f"{self.message} ({', '.join(details)})"
        return self.message


class AuthenticationError(ExchangeError):
    """The mailbox cannot be reached with the credentials we have.

    ``kind`` tells the caller what the user must do:

    - ``"password"``: EWS rejected the user name / password (HTTP 401);
    - ``"invalid_grant"``: the refresh token is expired or revoked, sign in again;
    - ``"token"``: Graph still answered 401 after a fresh token;
    - ``"consent"``: the app lacks consent or a permission (403 / AADSTS65001);
    - ``"no_account"``: the token cache holds no account to refresh silently;
    - ``"client"``: the application id / secret is wrong (invalid_client);
    - ``"state"``: the sign-in answer does not belong to the flow that was started;
    - ``"auth_method"``: the server does not offer the authentication chosen (a 401 without NTLM).
    """

    def __init__(self, message, kind="token", **kwargs):
        super().__init__(message, **kwargs)
        self.kind = kind


class ConnectionProblem(ExchangeError):
    """The server could not be reached; ``kind`` is "dns", "refused", "tls", "timeout" or "unavailable".

    "unavailable": the server answered, but with HTTP 503 (overloaded, or under maintenance).
    """

    def __init__(self, message, kind="refused", transient=False, **kwargs):
        super().__init__(message, **kwargs)
        self.kind = kind
        self.transient = transient


class FolderNotFound(ExchangeError):
    """A folder path (e.g. "Inbox/Transfer In") or folder id does not exist in the mailbox."""


class ItemNotFound(ExchangeError):
    """The message, event or contact is gone (moved or deleted meanwhile)."""


class BatchBodyNotBase64(ExchangeError):
    """A Graph ``$batch`` answer that should carry base64 (a binary body) holds something else."""


class SyncStateExpired(ExchangeError):
    """Internal: the saved delta link / SyncState is no longer accepted; the backend restarts the listing."""


class ThrottledError(ExchangeError):
    """Microsoft kept throttling after all retries; ``retry_after`` is its last hint in seconds."""

    def __init__(self, message, retry_after=None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TimeBudgetExceeded(ExchangeError):
    """The run's time budget is spent: stop cleanly, the last persisted state resumes the next run.

    ``retry_after`` is set when Microsoft's throttling hint did not fit in the budget: the
    next run should not start before it.
    """

    retry_after = None


def connection_problem(exc, url=""):
    """Translate a requests/urllib3/socket exception into a :class:`ConnectionProblem`.

    ``kind`` is "tls", "timeout", "dns" or "refused"; ``transient`` is True for
    timeouts and connections reset or dropped by the server, worth a retry.
    """
    import ssl

    import requests

    text = str(exc)
    transient = False
    if isinstance(exc, (requests.exceptions.SSLError, ssl.SSLError)) or "CERTIFICATE_VERIFY_FAILED" in text:
        kind = "tls"
    elif isinstance(exc, requests.exceptions.Timeout) or "timed out" in text.lower():
        kind, transient = "timeout", True
    elif any(
        marker in text
        for marker in (
            "Name or service not known",
            "getaddrinfo",
            "nodename nor servname",
            "Temporary failure in name resolution",
            "NameResolutionError",
        )
    ):
        kind = "dns"
    else:
        kind = "refused"
        transient = any(
            marker in text
            for marker in (
                "Connection aborted",
                "RemoteDisconnected",
                "reset by peer",
                "ConnectionResetError",
                "BrokenPipe",
            )
        )
    where = f" to {url}" if url else ""
    problem = ConnectionProblem(f"Connection{where} failed ({kind}): {type(exc).__name__}", kind=kind)
    problem.transient = transient
    return problem
