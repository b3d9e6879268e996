"""EWS of the local tenant, driven by exchangelib over real HTTPS (Basic and NTLM).

Every request exchangelib sends and every response the simulator returns during these tests is validated
against Microsoft's EWS schema (messages.xsd / types.xsd) after each test.
"""

import base64
import itertools
import pathlib
from datetime import datetime, timedelta, timezone

import pytest
import requests
import requests.adapters
import requests_ntlm
from exchangelib import (
    BASIC,
    DELEGATE,
    NTLM,
    Account,
    CalendarItem,
    Configuration,
    Contact,
    Credentials,
    EWSDateTime,
    EWSTimeZone,
    FaultTolerance,
    Message,
    Q,
)
from exchangelib.errors import (
    ErrorInvalidSyncStateData,
    ErrorIrresolvableConflict,
    ErrorItemNotFound,
    ErrorServerBusy,
)
from exchangelib.folders import FolderQuerySet
from exchangelib.folders.collections import FolderCollection
from exchangelib.indexed_properties import EmailAddress
from exchangelib.protocol import BaseProtocol, close_connections
from lxml import etree

from simulator import Tenant

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "reference" / "ews"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PASSWORD = "Passw0rd!"
UTC = timezone.utc
_counter = itertools.count(1)


@pytest.fixture(scope="module")
def schema():
    path = SCHEMA_DIR / "messages.xsd"
    if not path.exists():
        # Microsoft's schema is the yardstick; without it these tests would prove nothing.
        pytest.fail(f"EWS schema not found at {path}: shared/ must sit beside the repository")
    return etree.XMLSchema(etree.parse(str(path)))


@pytest.fixture(scope="module")
def tenant():
    with Tenant() as running:
        previous_adapter = BaseProtocol.HTTP_ADAPTER_CLS
        BaseProtocol.HTTP_ADAPTER_CLS = _adapter_trusting(running.ca_path)
        try:
            yield running
        finally:
            BaseProtocol.HTTP_ADAPTER_CLS = previous_adapter
            close_connections()


def _adapter_trusting(ca_path):
    class TenantCAAdapter(requests.adapters.HTTPAdapter):
        """Verifies the tenant's self-signed chain (REQUESTS_CA_BUNDLE would override a session's verify)."""

        def cert_verify(self, conn, url, verify, cert):
            super().cert_verify(conn, url, ca_path, cert)

    return TenantCAAdapter


def ews_app(tenant):
    return tenant._protocol_app("ews", "EwsApp")


@pytest.fixture
def mailbox(tenant, schema):
    """A fresh mailbox per test; afterwards every EWS body of the test must validate against the schema."""
    app = ews_app(tenant)
    app.recorded.clear()
    tenant.knobs.reset()
    tenant.request_log.clear()
    number = next(_counter)
    box = tenant.store.add_mailbox(
        f"user{number}@contoso.com", f"User {number}", password=PASSWORD, username=f"user{number}"
    )
    yield box
    close_connections()
    tenant.knobs.reset()
    failures = [problem for record in list(app.recorded) for problem in _schema_problems(schema, record)]
    assert not failures, "\n".join(failures[:10])


# Requests the server refuses as invalid, as Exchange does: exchangelib's version probing sends
# RequestServerVersion values outside the 2016 schema (Exchange2015_SP1), and some tests send broken requests.
REFUSED_AS_INVALID = (b"ErrorInvalidServerVersion", b"ErrorSchemaValidation", b"ErrorInvalidRequest")


def _schema_problems(schema, record):
    operation, request_body, response_body, status = record
    problems = []
    for direction, body in (("request", request_body), ("response", response_body)):
        if not body:
            continue
        if (
            direction == "request"
            and status == 500
            and any(code in response_body for code in REFUSED_AS_INVALID)
        ):
            continue
        if direction == "request" and status == 401:
            continue  # not served; NTLM sends the same body again after the handshake
        envelope = etree.fromstring(body)
        for part in ("Header", "Body"):
            container = envelope.find(f"{{{SOAP_NS}}}{part}")
            for child in container if container is not None else []:
                if child.tag == f"{{{SOAP_NS}}}Fault":
                    problems.extend(_fault_problems(child, operation))
                    continue
                if not schema.validate(child):
                    problems.append(
                        f"{operation} {direction} {etree.QName(child).localname}: "
                        f"{schema.error_log.last_error}"
                    )
    return problems


def _fault_problems(fault, operation):
    # SOAP 1.1 faults are outside messages.xsd; check the shape Exchange uses and exchangelib parses.
    codes = fault.findall("detail/{http://schemas.microsoft.com/exchange/services/2006/errors}ResponseCode")
    if fault.findtext("faultcode") and fault.findtext("faultstring") and len(codes) == 1:
        return []
    return [f"{operation} fault is malformed: {etree.tostring(fault)[:200]!r}"]


def account_for(tenant, box, auth_type=BASIC, retry_policy=None, user_name=None):
    if user_name is None:
        user_name = box.email if auth_type == BASIC else f"CONTOSO\\{box.username}"
    config = Configuration(
        service_endpoint=tenant.ews_url,
        credentials=Credentials(user_name, PASSWORD),
        auth_type=auth_type,
        retry_policy=retry_policy,
    )
    return Account(box.email, config=config, access_type=DELEGATE, autodiscover=False)


def mime(number, subject=None, attachment=None):
    text = (
        f"From: Bob Sender <bob@example.com>\r\nTo: Receiver <receiver@contoso.com>\r\n"
        f"Subject: {subject or f'Message {number}'}\r\nMessage-ID: <m{number}@example.com>\r\n"
        f"Date: Mon, 01 Jan 2024 10:{number % 60:02d}:00 +0000\r\nMIME-Version: 1.0\r\n"
    )
    if attachment is None:
        return (
            text + f"Content-Type: text/plain; charset=utf-8\r\n\r\nBody of message {number}\r\n"
        ).encode()
    payload = base64.b64encode(attachment).decode()
    return (
        text + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
        "Content-Type: text/plain; charset=utf-8\r\n\r\nSee attachment\r\n--b1\r\n"
        'Content-Type: application/pdf; name="offer.pdf"\r\nContent-Disposition: attachment; '
        'filename="offer.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + payload + "\r\n--b1--\r\n"
    ).encode()


def seed_transfer_folder(box, count):
    folder = box.create_folder(box.folder("inbox").id, "Transfer In")
    base = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
    for number in range(count):
        box.add_message(folder.id, mime(number), received=base + timedelta(minutes=number))
    return folder


# --------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("auth_type", [BASIC, NTLM])
def test_transfer_folder_listing_pages_through_all_items(tenant, mailbox, auth_type):
    seed_transfer_folder(mailbox, 7)
    account = account_for(tenant, mailbox, auth_type)

    folder = account.inbox / "Transfer In"
    query = folder.all().only("subject", "datetime_received").order_by("datetime_received")
    query.page_size = 3
    subjects = [item.subject for item in query]

    assert folder.total_count == 7
    assert subjects == [f"Message {n}" for n in range(7)]
    assert account.version.build.major_version == 15
    # Three pages of at most 3 items: paging really happened through IndexedPagingOffset.
    assert (
        tenant.request_log.count(protocol="ews", endpoint="FindItem", mailbox=mailbox.email, status=200) == 3
    )


@pytest.mark.parametrize("auth_type", [BASIC, NTLM])
def test_sync_items_reports_creates_updates_and_deletes(tenant, mailbox, auth_type):
    folder = seed_transfer_folder(mailbox, 5)
    account = account_for(tenant, mailbox, auth_type)
    transfer = account.inbox / "Transfer In"

    first = list(transfer.sync_items(only_fields=["subject"], max_changes_returned=2))
    assert [kind for kind, _ in first] == ["create"] * 5
    assert sorted(item.subject for _, item in first) == [f"Message {n}" for n in range(5)]
    assert (
        tenant.request_log.count(
            protocol="ews", endpoint="SyncFolderItems", mailbox=mailbox.email, status=200
        )
        == 3
    )

    items = mailbox.items_in(folder.id)
    mailbox.update_item(items[0].id, is_read=True)
    mailbox.delete_item(items[1].id, soft=False)
    mailbox.update_item(items[2].id, is_read=True)
    mailbox.update_item(items[2].id, categories=["Odoo"])
    added = mailbox.add_message(folder.id, mime(99))
    second = list(transfer.sync_items(only_fields=["subject"]))

    kinds = {kind: item for kind, item in second}
    assert sorted(kinds) == ["create", "delete", "read_flag_change", "update"]
    assert kinds["create"].id == added.id
    assert kinds["delete"].id == items[1].id
    # Exchange reports a change of the read flag alone as ReadFlagChange (ItemId + IsRead).
    flag_id, is_read = kinds["read_flag_change"]
    assert (flag_id.id, flag_id.changekey, is_read) == (items[0].id, items[0].change_key, True)
    assert kinds["update"].id == items[2].id, "read and then changed otherwise: an Update"
    assert list(transfer.sync_items()) == []


def test_fresh_sync_paged_below_the_folder_size_reports_only_what_is_there(tenant, mailbox):
    folder = seed_transfer_folder(mailbox, 3)
    elsewhere = mailbox.create_folder(mailbox.folder("inbox").id, "Elsewhere")
    base = datetime(2024, 2, 1, tzinfo=UTC)
    for number in range(5):
        mailbox.add_message(folder.id, mime(10 + number), received=base + timedelta(minutes=number))
    for item in [i for i in mailbox.items_in(folder.id) if i.subject in {f"Message {n}" for n in range(3)}]:
        mailbox.move_item(item.id, elsewhere.id)
    account = account_for(tenant, mailbox)
    transfer = account.inbox / "Transfer In"

    changes = list(transfer.sync_items(only_fields=["subject"], max_changes_returned=2))
    assert [kind for kind, _ in changes] == ["create"] * 5
    assert sorted(item.subject for _, item in changes) == [f"Message {n}" for n in range(10, 15)]
    given = {item.id for _, item in changes}

    # Changes while paging through a later round: deletions only of ids the client was given.
    moved_id = mailbox.items_in(folder.id)[0].id
    mailbox.move_item(moved_id, elsewhere.id)
    fresh = mailbox.add_message(folder.id, mime(20))
    mailbox.delete_item(fresh.id, soft=False)
    later = list(transfer.sync_items(only_fields=["subject"], max_changes_returned=1))
    assert [(kind, item.id) for kind, item in later] == [("delete", moved_id)]
    assert moved_id in given


def test_mime_content_and_attachment_are_readable(tenant, mailbox):
    folder = mailbox.create_folder(mailbox.folder("inbox").id, "Transfer In")
    source = mime(1, subject="With attachment", attachment=b"%PDF-1.4 offer")
    mailbox.add_message(folder.id, source)
    account = account_for(tenant, mailbox)

    item = (account.inbox / "Transfer In").all().get(subject="With attachment")

    assert item.mime_content == source
    assert item.sender.email_address == "bob@example.com"
    assert [a.name for a in item.attachments] == ["offer.pdf"]
    assert item.attachments[0].content == b"%PDF-1.4 offer"


@pytest.mark.parametrize("auth_type", [BASIC, NTLM])
def test_calendar_view_expands_recurring_series(tenant, mailbox, auth_type):
    start = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)  # a Monday
    mailbox.add_event(
        subject="Weekly sync",
        start=start,
        end=start + timedelta(hours=1),
        time_zone="UTC",
        recurrence={
            "type": "weekly",
            "interval": 1,
            "days_of_week": ["monday"],
            "range_type": "numbered",
            "start_date": start.date(),
            "number_of_occurrences": 5,
        },
        exceptions={
            start + timedelta(weeks=1): {
                "subject": "Weekly sync (moved)",
                "start": start + timedelta(weeks=1, hours=2),
                "end": start + timedelta(weeks=1, hours=3),
            }
        },
        cancelled_occurrences=[start + timedelta(weeks=2)],
    )
    mailbox.add_event(
        subject="One-off", start=start + timedelta(days=1), end=start + timedelta(days=1, hours=1)
    )
    account = account_for(tenant, mailbox, auth_type)
    tz = EWSTimeZone("UTC")

    view = list(
        account.calendar.view(
            start=EWSDateTime(2024, 3, 1, tzinfo=tz), end=EWSDateTime(2024, 4, 1, tzinfo=tz)
        )
    )

    assert [(o.subject, o.type) for o in view] == [
        ("Weekly sync", "Occurrence"),
        ("One-off", "Single"),
        ("Weekly sync (moved)", "Exception"),
        ("Weekly sync", "Occurrence"),  # 18 March is cancelled, 1 April is outside the window
    ]
    assert view[2].start == EWSDateTime(2024, 3, 11, 11, 0, tzinfo=tz)
    masters = [i for i in account.calendar.all() if i.type == "RecurringMaster"]
    assert len(masters) == 1
    assert masters[0].recurrence.boundary.number == 5
    # The master names its exceptions (ModifiedOccurrences) and its cancelled dates (DeletedOccurrences).
    [modified] = masters[0].modified_occurrences
    assert (modified.id, modified.start, modified.end, modified.original_start) == (
        view[2].id,
        EWSDateTime(2024, 3, 11, 11, 0, tzinfo=tz),
        EWSDateTime(2024, 3, 11, 12, 0, tzinfo=tz),
        EWSDateTime(2024, 3, 11, 9, 0, tzinfo=tz),
    )
    assert [d.start for d in masters[0].deleted_occurrences] == [EWSDateTime(2024, 3, 18, 9, 0, tzinfo=tz)]


@pytest.mark.parametrize("auth_type", [BASIC, NTLM])
def test_contact_create_update_delete(tenant, mailbox, auth_type):
    account = account_for(tenant, mailbox, auth_type)
    contact = Contact(
        folder=account.contacts,
        given_name="Ada",
        surname="Lovelace",
        display_name="Ada Lovelace",
        company_name="Analytical",
        email_addresses=[_email("ada@example.com")],
    )
    contact.save()
    stored = mailbox.item(contact.id)
    assert (stored.given_name, stored.surname, stored.company_name) == ("Ada", "Lovelace", "Analytical")
    assert [address for _, address in stored.email_addresses] == ["ada@example.com"]

    contact.job_title = "Mathematician"
    contact.company_name = None
    contact.save(update_fields=["job_title", "company_name"])
    fetched = account.contacts.get(id=contact.id)
    assert fetched.job_title == "Mathematician"
    assert not fetched.company_name

    contact.delete()
    with pytest.raises(KeyError):
        mailbox.item(stored.immutable_id)


def _email(address):
    return EmailAddress(email=address, label="EmailAddress1")


def test_indexed_contact_fields_are_answered(tenant, mailbox):
    # exchangelib asks for email_addresses, phone_numbers and physical_addresses one entry at a time,
    # by IndexedFieldURI (contacts:EmailAddress FieldIndex="EmailAddress1", ...): Exchange answers them.
    stored = mailbox.add_contact(
        given_name="Ada",
        surname="Lovelace",
        email_addresses=[("Ada", "ada@example.com"), ("Ada home", "ada@home.example")],
        business_phones=["+32 2 000"],
        mobile_phone="+32 475 000",
        business_address={"street": "Rue 1", "city": "Brussels", "postal_code": "1000", "country": "Belgium"},
    )
    account = account_for(tenant, mailbox)
    wanted = ("email_addresses", "phone_numbers", "physical_addresses")
    found = list(account.contacts.all().only(*wanted))
    fetched = list(account.fetch([(stored.id, None)], only_fields=wanted))
    for contact in (found[0], fetched[0]):
        assert sorted((e.label, e.email) for e in contact.email_addresses) == [
            ("EmailAddress1", "ada@example.com"),
            ("EmailAddress2", "ada@home.example"),
        ]
        assert sorted((p.label, p.phone_number) for p in contact.phone_numbers) == [
            ("BusinessPhone", "+32 2 000"),
            ("MobilePhone", "+32 475 000"),
        ]
        [address] = contact.physical_addresses
        assert (address.label, address.street, address.city, address.zipcode, address.country) == (
            "Business", "Rue 1", "Brussels", "1000", "Belgium"
        )

    # One entry asked, one entry answered (and only the parts asked of an address).
    answer = soap(
        tenant,
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>"
        '<t:IndexedFieldURI FieldURI="contacts:EmailAddress" FieldIndex="EmailAddress2"/>'
        '<t:IndexedFieldURI FieldURI="contacts:PhysicalAddress:City" FieldIndex="Business"/>'
        "</t:AdditionalProperties></m:ItemShape>"
        f'<m:ItemIds><t:ItemId Id="{stored.id}"/></m:ItemIds></m:GetItem>',
        mailbox.email,
    )
    contact = etree.fromstring(answer.content).find(".//{*}Contact")
    entries = [(e.getparent().tag.split("}")[1], e.get("Key")) for e in contact.iter("{*}Entry")]
    assert entries == [("EmailAddresses", "EmailAddress2"), ("PhysicalAddresses", "Business")]
    assert [child.tag.split("}")[1] for child in contact.find(".//{*}PhysicalAddresses")[0]] == ["City"]
    assert contact.find(".//{*}PhoneNumbers") is None


def test_update_with_stale_change_key_is_a_conflict(tenant, mailbox):
    stored = mailbox.add_contact(given_name="Grace", surname="Hopper")
    account = account_for(tenant, mailbox)
    contact = account.contacts.get(id=stored.id)
    mailbox.update_item(stored.id, job_title="Rear Admiral")  # somebody else changed it meanwhile

    contact.job_title = "Programmer"
    with pytest.raises(ErrorIrresolvableConflict):
        contact.save(update_fields=["job_title"])
    assert mailbox.item(stored.id).job_title == "Rear Admiral"


@pytest.mark.parametrize("auth_type", [BASIC, NTLM])
def test_move_gives_new_id_and_delete_removes(tenant, mailbox, auth_type):
    folder = seed_transfer_folder(mailbox, 2)
    done = mailbox.create_folder(mailbox.folder("inbox").id, "Transferred")
    account = account_for(tenant, mailbox, auth_type)
    transfer = account.inbox / "Transfer In"
    first, second = transfer.all().order_by("subject")

    old_id = first.id
    first.move(account.inbox / "Transferred")
    transfer.refresh()

    assert first.id != old_id
    assert mailbox.item(first.id).folder_id == done.id
    assert transfer.total_count == 1
    assert isinstance(list(account.fetch(ids=[(old_id, None)]))[0], ErrorItemNotFound)

    second.delete()  # HardDelete
    assert mailbox.items_in(folder.id) == []
    deleted_items = mailbox.folder("deleteditems")
    assert mailbox.items_in(deleted_items.id) == []
    first.move_to_trash()
    assert [i.subject for i in mailbox.items_in(deleted_items.id)] == ["Message 0"]


def test_restrictions_and_message_flags(tenant, mailbox):
    seed_transfer_folder(mailbox, 6)
    mailbox.create_folder(mailbox.folder("inbox").id, "Transfer Out")
    account = account_for(tenant, mailbox)
    transfer = account.inbox / "Transfer In"
    utc = EWSTimeZone("UTC")

    assert [i.subject for i in transfer.filter(subject__contains="sage 3")] == ["Message 3"]
    assert transfer.filter(datetime_received__gt=EWSDateTime(2024, 1, 1, 9, 2, tzinfo=utc)).count() == 3
    assert sorted(i.subject for i in transfer.filter(Q(subject="Message 1") | Q(subject="message 2"))) == [
        "Message 1",
        "Message 2",
    ]
    folders = FolderQuerySet(FolderCollection(account=account, folders=[account.inbox])).filter(
        name="Transfer Out"
    )
    assert [f.name for f in folders] == ["Transfer Out"]

    first = transfer.all().order_by("subject")[0]
    first.is_read = True
    first.categories = ["Odoo"]
    first.save(update_fields=["is_read", "categories"])
    assert (mailbox.item(first.id).is_read, mailbox.item(first.id).categories) == (True, ["Odoo"])
    assert transfer.filter(is_read=False).count() == 5

    transfer_out = account.inbox / "Transfer Out"
    moved = account.bulk_move(ids=transfer.all().order_by("subject")[:2], to_folder=transfer_out)
    assert len(moved) == 2
    assert transfer_out.all().count() == 2


def test_calendar_item_create_update_delete(tenant, mailbox):
    account = account_for(tenant, mailbox)
    berlin = EWSTimeZone("Europe/Berlin")
    event = CalendarItem(
        account=account,
        folder=account.calendar,
        subject="Planning",
        location="Room 1",
        start=EWSDateTime(2024, 5, 1, 10, tzinfo=berlin),
        end=EWSDateTime(2024, 5, 1, 11, tzinfo=berlin),
    )
    event.save()
    stored = mailbox.item(event.id)
    assert (stored.subject, stored.location) == ("Planning", "Room 1")
    assert stored.start == datetime(2024, 5, 1, 8, tzinfo=UTC)

    event.subject = "Planning (moved)"
    event.save(update_fields=["subject"])
    fetched = account.calendar.get(id=event.id)
    assert fetched.subject == "Planning (moved)"
    assert fetched.end == EWSDateTime(2024, 5, 1, 11, tzinfo=berlin)

    event.delete()
    assert mailbox.items_in(mailbox.folder("calendar").id) == []


def test_saving_and_sending_messages(tenant, mailbox):
    other = tenant.store.add_mailbox(f"peer{next(_counter)}@contoso.com", "Peer", password=PASSWORD)
    account = account_for(tenant, mailbox)

    draft = Message(
        account=account, folder=account.drafts, subject="Draft", body="Not yet", to_recipients=[other.email]
    )
    draft.save()
    Message(account=account, subject="Hello peer", body="Hi", to_recipients=[other.email]).send_and_save()

    assert [i.subject for i in mailbox.items_in(mailbox.folder("drafts").id)] == ["Draft"]
    assert [i.subject for i in mailbox.items_in(mailbox.folder("sentitems").id)] == ["Hello peer"]
    assert [i.subject for i in other.items_in(other.folder("inbox").id)] == ["Hello peer"]


def test_server_busy_reaches_the_client_with_back_off(tenant, mailbox):
    account = account_for(tenant, mailbox)
    account.inbox.refresh()
    tenant.knobs.set(mailbox.email, throttle_rate=1.0, retry_after_seconds=7)

    with pytest.raises(ErrorServerBusy) as caught:
        account.inbox.refresh()

    assert caught.value.back_off == 7
    assert (
        tenant.request_log.count(protocol="ews", endpoint="GetFolder", mailbox=mailbox.email, status=500) >= 1
    )


def test_throttled_client_retries_and_succeeds(tenant, mailbox):
    seed_transfer_folder(mailbox, 3)
    account = account_for(tenant, mailbox, retry_policy=FaultTolerance(max_wait=30))
    transfer = account.inbox / "Transfer In"
    tenant.knobs.set(mailbox.email, throttle_rate=0.5, retry_after_seconds=0.01, seed=4)

    subjects = sorted(i.subject for i in transfer.all().only("subject"))

    assert subjects == ["Message 0", "Message 1", "Message 2"]
    assert tenant.request_log.count(protocol="ews", mailbox=mailbox.email, status=500) >= 1


def test_expired_sync_state_is_refused(tenant, mailbox):
    seed_transfer_folder(mailbox, 2)
    account = account_for(tenant, mailbox)
    transfer = account.inbox / "Transfer In"
    list(transfer.sync_items())
    tenant.knobs.set(mailbox.email, sync_state_ttl_seconds=0)

    with pytest.raises(ErrorInvalidSyncStateData):
        list(transfer.sync_items())

    transfer.item_sync_state = None  # a full resync still works
    assert len(list(transfer.sync_items())) == 2


def test_wrong_password_is_refused_for_basic_and_ntlm(tenant, mailbox):
    # Raw HTTP: werkzeug closes every connection, which exchangelib reports as ErrorServerBusy rather than
    # UnauthorizedError, so the 401 itself is checked here.
    for auth in (
        (mailbox.email, "wrong"),
        requests_ntlm.HttpNtlmAuth(f"CONTOSO\\{mailbox.username}", "wrong"),
        requests_ntlm.HttpNtlmAuth("CONTOSO\\nobody", PASSWORD),
    ):
        session = requests.Session()
        session.mount("https://", _adapter_trusting(tenant.ca_path)())
        response = session.post(tenant.ews_url, data=b"<x/>", auth=auth, headers={"Content-Type": "text/xml"})
        assert response.status_code == 401
    good = requests.Session()
    good.mount("https://", _adapter_trusting(tenant.ca_path)())
    ntlm_ok = good.post(
        tenant.ews_url,
        data=b"<x/>",
        auth=requests_ntlm.HttpNtlmAuth(f"CONTOSO\\{mailbox.username}", PASSWORD),
        headers={"Content-Type": "text/xml"},
    )
    assert ntlm_ok.status_code == 500  # authenticated, then refused as not SOAP
    assert _response_code(ntlm_ok) == "ErrorSchemaValidation"


def test_exchange_2010_sp2_profile_negotiates_the_older_schema(tenant, mailbox):
    seed_transfer_folder(mailbox, 1)
    tenant.ews_server_profile = "Exchange2010_SP2"
    try:
        account = account_for(tenant, mailbox, NTLM)
        subjects = [i.subject for i in (account.inbox / "Transfer In").all()]
    finally:
        tenant.ews_server_profile = None
    assert subjects == ["Message 0"]
    assert (account.version.api_version, account.version.build.major_version) == ("Exchange2010_SP2", 14)


# ------------------------------------------------------------------------------- raw SOAP (no exchangelib)
def soap(tenant, body, user, password=PASSWORD, version="Exchange2016"):
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        f'<s:Header><t:RequestServerVersion Version="{version}"/></s:Header>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    )
    session = requests.Session()
    session.mount("https://", _adapter_trusting(tenant.ca_path)())
    return session.post(
        tenant.ews_url,
        data=envelope.encode(),
        auth=(user, password),
        headers={"Content-Type": "text/xml; charset=utf-8"},
    )


def _response_code(response):
    root = etree.fromstring(response.content)
    return root.findtext(
        ".//{http://schemas.microsoft.com/exchange/services/2006/messages}ResponseCode"
    ) or root.findtext(".//{http://schemas.microsoft.com/exchange/services/2006/errors}ResponseCode")


def test_errors_are_answered_as_exchange_does(tenant, mailbox):
    get_item = (
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
        '<m:ItemIds><t:ItemId Id="{}"/></m:ItemIds></m:GetItem>'
    )
    unknown = soap(tenant, "<m:DoSomethingElse/>", mailbox.email)
    malformed_id = soap(tenant, get_item.format("%%%"), mailbox.email)
    missing = soap(
        tenant, get_item.format(base64.urlsafe_b64encode(b"M" + bytes(32)).decode()), mailbox.email
    )
    broken = requests.Session()
    broken.mount("https://", _adapter_trusting(tenant.ca_path)())
    not_xml = broken.post(tenant.ews_url, data=b"<s:Envelope", auth=(mailbox.email, PASSWORD))
    bad_password = soap(tenant, "<m:DoSomethingElse/>", mailbox.email, password="nope")

    assert (unknown.status_code, _response_code(unknown)) == (500, "ErrorInvalidRequest")
    assert (malformed_id.status_code, _response_code(malformed_id)) == (200, "ErrorInvalidIdMalformed")
    assert (missing.status_code, _response_code(missing)) == (200, "ErrorItemNotFound")
    assert (not_xml.status_code, _response_code(not_xml)) == (500, "ErrorSchemaValidation")
    assert bad_password.status_code == 401
    assert "NTLM" in bad_password.headers["WWW-Authenticate"]
    assert "Basic" in bad_password.headers["WWW-Authenticate"]
    header = etree.fromstring(malformed_id.content).find(f"{{{SOAP_NS}}}Header")
    info = header.find("{http://schemas.microsoft.com/exchange/services/2006/types}ServerVersionInfo")
    assert (info.get("MajorVersion"), info.get("MinorVersion")) == ("15", "1")


def test_find_item_answers_at_most_the_find_count_limit(tenant, mailbox):
    # Exchange's EWSFindCountLimit (1000 by default) caps one FindItem answer; the client pages on.
    folder = mailbox.create_folder(mailbox.folder("contacts").id, "Many")
    for number in range(1200):
        mailbox.add_contact(folder.id, given_name=f"Given{number}", surname="Many")
    find = (
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
        '<m:IndexedPageItemView BasePoint="Beginning" Offset="{}"{}/>'
        '<m:ParentFolderIds><t:FolderId Id="' + folder.id + '"/></m:ParentFolderIds></m:FindItem>'
    )
    types = "{http://schemas.microsoft.com/exchange/services/2006/types}"
    messages_ns = "http://schemas.microsoft.com/exchange/services/2006/messages"

    def page(offset, max_entries=""):
        answer = soap(tenant, find.format(offset, max_entries), mailbox.email)
        assert answer.status_code == 200 and _response_code(answer) == "NoError"
        root_folder = etree.fromstring(answer.content).find(f".//{{{messages_ns}}}RootFolder")
        return root_folder, len(root_folder.findall(f"{types}Items/{types}Contact"))

    first, count = page(0)
    assert count == 1000
    assert (first.get("IncludesLastItemInRange"), first.get("IndexedPagingOffset")) == ("false", "1000")
    assert first.get("TotalItemsInView") == "1200"
    rest, count = page(1000, ' MaxEntriesReturned="5000"')
    assert count == 200 and rest.get("IncludesLastItemInRange") == "true"
    tenant.knobs.set(mailbox.email, find_count_limit=None)
    assert page(0)[1] == 1200


def test_service_unavailable_knob_answers_http_503(tenant, mailbox):
    tenant.knobs.set(mailbox.email, error_rate_503=1.0)
    response = soap(
        tenant,
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>',
        mailbox.email,
    )
    assert response.status_code == 503


def test_request_log_names_operation_and_mailbox(tenant, mailbox):
    tenant.request_log.clear()
    account_for(tenant, mailbox).inbox.refresh()
    entries = [e for e in tenant.request_log.entries if e["protocol"] == "ews" and e["status"] == 200]
    assert {e["operation"] for e in entries} >= {"GetFolder"}
    assert {e["mailbox"] for e in entries if e["operation"] == "GetFolder"} == {mailbox.email}
