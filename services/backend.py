"""The one interface through which the connector talks to a Microsoft mailbox.

Two implementations share it: :class:`services.graph.GraphBackend` (Microsoft
Graph v1.0, Office 365) and :class:`services.ews.EwsBackend` (EWS, Exchange
2010 SP2+ on premises).  Plain dataclasses go in and come out; callers never
see a Graph JSON document or an exchangelib object.

Incremental listings (:meth:`MailboxBackend.sync_messages`,
:meth:`MailboxBackend.sync_events`) are generators of :class:`SyncPage`.  The
caller processes a page, then persists ``page.state``; passing that state
to the next call resumes right after that page, even when the previous run was
interrupted (e.g. by :class:`~services.errors.TimeBudgetExceeded`).
"""

import abc
import json
import tempfile
from dataclasses import dataclass, field
from datetime import timezone
from typing import Dict, Generic, Iterator, List, Optional, TypeVar, Union

from .errors import (
    AuthenticationError,
    ConnectionProblem,
    ExchangeError,
    FolderNotFound,
    ThrottledError,
    TimeBudgetExceeded,
)

T = TypeVar("T")
#: Bytes of a spooled file kept in memory; beyond, it moves to a temporary file on disk.
SPOOL_MEMORY_BYTES = 1024 * 1024


def new_spool():
    """A binary temporary file, in memory while small, that holds a mail source or one of its parts."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, mode="w+b")


#: Errors about the whole mailbox or run, never about one item: bulk calls raise them.
MAILBOX_WIDE_ERRORS = (AuthenticationError, ConnectionProblem, ThrottledError, TimeBudgetExceeded)


@dataclass(frozen=True)
class RemoteMailbox:
    """Who the credentials open: the primary SMTP address and display name."""

    email: str
    display_name: str = ""


@dataclass(frozen=True)
class RemoteAddress:
    """An e-mail address with its optional display name."""

    address: str
    name: str = ""


@dataclass(frozen=True)
class RemoteFolder:
    """A mail or contact folder; ``path`` is the display-name path below the root ("Inbox/Transfer In")."""

    id: str
    display_name: str
    path: str
    parent_id: Optional[str] = None


@dataclass
class RemoteMessage:
    """The envelope of a message; the full source comes from :meth:`MailboxBackend.get_mime`.

    ``id`` is the immutable id on Graph (``Prefer: IdType="ImmutableId"``) and
    the EWS item id on EWS (EWS ids change when a message is moved: use the
    id returned by :meth:`MailboxBackend.move_message`).
    """

    id: str
    internet_message_id: Optional[str] = None
    subject: str = ""
    sender: Optional[RemoteAddress] = None
    from_: Optional[RemoteAddress] = None
    to: List[RemoteAddress] = field(default_factory=list)
    cc: List[RemoteAddress] = field(default_factory=list)
    bcc: List[RemoteAddress] = field(default_factory=list)
    received: Optional[object] = None  # aware datetime (UTC)
    sent: Optional[object] = None  # aware datetime (UTC)
    has_attachments: bool = False
    is_read: bool = False
    change_key: Optional[str] = None
    folder_id: Optional[str] = None
    size: Optional[int] = None


@dataclass
class RemoteAttendee:
    """An event attendee; ``response`` is "accepted", "declined", "tentative", "none" or "organizer".

    ``type`` is "required", "optional" or "resource".
    """

    address: str
    name: str = ""
    response: str = "none"
    type: str = "required"


@dataclass
class RemoteEvent:
    """One calendar entry as seen in a window: a single event, an occurrence or exception of a series.

    ``type`` is "single", "occurrence", "exception" or "series_master".
    ``ical_uid`` of an occurrence is the series' (EWS, some Graph mailboxes)
    or its own (Graph as documented): never group occurrences by it.
    ``series_master_id`` is set by Graph only (an EWS CalendarView does not
    name the master).
    ``start``/``end`` are aware UTC datetimes.  ``recurrence`` is None or a
    plain dict ``{"type": "daily"|"weekly"|"absoluteMonthly"|..., "interval": int,
    "days_of_week": [...], "range_type": "endDate"|"noEnd"|"numbered",
    "start_date": "YYYY-MM-DD", "end_date": ..., "count": ...}`` (Graph's names).
    """

    id: str
    ical_uid: Optional[str] = None
    series_master_id: Optional[str] = None
    type: str = "single"
    subject: str = ""
    body_html: str = ""
    start: Optional[object] = None
    end: Optional[object] = None
    is_all_day: bool = False
    location: str = ""
    organizer: Optional[RemoteAddress] = None
    attendees: List[RemoteAttendee] = field(default_factory=list)
    sensitivity: str = "normal"
    show_as: str = "busy"
    is_cancelled: bool = False
    categories: List[str] = field(default_factory=list)
    change_key: Optional[str] = None
    recurrence: Optional[dict] = None
    #: The start the occurrence or exception has in its series' pattern (aware UTC), whatever it
    #: was moved to: with ``ical_uid`` it names the same occurrence in every mailbox (Graph
    #: ``originalStart``, EWS ``OriginalStart``/``RecurrenceId``). None for single events.
    original_start: Optional[object] = None
    online_meeting_url: str = ""
    #: Minutes before the start at which the mailbox's owner is reminded; None: no reminder.
    reminder_minutes: Optional[int] = None
    #: The mailbox owner's own response, in the vocabulary of :class:`RemoteAttendee`.
    my_response: str = "none"


@dataclass
class RemoteContact:
    """A contact in an Outlook contact folder (``id``/``change_key`` are None until it exists remotely)."""

    id: Optional[str] = None
    change_key: Optional[str] = None
    given_name: str = ""
    surname: str = ""
    display_name: str = ""
    company_name: str = ""
    job_title: str = ""
    emails: List[str] = field(default_factory=list)
    business_phone: str = ""
    mobile_phone: str = ""
    street: str = ""
    city: str = ""
    zip: str = ""
    state: str = ""
    country: str = ""
    website: str = ""
    notes: str = ""
    street2: str = ""
    categories: List[str] = field(default_factory=list)
    #: The ownership marker ("<database uuid>:<partner id>") kept in an extended property of the
    #: contacts the connector creates (see :mod:`services.contact_mapping`); None on other contacts.
    marker: Optional[str] = None


@dataclass(frozen=True)
class MarkedContact:
    """A contact of a folder that carries the connector's ownership marker (see ``list_marked_contacts``)."""

    id: str
    marker: str
    change_key: Optional[str] = None


@dataclass
class SyncPage(Generic[T]):
    """One page of an incremental listing.

    - ``items``: new or changed items;
    - ``removed_ids``: ids gone from the folder / window since the last state;
    - ``state``: opaque; persist it after processing the page, resuming from it
      continues after this page;
    - ``done``: this page ended the listing (``state`` is a delta link / final
      sync state: the next call only returns later changes);
    - ``reset``: the saved state had expired, so this listing restarted from
      the beginning; the caller keeps what it imported and dedupes by remote id.
    """

    items: List[T]
    removed_ids: List[str]
    state: str
    done: bool = False
    reset: bool = False


@dataclass
class ContactChange:
    """A contact to create, update or delete; ``local_ref`` is the caller's key (e.g. partner id)."""

    op: str  # "create" | "update" | "delete"
    local_ref: object
    remote_id: Optional[str] = None
    change_key: Optional[str] = None
    contact: Optional[RemoteContact] = None


@dataclass
class ContactResult:
    """The outcome of one :class:`ContactChange`, in the order the changes were given."""

    local_ref: object
    op: str
    ok: bool
    remote_id: Optional[str] = None
    change_key: Optional[str] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None

    @classmethod
    def not_applied(cls, change, error):
        """The result of a change left undone because the run stopped (``error``: TimeBudgetExceeded...)."""
        return cls(
            change.local_ref,
            change.op,
            False,
            change.remote_id,
            error_code=type(error).__name__,
            error_message=str(error),
        )

    @classmethod
    def outcome_unknown(cls, change, error):
        """The result of a change sent once without an answer: it may exist remotely (``OutcomeUnknown``).

        Not sent again, so that it never exists twice; before creating it
        again the caller should look for it (e.g. by e-mail address).
        """
        return cls(
            change.local_ref,
            change.op,
            False,
            change.remote_id,
            error_code="OutcomeUnknown",
            error_message=str(error),
        )


def folder_path_names(path):
    """The display names of a folder path: "Inbox/Transfer In/" → ["Inbox", "Transfer In"]."""
    return [name.strip() for name in path.strip("/").split("/") if name.strip()]


def window_bounds(window_start, window_end):
    """The calendar window as ``["YYYY-MM-DDTHH:MM:SSZ", ...]`` (UTC); naive datetimes are refused."""
    if window_start.tzinfo is None or window_end.tzinfo is None:
        raise ValueError("Calendar windows need timezone-aware datetimes")
    return [
        value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") for value in (window_start, window_end)
    ]


def saved_window_state(state, window):
    """``(saved, reset)`` for a calendar state: the saved dict when it was made for ``window``.

    Calendar states are JSON documents ``{"window": [start, end], ...}``; a
    state of another window (or unreadable) gives ``({}, True)``: the
    listing starts over.
    """
    if not state:
        return {}, False
    try:
        saved = json.loads(state)
    except ValueError:
        return {}, True
    if not isinstance(saved, dict) or saved.get("window") != window:
        return {}, True
    return saved, False


class MailboxBackend(abc.ABC):
    """One user's mailbox, reached through Graph or EWS.

    A backend is not thread-safe: use one per thread.  All backends of the same
    mailbox in the process share one concurrency limit (4 requests, see
    :mod:`services.throttle`).  Every method may raise
    :class:`~services.errors.AuthenticationError`,
    :class:`~services.errors.ConnectionProblem`,
    :class:`~services.errors.ThrottledError` or
    :class:`~services.errors.TimeBudgetExceeded` besides the errors it names.
    """

    account_email: str
    #: The run's :class:`~services.throttle.RunBudget` (None: unlimited); replace it for each run.
    budget = None

    @abc.abstractmethod
    def whoami(self) -> RemoteMailbox:
        """Return the mailbox the credentials open (checks that they work)."""

    def find_folder(self, path: str) -> Optional[RemoteFolder]:
        """Return the mail folder at ``path`` ("Inbox/Transfer In", display names, case-insensitive) or None.

        A leading well-known folder ("Inbox", "Sent Items", ...) is found by
        its role, whatever the mailbox's language; the path starts below the
        mailbox root.
        """
        try:
            return self._walk(folder_path_names(path), create=False)
        except FolderNotFound:
            return None

    def ensure_folder(self, path: str) -> RemoteFolder:
        """Return the mail folder at ``path``, creating the missing path components."""
        return self._walk(folder_path_names(path), create=True)

    @abc.abstractmethod
    def _walk(self, names, create):
        """The folder at the path ``names``, None when missing and not ``create``."""

    @abc.abstractmethod
    def sync_messages(
        self, folder: RemoteFolder, state: Optional[str], recipients: bool = True
    ) -> Iterator[SyncPage]:
        """List the folder's messages incrementally; ``state`` None starts a full listing.

        ``recipients=False`` tells the backend that the messages' ``to``/``cc``/``bcc`` are not
        needed (they may then be left empty), when they would cost requests of their own.

        Yields :class:`SyncPage` of :class:`RemoteMessage`; the last page has
        ``done=True``.  Raises :class:`~services.errors.FolderNotFound` when
        the folder is gone.
        """

    @abc.abstractmethod
    def get_mime(self, message_id: str) -> bytes:
        """Return the message's RFC 5322 source."""

    def get_mime_file(self, message_id: str):
        """Return the message's RFC 5322 source as a binary file positioned at its start.

        For the big mails: a backend that can stream writes the source to the file as it arrives
        (beyond :data:`SPOOL_MEMORY_BYTES` the file is on disk), so the whole source is never held
        in memory at once. The caller closes the file. This default reads it with :meth:`get_mime`.
        """
        spool = new_spool()
        try:
            spool.write(self.get_mime(message_id))
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    def get_mimes(self, message_ids: List[str]) -> Dict[str, Union[bytes, ExchangeError]]:
        """Return ``{id: MIME source}`` for many messages, in as few requests as the protocol allows.

        A message that cannot be fetched (gone meanwhile, refused) maps to its
        :class:`~services.errors.ExchangeError` (``ItemNotFound`` when gone) instead of
        failing the others; errors that concern the whole mailbox are raised as usual.
        """
        result = {}
        for message_id in dict.fromkeys(message_ids):
            try:
                result[message_id] = self.get_mime(message_id)
            except ExchangeError as error:
                if isinstance(error, MAILBOX_WIDE_ERRORS):
                    raise
                result[message_id] = error
        return result

    @abc.abstractmethod
    def move_message(self, message_id: str, dest: RemoteFolder) -> str:
        """Move a message to ``dest`` and return its id there."""

    @abc.abstractmethod
    def delete_message(self, message_id: str, hard: bool = False) -> None:
        """Delete a message: to Deleted Items, or for good when ``hard``; a missing message is no error."""

    def delete_messages(
        self, message_ids: List[str], hard: bool = False
    ) -> Dict[str, Optional[ExchangeError]]:
        """Delete many messages in as few requests as the protocol allows: ``{id: None | error}``.

        A message already gone counts as deleted (None); errors that concern the whole mailbox
        are raised as usual.
        """
        result = {}
        for message_id in dict.fromkeys(message_ids):
            try:
                self.delete_message(message_id, hard=hard)
                result[message_id] = None
            except ExchangeError as error:
                if isinstance(error, MAILBOX_WIDE_ERRORS):
                    raise
                result[message_id] = error
        return result

    @abc.abstractmethod
    def sync_events(self, window_start, window_end, state: Optional[str]) -> Iterator[SyncPage]:
        """List the calendar entries in [window_start, window_end) incrementally.

        Occurrences and exceptions of recurring series are expanded; cancelled
        occurrences are reported as removed (or with ``is_cancelled``).  A
        state saved for another window is ignored (the listing starts over
        with ``reset=True``).
        """

    @abc.abstractmethod
    def ensure_contact_folder(self, name: str) -> RemoteFolder:
        """Return the contact folder ``name`` below the default Contacts folder, creating it if needed.

        An empty ``name`` returns the default Contacts folder itself (the one phones sync).
        """

    def list_marked_contacts(self, folder: RemoteFolder) -> List[MarkedContact]:
        """Every contact of ``folder`` that carries the ownership marker, whichever database set it.

        Contacts without the marker (the user's own) are left out. Reads only: the push compares
        it with its bindings to find contacts deleted in Outlook and creates whose answer was lost.
        """
        raise NotImplementedError

    def get_contact(self, contact_id: str) -> RemoteContact:
        """Read one contact back (every mapped field); raises :class:`~services.errors.ItemNotFound`."""
        raise NotImplementedError

    @abc.abstractmethod
    def push_contacts(self, folder: RemoteFolder, changes: List[ContactChange]) -> List[ContactResult]:
        """Apply creates/updates/deletes in bulk; one result per change, in the same order.

        Per-item failures come back as ``ok=False`` with Microsoft's code;
        deleting a contact that is already gone counts as success.
        """

    def _check_budget(self):
        """Raise TimeBudgetExceeded when the run's budget is spent (called between pages)."""
        if self.budget is not None:
            self.budget.check()

    @abc.abstractmethod
    def close(self):
        """Release HTTP connections; the backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
