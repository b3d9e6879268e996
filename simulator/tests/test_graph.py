"""Graph v1.0 of the local tenant, over real HTTPS with msal-issued tokens.

Every JSON answer these tests provoke is checked against the v1.0 CSDL
(property names of the entity type, its base types and navigation
properties); the last test of the module fails if any answer did not match.
"""
import base64
import datetime
import pathlib
import threading

import msal
import pytest
import requests
from lxml import etree

from simulator import Tenant

UTC = datetime.timezone.utc
CSDL_PATH = pathlib.Path(__file__).resolve().parents[3] / "shared/reference/graph/v1.0-metadata.csdl.xml"
CLIENT_ID = "graph-tests-app"
CLIENT_SECRET = "graph-tests-secret"
REDIRECT_URI = "http://localhost:8069/callback"
ALICE = "alice@contoso.com"
BOB = "bob@contoso.com"

# ---------------------------------------------------------------- CSDL checker


def load_csdl(path=CSDL_PATH):
    """{type name: (base type name or None, {property: Edm type})} for entity and complex types."""
    types = {}
    schemas = etree.parse(str(path)).iter("{*}Schema")
    schema = next(s for s in schemas if s.get("Namespace") == "microsoft.graph")
    for element in schema.iter("{*}EntityType", "{*}ComplexType"):
        props = {p.get("Name"): p.get("Type") for p in element
                 if etree.QName(p).localname in ("Property", "NavigationProperty")}
        base = element.get("BaseType")
        types[element.get("Name")] = (base.rsplit(".", 1)[-1] if base else None, props)
    return types


def csdl_properties(types, type_name):
    """Properties of a type including those of its base types."""
    props = {}
    while type_name:
        base, own = types[type_name]
        props.update(own)
        type_name = base
    return props


def csdl_violations(types, value, type_name, where="$"):
    """Names in a Graph JSON object that its CSDL type does not declare (recursively)."""
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("@odata.type"), str):
        type_name = value["@odata.type"].lstrip("#").rsplit(".", 1)[-1]
    if type_name not in types:
        return [f"{where}: unknown type {type_name}"]
    props = csdl_properties(types, type_name)
    problems = []
    for key, item in value.items():
        if key.startswith("@"):  # @odata.* annotations, @removed
            continue
        if key not in props:
            problems.append(f"{where}.{key} is not a property of {type_name}")
            continue
        edm = props[key]
        inner = edm[len("Collection("):-1] if edm.startswith("Collection(") else edm
        if not inner.startswith("graph."):
            continue
        inner = inner[len("graph."):]
        if inner not in types:
            continue  # enumerations
        for index, element in enumerate(item if isinstance(item, list) else [item]):
            problems += csdl_violations(types, element, inner, f"{where}.{key}[{index}]")
    return problems


def error_shape_violations(body):
    """Microsoft's error envelope: error{code, message, innerError{request-id, date, client-request-id}}."""
    problems = []
    if set(body) != {"error"}:
        return [f"error body has keys {sorted(body)}"]
    error = body["error"]
    if not {"code", "message", "innerError"} <= set(error) or not set(error) <= {
            "code", "message", "innerError", "details"}:
        problems.append(f"error has keys {sorted(error)}")
    inner = error.get("innerError", {})
    if not {"request-id", "date", "client-request-id"} <= set(inner):
        problems.append(f"innerError has keys {sorted(inner)}")
    return problems


CHECKED = {"answers": 0, "problems": []}


@pytest.fixture(scope="module")
def csdl_types():
    if not CSDL_PATH.exists():
        pytest.fail(f"Graph CSDL not found at {CSDL_PATH}: shared/ must sit beside the repository")
    return load_csdl()


# ---------------------------------------------------------------- tenant and tokens


@pytest.fixture(scope="module")
def tenant():
    with Tenant.start() as running:
        running.store.add_mailbox(ALICE, "Alice Wong", password="Alice-Pa55")
        running.store.add_mailbox(BOB, "Bob Stone", password="Bob-Pa55")
        running.register_app(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
        yield running


@pytest.fixture(autouse=True)
def fresh_knobs(tenant):
    tenant.knobs.reset()
    yield
    tenant.knobs.reset()


def _http(tenant):
    session = requests.Session()
    session.trust_env = False
    session.verify = tenant.ca_path
    return session


def _msal_app(tenant):
    return msal.ConfidentialClientApplication(
        CLIENT_ID, client_credential=CLIENT_SECRET, authority=tenant.authority,
        instance_discovery=False, http_client=_http(tenant))


@pytest.fixture(scope="module")
def app_token(tenant):
    result = _msal_app(tenant).acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert "access_token" in result, result
    return result["access_token"]


@pytest.fixture(scope="module")
def alice_delegated_token(tenant):
    """Authorization-code flow, the sign-in form posted as a browser would."""
    app = _msal_app(tenant)
    flow = app.initiate_auth_code_flow(["Mail.ReadWrite", "Calendars.Read", "Contacts.ReadWrite"],
                                       redirect_uri=REDIRECT_URI)
    answer = tenant.browser_sign_in(flow["auth_uri"], ALICE, "Alice-Pa55")
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert "access_token" in result, result
    return result["access_token"]


class GraphClient:
    """requests against the tenant's Graph; checks every JSON answer against the CSDL."""

    def __init__(self, tenant, token, types, mailbox=ALICE):
        self.tenant = tenant
        self.types = types
        self.http = _http(tenant)
        self.http.headers["Authorization"] = "Bearer " + token
        self.base = f"{tenant.graph_url}/users/{mailbox}"

    def url(self, path):
        if path.startswith("https://"):
            return path
        if path.startswith("/"):
            return self.tenant.graph_url + path
        return f"{self.base}/{path}"

    def call(self, method, path, entity=None, **kwargs):
        answer = self.http.request(method, self.url(path), **kwargs)
        self.check(answer, entity)
        return answer

    def get(self, path, entity=None, **kwargs):
        return self.call("GET", path, entity, **kwargs)

    def post(self, path, entity=None, **kwargs):
        return self.call("POST", path, entity, **kwargs)

    def patch(self, path, entity=None, **kwargs):
        return self.call("PATCH", path, entity, **kwargs)

    def delete(self, path, **kwargs):
        return self.call("DELETE", path, None, **kwargs)

    def check(self, answer, entity):
        if not answer.headers.get("Content-Type", "").startswith("application/json"):
            return
        assert answer.headers.get("request-id"), "every Graph answer carries request-id"
        body = answer.json()
        CHECKED["answers"] += 1
        if answer.status_code >= 400:
            CHECKED["problems"] += error_shape_violations(body)
            return
        self.check_body(body, entity, answer.url)

    def check_body(self, body, entity, where):
        if entity is None:
            return
        values = body.get("value", [body])
        for value in values:
            problems = csdl_violations(self.types, value, entity, where)
            CHECKED["problems"] += problems

    def all_pages(self, path, entity, **kwargs):
        """Follow @odata.nextLink; returns (items, number of pages, last body)."""
        items, pages, url = [], 0, path
        while url:
            answer = self.get(url, entity, **kwargs)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert not ("@odata.nextLink" in body and "@odata.deltaLink" in body)
            items += body["value"]
            pages += 1
            url = body.get("@odata.nextLink")
        return items, pages, body


@pytest.fixture
def graph(tenant, app_token, csdl_types):
    return GraphClient(tenant, app_token, csdl_types)


def mime(subject, index=0, attachment=None):
    lines = [
        "From: Carol Client <carol@customer.example>",
        "To: Alice Wong <alice@contoso.com>",
        f"Subject: {subject}",
        "Message-ID: <{}-{}@customer.example>".format(subject.replace(" ", "-"), index),
        "Date: Mon, 01 Jan 2024 10:00:00 +0000",
        "MIME-Version: 1.0",
    ]
    if attachment is None:
        lines += ["Content-Type: text/plain; charset=utf-8", "", f"Body of {subject}", ""]
        return "\r\n".join(lines).encode()
    name, payload = attachment
    lines += ['Content-Type: multipart/mixed; boundary="b1"', "", "--b1",
              "Content-Type: text/html; charset=utf-8", "", f"<p>Body of {subject}</p>", "--b1",
              f'Content-Type: application/pdf; name="{name}"',
              f'Content-Disposition: attachment; filename="{name}"',
              "Content-Transfer-Encoding: base64", "", base64.b64encode(payload).decode(), "--b1--", ""]
    return "\r\n".join(lines).encode()


def make_folder(graph, name, parent="inbox"):
    answer = graph.post(f"mailFolders/{parent}/childFolders", "mailFolder", json={"displayName": name})
    assert answer.status_code == 201, answer.text
    return answer.json()


def seed_messages(tenant, folder_id, count, start=datetime.datetime(2024, 3, 1, tzinfo=UTC), subject="Mail"):
    mailbox = tenant.store.mailbox(ALICE)
    return [mailbox.add_message(folder_id, mime(f"{subject} {i:02d}", i),
                                received=start + datetime.timedelta(hours=i)) for i in range(count)]


# ---------------------------------------------------------------- mail folders


def test_mail_folders_create_filter_select(graph):
    created = make_folder(graph, "Transfer In")
    assert created["displayName"] == "Transfer In" and created["totalItemCount"] == 0

    duplicate = graph.post("mailFolders/inbox/childFolders", json={"displayName": "transfer in"})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "ErrorFolderExists"

    query = "$filter=displayName eq 'Transfer In'&$select=displayName"
    found = graph.get("mailFolders/inbox/childFolders?" + query, "mailFolder").json()
    assert [f["id"] for f in found["value"]] == [created["id"]]
    assert set(found["value"][0]) == {"id", "displayName"}
    assert found["@odata.context"].endswith("childFolders(displayName)")

    top = graph.get("mailFolders", "mailFolder").json()["value"]
    assert "Inbox" in {f["displayName"] for f in top}
    assert "Calendar" not in {f["displayName"] for f in top}, "only mail folders below the root"
    inbox = graph.get("mailFolders/Inbox", "mailFolder").json()
    assert inbox["childFolderCount"] >= 1
    assert graph.get("mailFolders/" + created["id"], "mailFolder").json()["parentFolderId"] == inbox["id"]

    unknown = graph.get("mailFolders/AAMkADAwATNiZmYAZC1hMjk0LTAwAi0wMAoALgAAAw")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "ErrorItemNotFound"
    malformed = graph.get("mailFolders/not*an*id")
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "ErrorInvalidIdMalformed"


# ---------------------------------------------------------------- messages


def test_messages_page_across_pages_with_next_link(tenant, graph):
    folder = make_folder(graph, "Paging")
    seed_messages(tenant, folder["id"], 25)
    path = "mailFolders/{}/messages?$select=subject,receivedDateTime".format(folder["id"])

    items, pages, _ = graph.all_pages(path, "message")
    assert pages == 3, "Microsoft's default page size is 10"
    assert len({m["id"] for m in items}) == 25
    received = [m["receivedDateTime"] for m in items]
    assert received == sorted(received, reverse=True)
    assert set(items[0]) == {"@odata.etag", "id", "subject", "receivedDateTime"}

    items, pages, _ = graph.all_pages(path, "message", headers={"Prefer": "odata.maxpagesize=7"})
    assert (len(items), pages) == (25, 4)

    items, pages, _ = graph.all_pages(path + "&$top=20", "message")
    assert (len(items), pages) == (25, 2)

    tenant.knobs.set(ALICE, page_size=4)
    items, pages, _ = graph.all_pages(path, "message")
    assert (len(items), pages) == (25, 7)

    too_many = graph.get(path + "&$top=1001")
    assert too_many.status_code == 400


def test_messages_filter_on_received_and_order(tenant, graph):
    folder = make_folder(graph, "Filtering")
    seed_messages(tenant, folder["id"], 10)  # 2024-03-01 00:00 .. 09:00
    base = "mailFolders/{}/messages".format(folder["id"])
    window = ("$filter=receivedDateTime ge 2024-03-01T03:00:00Z and receivedDateTime lt 2024-03-01T07:00:00Z"
              "&$orderby=receivedDateTime asc&$select=subject")
    answer = graph.get(base + "?" + window, "message").json()
    assert [m["subject"] for m in answer["value"]] == ["Mail 03", "Mail 04", "Mail 05", "Mail 06"]

    newest_first = graph.get(base + "?$filter=receivedDateTime gt 2024-03-01T07:00:00%2B00:00",
                             "message").json()
    assert [m["subject"] for m in newest_first["value"]] == ["Mail 09", "Mail 08"]

    inefficient = graph.get(base + "?$filter=receivedDateTime ge 2024-03-01T00:00:00Z&$orderby=subject")
    assert inefficient.status_code == 400
    assert inefficient.json()["error"]["code"] == "InefficientFilter"


def test_message_mime_attachments_patch_and_delete(tenant, graph):
    folder = make_folder(graph, "Content")
    payload = b"%PDF-1.4 not really a pdf"
    source = mime("With attachment", 1, attachment=("invoice.pdf", payload))
    message = tenant.store.mailbox(ALICE).add_message(folder["id"], source)

    shaped = graph.get("messages/" + message.id, "message").json()
    assert shaped["subject"] == "With attachment" and shaped["hasAttachments"] is True
    assert shaped["from"]["emailAddress"] == {"name": "Carol Client", "address": "carol@customer.example"}
    assert shaped["@odata.etag"] == 'W/"{}"'.format(shaped["changeKey"])
    assert shaped["body"]["contentType"] == "html"

    raw = graph.get(f"messages/{message.id}/$value")
    assert raw.status_code == 200 and raw.content == source

    attachments = graph.get(f"messages/{message.id}/attachments", "attachment").json()["value"]
    assert [a["name"] for a in attachments] == ["invoice.pdf"]
    assert attachments[0]["@odata.type"] == "#microsoft.graph.fileAttachment"
    assert base64.b64decode(attachments[0]["contentBytes"]) == payload
    one = graph.get(f"messages/{message.id}/attachments/{attachments[0]['id']}", "attachment").json()
    assert one["size"] == len(payload)

    patched = graph.patch("messages/" + message.id, "message", json={"isRead": True, "categories": ["Odoo"]})
    assert patched.status_code == 200
    assert patched.json()["isRead"] is True and patched.json()["categories"] == ["Odoo"]
    assert patched.json()["changeKey"] != shaped["changeKey"]

    old_id = message.id  # the store object follows the move; the id the client holds does not
    assert graph.delete("messages/" + old_id).status_code == 204
    deleted_items = graph.get("mailFolders/deleteditems/messages?$select=subject", "message").json()["value"]
    assert "With attachment" in [m["subject"] for m in deleted_items], "DELETE moves to Deleted Items"
    assert graph.get("messages/" + old_id).status_code == 404, "the move gave it a new id"


def test_immutable_id_survives_move(tenant, graph):
    source = make_folder(graph, "Move From")
    target = make_folder(graph, "Move To")
    first, second = seed_messages(tenant, source["id"], 2, subject="Movable")
    immutable = {"Prefer": 'IdType="ImmutableId"'}

    before = graph.get("messages/" + first.id, "message", headers=immutable)
    assert before.headers["Preference-Applied"] == 'IdType="ImmutableId"'
    stable_id = before.json()["id"]
    moved = graph.post(f"messages/{stable_id}/move", "message", headers=immutable,
                       json={"destinationId": target["id"]})
    assert moved.status_code == 201
    assert moved.json()["id"] == stable_id
    assert moved.json()["parentFolderId"] == target["id"]
    assert graph.get("messages/" + stable_id, "message", headers=immutable).status_code == 200

    old_id = second.id
    plain = graph.post(f"messages/{old_id}/move", "message", json={"destinationId": target["id"]})
    assert plain.status_code == 201
    assert plain.json()["id"] != old_id, "without ImmutableId a move changes the id, as Exchange"
    gone = graph.get("messages/" + old_id)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ErrorItemNotFound"


# ---------------------------------------------------------------- message delta


def _delta_round(graph, url, page_size):
    """All pages of one delta round: (entries, pages, deltaLink)."""
    entries, pages = [], 0
    while True:
        answer = graph.get(url, "message", headers={"Prefer": f"odata.maxpagesize={page_size}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        has_next, has_delta = "@odata.nextLink" in body, "@odata.deltaLink" in body
        assert has_next != has_delta, "a delta page has nextLink or deltaLink, never both"
        entries += body["value"]
        pages += 1
        if has_delta:
            return entries, pages, body["@odata.deltaLink"]
        url = body["@odata.nextLink"]


def test_message_delta_initial_then_incremental_with_removed(tenant, graph):
    folder = make_folder(graph, "Delta")
    other = make_folder(graph, "Delta Elsewhere")
    messages = seed_messages(tenant, folder["id"], 12, subject="Delta")
    start = "mailFolders/{}/messages/delta?$select=subject,isRead".format(folder["id"])

    entries, pages, delta_link = _delta_round(graph, start, 5)
    assert pages == 3
    assert sorted(e["subject"] for e in entries) == [f"Delta {i:02d}" for i in range(12)]
    assert set(entries[0]) <= {"@odata.type", "@odata.etag", "id", "subject", "isRead"}

    mailbox = tenant.store.mailbox(ALICE)
    new = mailbox.add_message(folder["id"], mime("Delta new", 99))
    read_id = messages[0].id
    assert graph.patch("messages/" + read_id, json={"isRead": True}).status_code == 200
    moved_id = messages[1].id
    assert graph.post(f"messages/{moved_id}/move", json={"destinationId": other["id"]}).status_code == 201
    deleted_id = messages[2].id
    assert graph.delete("messages/" + deleted_id).status_code == 204

    entries, pages, delta_link = _delta_round(graph, delta_link, 5)
    removed = {e["id"] for e in entries if "@removed" in e}
    changed = {e["id"]: e for e in entries if "@removed" not in e}
    assert removed == {moved_id, deleted_id}, "moved out counts as deleted"
    assert all(e["@removed"] == {"reason": "deleted"} for e in entries if "@removed" in e)
    assert set(changed) == {new.id, read_id}
    assert changed[read_id]["isRead"] is True
    assert set(changed[new.id]) <= {"@odata.type", "@odata.etag", "id", "subject", "isRead"}, \
        "the $select of the first call is kept in the tokens"

    entries, _, _ = _delta_round(graph, delta_link, 5)
    assert entries == []
    assert tenant.request_log.count(protocol="graph", endpoint="GET /mailFolders/{id}/messages/delta") >= 5


def test_message_delta_expands_the_message_size(tenant, graph):
    # Graph v1.0 has no size on a message: PidTagMessageSize comes as a tagged extended property,
    # named by Exchange in lower-case hex, its value a string; the tokens keep the $expand.
    folder = make_folder(graph, "Delta Size")
    messages = seed_messages(tenant, folder["id"], 3, subject="Sized")
    expand = "singleValueExtendedProperties($filter=id eq 'Integer 0x0E08')"
    start = "mailFolders/{}/messages/delta?$select=subject&$expand={}".format(folder["id"], expand)
    entries, _pages, delta_link = _delta_round(graph, start, 2)
    sizes = {e["subject"]: e["singleValueExtendedProperties"] for e in entries}
    assert sizes == {m.subject: [{"id": "Integer 0xe08", "value": str(len(m.mime))}] for m in messages}
    new = tenant.store.mailbox(ALICE).add_message(folder["id"], mime("Sized later", 7))
    entries, _pages, _link = _delta_round(graph, delta_link, 2)
    assert entries[0]["singleValueExtendedProperties"][0]["value"] == str(len(new.mime))
    plain, _pages, _link = _delta_round(graph, "mailFolders/{}/messages/delta".format(folder["id"]), 5)
    assert not any("singleValueExtendedProperties" in e for e in plain), "only when asked"


def test_delta_in_the_odata_function_form(tenant, graph, weekly_series):
    # The official SDKs call ".../messages/delta()"; Graph accepts it as ".../messages/delta".
    folder = make_folder(graph, "Delta Function")
    seed_messages(tenant, folder["id"], 3, subject="Function")
    start = "mailFolders/{}/messages/delta()".format(folder["id"])
    entries, _pages, delta_link = _delta_round(graph, start, 10)
    assert sorted(e["subject"] for e in entries) == ["Function 00", "Function 01", "Function 02"]
    assert _delta_round(graph, delta_link, 10)[0] == []
    window = "startDateTime=2024-04-01T00:00:00Z&endDateTime=2024-04-08T00:00:00Z"
    for path in ("calendarView/delta()", "calendar/calendarView/delta()"):
        entries, _pages, _link = _delta_round(graph, f"{path}?{window}", 10)
        assert [e["subject"] for e in entries] == ["Stand-up", "Stand-up"], path
    assert tenant.request_log.count(protocol="graph", endpoint="GET /mailFolders/{id}/messages/delta") >= 2
    # Only functions take parentheses.
    assert graph.get("mailFolders()").status_code == 400


def test_malformed_ids_are_400_and_missing_ids_404(graph):
    for path in ("messages/does-not-exist", "events/does-not-exist", "contacts/not%20an%20id",
                 "mailFolders/short", "messages/AAMk"):
        malformed = graph.get(path)
        assert malformed.status_code == 400, path
        assert malformed.json()["error"]["code"] == "ErrorInvalidIdMalformed", path
    missing = base64.urlsafe_b64encode(b"M" + bytes(32)).decode()
    for path in ("messages/", "events/", "contacts/", "mailFolders/"):
        answer = graph.get(path + missing)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "ErrorItemNotFound", path


def test_message_delta_expired_or_garbage_token_is_410(tenant, graph):
    folder = make_folder(graph, "Delta Expiry")
    seed_messages(tenant, folder["id"], 3)
    _, _, delta_link = _delta_round(graph, "mailFolders/{}/messages/delta".format(folder["id"]), 10)

    assert graph.get(delta_link, "message").status_code == 200, "fresh tokens are honoured"
    tenant.knobs.set(ALICE, sync_state_ttl_seconds=0)
    expired = graph.get(delta_link)
    assert expired.status_code == 410
    assert expired.json()["error"]["code"] == "syncStateNotFound"

    tenant.knobs.reset()
    garbage = graph.get("mailFolders/{}/messages/delta?$deltatoken=bm90LWEtdG9rZW4".format(folder["id"]))
    assert garbage.status_code == 410 and garbage.json()["error"]["code"] == "syncStateNotFound"
    other_folder = graph.get(delta_link.replace(folder["id"], "inbox"))
    assert other_folder.status_code == 410


# ---------------------------------------------------------------- calendar


@pytest.fixture(scope="module")
def weekly_series(tenant):
    """Mondays and Wednesdays 09:00 Brussels time from 2024-04-01, with one moved and one cancelled date."""
    mailbox = tenant.store.mailbox(ALICE)
    brussels = datetime.timezone(datetime.timedelta(hours=2))  # CEST in April
    start = datetime.datetime(2024, 4, 1, 9, 0, tzinfo=brussels)
    moved_original = datetime.datetime(2024, 4, 10, 7, 0, tzinfo=UTC)
    return mailbox.add_event(
        subject="Stand-up", body_html="<p>Daily</p>", start=start, end=start + datetime.timedelta(minutes=30),
        time_zone="Romance Standard Time", location="Room 1", organizer=("Alice Wong", ALICE),
        attendees=[{"name": "Bob Stone", "address": BOB, "type": "required", "response": "accepted"}],
        recurrence={"type": "weekly", "interval": 1, "days_of_week": ["monday", "wednesday"],
                    "first_day_of_week": "monday", "range_type": "endDate", "start_date": "2024-04-01",
                    "end_date": "2024-06-30"},
        exceptions={moved_original: {"start": moved_original + datetime.timedelta(hours=5),
                                     "end": moved_original + datetime.timedelta(hours=5, minutes=30),
                                     "subject": "Stand-up (afternoon)"}},
        cancelled_occurrences=[datetime.datetime(2024, 4, 15, 7, 0, tzinfo=UTC)])


def test_calendar_view_expands_recurring_series(graph, weekly_series):
    window = "startDateTime=2024-04-01T00:00:00Z&endDateTime=2024-04-21T00:00:00Z"
    items, _, _ = graph.all_pages("calendarView?" + window, "event")
    series = [e for e in items if e.get("seriesMasterId") == weekly_series.id]
    # Mondays/Wednesdays between 1 and 20 April: 6 dates, 15 April cancelled.
    assert len(series) == 5
    assert {e["type"] for e in series} == {"occurrence", "exception"}
    exception = next(e for e in series if e["type"] == "exception")
    assert exception["subject"] == "Stand-up (afternoon)"
    assert exception["start"] == {"dateTime": "2024-04-10T12:00:00.0000000", "timeZone": "UTC"}
    assert exception["originalStart"] == "2024-04-10T07:00:00Z"
    assert all(e["recurrence"] is None for e in series)
    assert series[0]["attendees"][0]["status"]["response"] == "accepted"
    assert series[0]["originalStartTimeZone"] == "Romance Standard Time"

    pacific = graph.get("calendar/calendarView?" + window, "event",
                        headers={"Prefer": 'outlook.timezone="Pacific Standard Time"'})
    assert pacific.headers["Preference-Applied"] == 'outlook.timezone="Pacific Standard Time"'
    first = pacific.json()["value"][0]
    assert first["start"] == {"dateTime": "2024-04-01T00:00:00.0000000", "timeZone": "Pacific Standard Time"}

    master = graph.get("events/" + weekly_series.id, "event").json()
    assert master["type"] == "seriesMaster"
    assert master["recurrence"]["pattern"]["daysOfWeek"] == ["monday", "wednesday"]
    assert master["recurrence"]["range"]["endDate"] == "2024-06-30"
    instances = graph.get(f"events/{weekly_series.id}/instances?{window}", "event").json()["value"]
    assert [i["id"] for i in instances] == [e["id"] for e in series]
    one = graph.get("events/" + instances[0]["id"], "event").json()
    assert one["type"] == "occurrence" and one["seriesMasterId"] == weekly_series.id


def test_occurrence_ical_uid_per_occurrence_or_shared(tenant, graph, weekly_series):
    # Graph v1.0, event resource: iCalUId is "different for each occurrence in a recurring series";
    # some mailboxes answer the series' one: the knob occurrence_ical_uid picks.
    window = "startDateTime=2024-04-01T00:00:00Z&endDateTime=2024-04-21T00:00:00Z"
    master = graph.get("events/" + weekly_series.id, "event").json()

    def series_uids():
        items, _, _ = graph.all_pages("calendarView?" + window, "event")
        return [e["iCalUId"] for e in items if e.get("seriesMasterId") == weekly_series.id]

    documented = series_uids()
    assert len(documented) == 5 and len(set(documented)) == 5
    assert master["iCalUId"] not in documented
    series_uid = master["iCalUId"]
    assert all(uid[:32] == series_uid[:32] and uid[40:] == series_uid[40:] for uid in documented)
    assert documented[0][32:40] == "07E80401", "the instance date (2024-04-01) in bytes 16-19"
    first = graph.get(f"events/{weekly_series.id}/instances?{window}").json()["value"][0]
    assert graph.get("events/" + first["id"]).json()["iCalUId"] == documented[0]

    tenant.knobs.set(ALICE, occurrence_ical_uid="shared")
    assert series_uids() == [master["iCalUId"]] * 5
    assert graph.get("events/" + weekly_series.id).json()["iCalUId"] == master["iCalUId"]
    with pytest.raises(ValueError):
        tenant.knobs.set(ALICE, occurrence_ical_uid="sometimes")


def test_events_list_masters_and_all_day_events(tenant, graph, weekly_series):
    mailbox = tenant.store.mailbox(ALICE)
    holiday = mailbox.add_event(subject="Holiday", is_all_day=True, time_zone="Romance Standard Time",
                                start=datetime.datetime(2024, 4, 22, tzinfo=UTC),
                                end=datetime.datetime(2024, 4, 23, tzinfo=UTC))
    events, _, _ = graph.all_pages("events?$select=subject,type,isAllDay,start,end", "event")
    by_id = {e["id"]: e for e in events}
    assert by_id[weekly_series.id]["type"] == "seriesMaster"
    assert by_id[holiday.id]["type"] == "singleInstance" and by_id[holiday.id]["isAllDay"] is True
    # All-day events are dates: midnight, in whatever zone the client asked for.
    tokyo = graph.get("events/" + holiday.id, "event",
                      headers={"Prefer": 'outlook.timezone="Tokyo Standard Time"'})
    assert tokyo.json()["start"] == {"dateTime": "2024-04-22T00:00:00.0000000",
                                     "timeZone": "Tokyo Standard Time"}
    text = graph.get("events/" + weekly_series.id, "event",
                     headers={"Prefer": 'outlook.body-content-type="text"'})
    assert text.json()["body"] == {"contentType": "text", "content": "Daily"}
    assert 'outlook.body-content-type="text"' in text.headers["Preference-Applied"]


def test_all_day_events_keep_their_dates_west_of_utc(tenant, graph):
    mailbox = tenant.store.mailbox(ALICE)
    holiday = mailbox.add_event(subject="Holiday", is_all_day=True, time_zone="Pacific Standard Time",
                                start=datetime.datetime(2024, 4, 22, tzinfo=UTC),
                                end=datetime.datetime(2024, 4, 23, tzinfo=UTC))
    answer = graph.get("events/" + holiday.id, "event", headers={"Prefer": 'outlook.timezone="UTC"'}).json()
    assert (answer["start"]["dateTime"], answer["end"]["dateTime"]) == (
        "2024-04-22T00:00:00.0000000", "2024-04-23T00:00:00.0000000")


def test_calendar_view_requires_a_window(graph):
    for path in ("calendarView", "calendar/calendarView?startDateTime=2024-04-01T00:00:00Z",
                 "calendarView/delta"):
        answer = graph.get(path)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "ErrorInvalidParameter"
        assert answer.json()["error"]["message"] == (
            "This request requires a time window specified by the query string parameters "
            "StartDateTime and EndDateTime.")


def test_calendar_view_delta_reports_removed_events(tenant, graph, weekly_series):
    mailbox = tenant.store.mailbox(ALICE)
    def at(day, hour):
        return datetime.datetime(2024, 5, day, hour, tzinfo=UTC)
    organizer = ("Alice Wong", ALICE)
    lunch = mailbox.add_event(subject="Lunch", start=at(6, 11), end=at(6, 12), organizer=organizer)
    review = mailbox.add_event(subject="Review", start=at(7, 14), end=at(7, 15), organizer=organizer)
    window = "calendarView/delta?startDateTime=2024-05-06T00:00:00Z&endDateTime=2024-05-11T00:00:00Z"

    refused = graph.get(window + "&$select=subject")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "ErrorInvalidUrlQuery"

    entries, pages, delta_link = _delta_round(graph, window, 2)
    assert pages == 2  # Stand-up 6 and 8 May, Lunch, Review
    assert sorted(e["subject"] for e in entries) == ["Lunch", "Review", "Stand-up", "Stand-up"]
    wednesday = next(e for e in entries if e["subject"] == "Stand-up" and e["start"]["dateTime"].startswith(
        "2024-05-08"))

    mailbox.delete_item(lunch.id)
    mailbox.update_item(review.id, subject="Review (moved room)")
    cancelled = set(weekly_series.cancelled_occurrences) | {datetime.datetime(2024, 5, 8, 7, 0, tzinfo=UTC)}
    mailbox.update_item(weekly_series.id, cancelled_occurrences=cancelled)

    entries, _, delta_link = _delta_round(graph, delta_link, 10)
    removed = {e["id"] for e in entries if "@removed" in e}
    changed = [e for e in entries if "@removed" not in e]
    assert removed == {lunch.id, wednesday["id"]}
    # The series master changed, so its remaining occurrence in the window is reported again.
    assert sorted(e["subject"] for e in changed) == ["Review (moved room)", "Stand-up"]

    entries, _, _ = _delta_round(graph, delta_link, 10)
    assert entries == []


# ---------------------------------------------------------------- contacts


def test_contacts_crud_with_etags(graph):
    created = graph.post("contacts", "contact", json={
        "givenName": "Dana", "surname": "Swope", "emailAddresses": [{"address": "dana@customer.example",
                                                                     "name": "Dana Swope"}],
        "businessPhones": ["+1 555 0100"], "companyName": "Customer Inc",
        "businessAddress": {"street": "1 Main St", "city": "Springfield", "countryOrRegion": "US"}})
    assert created.status_code == 201, created.text
    contact = created.json()
    assert contact["displayName"] == "Dana Swope"
    assert contact["businessAddress"]["city"] == "Springfield"
    assert contact["@odata.etag"] == 'W/"{}"'.format(contact["changeKey"])

    stale = contact["@odata.etag"]
    updated = graph.patch("contacts/" + contact["id"], "contact", json={"jobTitle": "Buyer"},
                          headers={"If-Match": stale})
    assert updated.status_code == 200 and updated.json()["jobTitle"] == "Buyer"
    conflict = graph.patch("contacts/" + contact["id"], json={"jobTitle": "CEO"}, headers={"If-Match": stale})
    assert conflict.status_code == 412
    assert conflict.json()["error"]["code"] == "ErrorIrresolvableConflict"
    assert graph.delete("contacts/" + contact["id"], headers={"If-Match": stale}).status_code == 412
    fresh = graph.get("contacts/" + contact["id"], "contact").json()["@odata.etag"]
    assert graph.delete("contacts/" + contact["id"], headers={"If-Match": fresh}).status_code == 204
    assert graph.get("contacts/" + contact["id"]).status_code == 404


def test_contact_folders(graph):
    folder = graph.post("contactFolders", "contactFolder", json={"displayName": "Customers"})
    assert folder.status_code == 201
    folder_id = folder.json()["id"]
    child = graph.post(f"contactFolders/{folder_id}/childFolders", "contactFolder",
                       json={"displayName": "Key accounts"})
    assert child.status_code == 201
    listed = graph.get("contactFolders", "contactFolder").json()["value"]
    assert "Customers" in [f["displayName"] for f in listed]
    children = graph.get(f"contactFolders/{folder_id}/childFolders", "contactFolder").json()["value"]
    assert [c["displayName"] for c in children] == ["Key accounts"]
    added = graph.post(f"contactFolders/{folder_id}/contacts", "contact",
                       json={"givenName": "Erin", "surname": "Lee"})
    assert added.status_code == 201 and added.json()["parentFolderId"] == folder_id
    listed = graph.get(f"contactFolders/{folder_id}/contacts", "contact").json()["value"]
    names = [c["displayName"] for c in listed]
    assert names == ["Erin Lee"]


# ---------------------------------------------------------------- $batch


def _batch(graph, requests_):
    answer = graph.post("/$batch", json={"requests": requests_})
    if answer.status_code == 200:
        for item in answer.json()["responses"]:
            body = item.get("body")
            if isinstance(body, dict) and item["status"] >= 400:
                CHECKED["problems"] += error_shape_violations(body)
    return answer


def test_batch_depends_on_failed_dependency_and_out_of_order(graph):
    answer = _batch(graph, [
        {"id": "1", "method": "POST", "url": f"/users/{ALICE}/contacts",
         "headers": {"Content-Type": "application/json"}, "body": {"givenName": "Batch"}},
        {"id": "2", "method": "GET", "url": f"users/{ALICE}/mailFolders/inbox", "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": f"/users/{ALICE}/messages/AAMkAGNvbXBsZXRlbHlCb2d1cw",
         "dependsOn": ["2"]},
        {"id": "4", "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox", "dependsOn": ["3"]},
    ])
    assert answer.status_code == 200
    by_id = {r["id"]: r for r in answer.json()["responses"]}
    assert by_id["1"]["status"] == 201 and by_id["1"]["body"]["givenName"] == "Batch"
    assert by_id["2"]["status"] == 200 and by_id["2"]["body"]["displayName"] == "Inbox"
    assert by_id["3"]["status"] == 404
    assert by_id["4"]["status"] == 424
    graph.check_body(by_id["1"]["body"], "contact", "$batch")

    twenty = [{"id": str(i), "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox?$select=displayName"}
              for i in range(20)]
    answer = _batch(graph, twenty)
    ids = [r["id"] for r in answer.json()["responses"]]
    assert sorted(ids, key=int) == [str(i) for i in range(20)]
    assert ids != [str(i) for i in range(20)], "answers come out of order"

    too_many = _batch(graph, twenty + [{"id": "20", "method": "GET", "url": "/me"}])
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "BadRequest"


def test_batch_write_without_content_type_or_body_refuses_the_whole_batch(tenant, graph):
    # "Write request id : N does not contain Content-Type header or body." (Graph answers 400 for
    # the batch, and runs none of its requests).
    folder = tenant.store.mailbox(ALICE).folder("contacts")
    before = len(tenant.store.mailbox(ALICE).items_in(folder.id))
    for write in ({"id": "2", "method": "POST", "url": "/me/contacts", "body": {"givenName": "No type"}},
                  {"id": "2", "method": "PATCH", "url": "/me/contacts/AAMkAGNvbXBsZXRlbHlCb2d1cw",
                   "headers": {"Content-Type": "application/json"}}):
        answer = _batch(graph, [
            {"id": "1", "method": "POST", "url": f"/users/{ALICE}/contacts",
             "headers": {"content-type": "application/json"}, "body": {"givenName": "Typed"}},
            dict(write, url=f"/users/{ALICE}" + write["url"][len("/me"):]),
        ])
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == "BadRequest"
        assert error["message"] == "Write request id : 2 does not contain Content-Type header or body."
    assert len(tenant.store.mailbox(ALICE).items_in(folder.id)) == before, "no request of it ran"
    # Reads and DELETE need neither.
    gone = f"/users/{ALICE}/contacts/AAMkAGNvbXBsZXRlbHlCb2d1cw"
    answer = _batch(graph, [{"id": "1", "method": "DELETE", "url": gone},
                            {"id": "2", "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox"}])
    assert answer.status_code == 200


def test_batch_is_fully_sequential_or_fully_parallel(tenant, graph):
    # Graph's known issues (JSON batching): mixing dependsOn chains with independent requests is refused.
    inbox = f"/users/{ALICE}/mailFolders/inbox"
    mixed = _batch(graph, [
        {"id": "1", "method": "GET", "url": inbox},
        {"id": "2", "method": "GET", "url": inbox, "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": inbox},
    ])
    assert mixed.status_code == 400
    assert mixed.json()["error"]["code"] == "BadRequest"
    assert mixed.json()["error"]["message"] == "Batch should be either fully sequential or fully parallel"
    # Fully sequential (all but the first depend on another) runs one request at a time.
    tenant.knobs.set(ALICE, latency_ms=50)
    chain = _batch(graph, [{"id": "1", "method": "GET", "url": inbox}] + [
        {"id": str(i), "method": "GET", "url": inbox, "dependsOn": ["1"]} for i in range(2, 7)])
    assert chain.status_code == 200
    assert [r["status"] for r in chain.json()["responses"]] == [200] * 6
    assert tenant.knobs.peak_concurrency(None, ALICE) == 1


def test_batch_items_are_throttled_one_by_one(tenant, graph):
    tenant.knobs.set(ALICE, throttle_rate=1.0, retry_after_seconds=7)
    answer = _batch(graph, [{"id": str(i), "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox"}
                            for i in range(3)])
    assert answer.status_code == 200, "the batch itself is accepted"
    for item in answer.json()["responses"]:
        assert item["status"] == 429
        assert item["headers"]["Retry-After"] == "7"

    tenant.knobs.set(ALICE, throttle_rate=0.0, latency_ms=300)
    answer = _batch(graph, [{"id": str(i), "method": "GET", "url": f"/users/{ALICE}/mailFolders/inbox"}
                            for i in range(8)])
    statuses = sorted(r["status"] for r in answer.json()["responses"])
    # Items run in parallel, as in Exchange Online: past 4 at once the mailbox refuses.
    assert statuses.count(200) >= 4 and 429 in statuses
    throttled = next(r for r in answer.json()["responses"] if r["status"] == 429)
    assert "MailboxConcurrency" in throttled["body"]["error"]["message"]


# ---------------------------------------------------------------- throttling, errors, auth


def test_throttle_knob_answers_429_with_retry_after(tenant, graph):
    tenant.knobs.set(ALICE, throttle_rate=1.0, retry_after_seconds=3)
    answer = graph.get("mailFolders/inbox")
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "3"
    assert answer.json()["error"]["code"] in ("TooManyRequests", "ApplicationThrottled")
    assert answer.json()["error"]["innerError"]["request-id"] == answer.headers["request-id"]


def test_mailbox_concurrency_over_four_is_refused(tenant, graph, app_token):
    tenant.knobs.set(ALICE, latency_ms=1000)
    barrier = threading.Barrier(10)
    results = []

    def one_request():
        client = GraphClient(tenant, app_token, graph.types)
        barrier.wait()
        results.append(client.get("mailFolders/inbox"))

    threads = [threading.Thread(target=one_request) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(ok) + len(refused) == 10
    assert 1 <= len(ok) <= 4 and refused
    assert refused[0].json()["error"]["code"] == "ApplicationThrottled"
    assert refused[0].json()["error"]["message"] == "Application is over its MailboxConcurrency limit."
    assert refused[0].headers["Retry-After"]
    assert tenant.knobs.peak_concurrency(CLIENT_ID, ALICE) <= 4


def test_service_unavailable_knob(tenant, graph):
    tenant.knobs.set(ALICE, error_rate_503=1.0)
    answer = graph.get("mailFolders/inbox")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "ServiceUnavailable"


def test_bad_tokens_are_401(tenant, graph):
    session = _http(tenant)
    missing = session.get(graph.url("mailFolders"))
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "InvalidAuthenticationToken"
    garbage = session.get(graph.url("mailFolders"), headers={"Authorization": "Bearer eyJ.garbage.x"})
    assert garbage.status_code == 401
    assert garbage.json()["error"]["code"] == "InvalidAuthenticationToken"
    CHECKED["problems"] += error_shape_violations(garbage.json())


def test_delegated_token_reaches_only_its_own_mailbox(tenant, alice_delegated_token, csdl_types, app_token):
    alice = GraphClient(tenant, alice_delegated_token, csdl_types, mailbox=ALICE)
    me = alice.get("/me?$select=mail,userPrincipalName,displayName", "user").json()
    assert me["mail"] == ALICE and me["displayName"] == "Alice Wong"
    assert alice.get("/me/mailFolders/inbox", "mailFolder").status_code == 200
    assert alice.get("mailFolders/inbox", "mailFolder").status_code == 200
    other = GraphClient(tenant, alice_delegated_token, csdl_types, mailbox=BOB).get("mailFolders/inbox")
    assert other.status_code == 403 and other.json()["error"]["code"] == "ErrorAccessDenied"

    app_only_me = GraphClient(tenant, app_token, csdl_types).get("/me/mailFolders")
    assert app_only_me.status_code == 400
    unknown_user = GraphClient(tenant, app_token, csdl_types, mailbox="nobody@contoso.com").get("mailFolders")
    assert unknown_user.status_code == 404


# ---------------------------------------------------------------- every answer, against the CSDL


def test_every_answer_matches_the_csdl(csdl_types):
    """Runs last in this module: walks what every test above received."""
    assert CHECKED["answers"] >= 40, "the tests above should have provoked many answers"
    assert CHECKED["problems"] == []


def test_csdl_checker_catches_unknown_properties(csdl_types):
    good = {"id": "x", "subject": "s", "from": {"emailAddress": {"name": "n", "address": "a"}},
            "@odata.etag": 'W/"x"'}
    assert csdl_violations(csdl_types, good, "message") == []
    bad = {"id": "x", "subjekt": "s", "from": {"emailAddress": {"name": "n", "mail": "a"}}}
    assert len(csdl_violations(csdl_types, bad, "message")) == 2
