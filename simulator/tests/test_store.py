"""The mailbox store: ids, moves, change log, MIME parsing, recurrence expansion."""

from datetime import date, datetime, timedelta, timezone

import pytest

from simulator.store import Store

UTC = timezone.utc


@pytest.fixture
def mailbox():
    return Store().add_mailbox("anna@demo.example.com", "Anna Berger")


def _mime(subject="Hallo", message_id="<1@x.example>", body="Text"):
    return (
        f"From: Hans <hans@x.example>\r\nTo: anna@demo.example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0100\r\n\r\n{body}\r\n"
    ).encode()


def _starts(occurrences):
    return [o.start for o in occurrences]


def test_default_folders_and_paths(mailbox):
    inbox = mailbox.folder("inbox")
    assert mailbox.folder("Inbox") is inbox and mailbox.folder(inbox.id) is inbox
    assert inbox.parent_id == mailbox.folder("msgfolderroot").id
    assert mailbox.folder("root") is mailbox.folder("msgfolderroot")
    transfer = mailbox.ensure_folder_path("Inbox/Transfer In")
    assert mailbox.folder_by_path("inbox/transfer in") is transfer
    assert mailbox.folder_by_path("Inbox/Missing") is None
    assert [f.display_name for f in mailbox.child_folders(inbox.id)] == ["Transfer In"]
    with pytest.raises(ValueError):
        mailbox.create_folder(inbox.id, "transfer in")
    assert mailbox.folder("contacts").folder_class == "IPF.Contact"
    with pytest.raises(KeyError):
        mailbox.folder("nope")


def test_move_changes_id_but_not_immutable_id(mailbox):
    message = mailbox.add_message("inbox", _mime())
    old_id, immutable = message.id, message.immutable_id
    old_change_key = message.change_key
    moved = mailbox.move_item(old_id, "archive")
    assert moved.id != old_id and moved.immutable_id == immutable
    assert moved.change_key != old_change_key
    assert mailbox.item(immutable) is moved
    with pytest.raises(KeyError):
        mailbox.item(old_id)
    assert "=" not in moved.id and "/" not in moved.id and "+" not in moved.id


def test_changes_since_coalesces(mailbox):
    inbox = mailbox.folder("inbox").id
    kept = mailbox.add_message(inbox, _mime("kept"))
    seq = mailbox.current_seq
    created = mailbox.add_message(inbox, _mime("new"))
    mailbox.update_item(created.id, is_read=True)
    short_lived = mailbox.add_message(inbox, _mime("gone"))
    mailbox.delete_item(short_lived.id, soft=False)
    mailbox.update_item(kept.id, is_read=True)
    mailbox.update_item(kept.id, categories=["Odoo"])
    changes, high = mailbox.changes_since(inbox, seq)
    assert high == mailbox.current_seq
    assert {(c.kind, c.item_id) for c in changes} == {("created", created.id), ("updated", kept.id)}
    # A move out is a deletion in the source and a creation in the destination.
    seq, old_id = high, kept.id
    moved = mailbox.move_item(kept.id, "archive")
    changes, high = mailbox.changes_since(inbox, seq)
    assert [(c.kind, c.item_id) for c in changes] == [("deleted", old_id)]
    archive_changes, _ = mailbox.changes_since("archive", seq)
    assert [(c.kind, c.item_id, c.immutable_id) for c in archive_changes] == [
        ("created", moved.id, moved.immutable_id)
    ]
    assert mailbox.changes_since(inbox, high) == ([], high)


def test_read_flag_changes_and_windows(mailbox):
    inbox = mailbox.folder("inbox").id
    read, edited = mailbox.add_message(inbox, _mime("read")), mailbox.add_message(inbox, _mime("edited"))
    seq = mailbox.current_seq
    mailbox.update_item(read.id, is_read=True)
    mailbox.update_item(read.id, is_read=False)
    mailbox.update_item(edited.id, is_read=True)
    upper = mailbox.current_seq
    mailbox.update_item(edited.id, categories=["Odoo"])
    changes, _high = mailbox.changes_since(inbox, seq)
    assert {(c.kind, c.item_id) for c in changes} == {("read_flag", read.id), ("updated", edited.id)}
    # Up to a point: what came later is left for the next window.
    changes, _high = mailbox.changes_since(inbox, seq, upto=upper)
    assert {(c.kind, c.item_id) for c in changes} == {("read_flag", read.id), ("read_flag", edited.id)}
    assert all(c.seq <= upper for c in changes)


def test_soft_delete_moves_messages_to_deleted_items(mailbox):
    message = mailbox.add_message("inbox", _mime())
    deleted = mailbox.delete_item(message.id)
    assert deleted.folder_id == mailbox.folder("deleteditems").id
    mailbox.delete_item(deleted.id)
    with pytest.raises(KeyError):
        mailbox.item(message.immutable_id)


def test_mime_is_parsed(mailbox):
    from simulator.scenario import build_mime

    mime = build_mime(
        {
            "from": "Schulz Bau <info@schulz-bau.example>",
            "to": ["anna@demo.example.com"],
            "cc": "Marco <marco@demo.example.com>",
            "subject": "Angebot Nr. 4711 – Dachsanierung",
            "body_text": "Grüße",
            "body_html": '<p>Grüße <img src="cid:logo"></p>',
            "inline_images": [{"cid": "logo"}],
            "message_id": "<a@schulz-bau.example>",
            "attachments": [{"name": "Angebot.pdf", "content_type": "application/pdf", "text": "Angebot"}],
        }
    )
    message = mailbox.add_message("inbox", mime)
    assert message.subject == "Angebot Nr. 4711 – Dachsanierung"
    assert message.from_ == ("Schulz Bau", "info@schulz-bau.example")
    assert message.cc == [("Marco", "marco@demo.example.com")]
    assert message.internet_message_id == "<a@schulz-bau.example>"
    assert "Grüße" in message.body_text and "cid:logo" in message.body_html
    names = {(a.name, a.is_inline, a.content_type) for a in message.attachments}
    assert names == {("logo.png", True, "image/png"), ("Angebot.pdf", False, "application/pdf")}
    assert message.has_attachments
    pdf = [a for a in message.attachments if a.name == "Angebot.pdf"][0]
    assert pdf.content.startswith(b"%PDF") and pdf.size == len(pdf.content)
    assert message.mime == mime


def test_broken_mime_is_kept_and_never_crashes(mailbox):
    broken = (
        b"From: =?x-unknown?q?M=FCller?= <m@x.example>\r\nSubject: =?utf-8?b?!!!notbase64?=\r\n"
        b'To: <<<>>>, @@@\r\nDate: yesterday-ish\r\nContent-Type: multipart/mixed; boundary="nope"\r\n\r\n'
        b"--other\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\n\xff\xfe M\xfcller\r\n"
    )
    message = mailbox.add_message("inbox", broken)
    assert message.mime == broken
    assert isinstance(message.subject, str) and isinstance(message.body_text, str)
    assert message.sent is None
    latin = mailbox.add_message(
        "inbox",
        b"Subject: Gr\xfc\xdfe\r\nContent-Type: text/plain; charset=bogus\r\n\r\n"
        b"Gr\xfc\xdfe aus M\xfcnchen\r\n",
    )
    assert "nchen" in latin.body_text and latin.mime.endswith(b"M\xfcnchen\r\n")
    assert mailbox.add_message("inbox", b"").subject == ""


def _event(mailbox, start, recurrence, minutes=60, tz="UTC", **fields):
    return mailbox.add_event(
        subject="Series",
        start=start,
        end=start + timedelta(minutes=minutes),
        time_zone=tz,
        recurrence=recurrence,
        **fields,
    )


def test_daily_numbered(mailbox):
    start = datetime(2024, 3, 1, 9, tzinfo=UTC)
    _event(
        mailbox, start, {"type": "daily", "interval": 2, "range_type": "numbered", "number_of_occurrences": 4}
    )
    found = mailbox.expand_calendar(None, start - timedelta(days=1), start + timedelta(days=30))
    assert _starts(found) == [start + timedelta(days=2 * n) for n in range(4)]
    assert {o.type for o in found} == {"occurrence"} and len({o.id for o in found}) == 4


def test_weekly_with_days_and_end_date_keeps_local_time_across_dst(mailbox):
    # Mondays and Thursdays 09:00 Berlin; DST starts 31 March 2024.
    start = datetime(2024, 3, 25, 8, tzinfo=UTC)  # Monday 09:00 CET
    _event(
        mailbox,
        start,
        {
            "type": "weekly",
            "days_of_week": ["monday", "thursday"],
            "range_type": "endDate",
            "start_date": "2024-03-25",
            "end_date": "2024-04-04",
        },
        tz="Europe/Berlin",
    )
    found = mailbox.expand_calendar(None, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC))
    assert _starts(found) == [
        datetime(2024, 3, 25, 8, tzinfo=UTC),
        datetime(2024, 3, 28, 8, tzinfo=UTC),
        datetime(2024, 4, 1, 7, tzinfo=UTC),
        datetime(2024, 4, 4, 7, tzinfo=UTC),
    ]


def test_biweekly_counts_weeks_from_first_day_of_week(mailbox):
    start = datetime(2024, 1, 3, 10, tzinfo=UTC)  # Wednesday
    _event(
        mailbox,
        start,
        {
            "type": "weekly",
            "interval": 2,
            "days_of_week": ["monday", "wednesday"],
            "first_day_of_week": "monday",
            "range_type": "numbered",
            "number_of_occurrences": 4,
        },
    )
    found = mailbox.expand_calendar(None, start, start + timedelta(days=60))
    # Monday 1 Jan is before the series start: the first week only has Wednesday.
    assert [o.start.date() for o in found] == [
        date(2024, 1, 3),
        date(2024, 1, 15),
        date(2024, 1, 17),
        date(2024, 1, 29),
    ]


def test_absolute_monthly_clamps_to_month_end(mailbox):
    start = datetime(2024, 1, 31, 12, tzinfo=UTC)
    _event(
        mailbox,
        start,
        {"type": "absoluteMonthly", "day_of_month": 31, "range_type": "numbered", "number_of_occurrences": 4},
    )
    found = mailbox.expand_calendar(None, start, start + timedelta(days=200))
    assert [o.start.date() for o in found] == [
        date(2024, 1, 31),
        date(2024, 2, 29),
        date(2024, 3, 31),
        date(2024, 4, 30),
    ]


def test_relative_monthly_and_last_weekday(mailbox):
    start = datetime(2024, 1, 1, 15, tzinfo=UTC)
    _event(
        mailbox,
        start,
        {
            "type": "relativeMonthly",
            "days_of_week": ["friday"],
            "index": "last",
            "range_type": "numbered",
            "number_of_occurrences": 3,
        },
    )
    _event(
        mailbox,
        start,
        {
            "type": "relativeMonthly",
            "days_of_week": ["tuesday"],
            "index": "second",
            "interval": 2,
            "range_type": "numbered",
            "number_of_occurrences": 2,
        },
    )
    found = mailbox.expand_calendar(None, start, start + timedelta(days=200))
    assert [o.start.date() for o in found] == [
        date(2024, 1, 9),
        date(2024, 1, 26),
        date(2024, 2, 23),
        date(2024, 3, 12),
        date(2024, 3, 29),
    ]


def test_absolute_yearly_no_end(mailbox):
    start = datetime(2020, 2, 29, 0, tzinfo=UTC)
    mailbox.add_event(
        subject="Leap",
        start=start,
        end=start + timedelta(days=1),
        is_all_day=True,
        recurrence={"type": "absoluteYearly", "month": 2, "day_of_month": 29, "range_type": "noEnd"},
    )
    found = mailbox.expand_calendar(None, datetime(2023, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    assert [o.start.date() for o in found] == [date(2023, 2, 28), date(2024, 2, 29)]
    assert all(o.is_all_day for o in found)


def test_exceptions_and_cancelled_occurrences(mailbox):
    start = datetime(2024, 5, 6, 9, tzinfo=UTC)  # Monday
    series = _event(
        mailbox,
        start,
        {"type": "weekly", "days_of_week": ["monday"], "range_type": "numbered", "number_of_occurrences": 4},
        location="Room 1",
    )
    second, third = start + timedelta(weeks=1), start + timedelta(weeks=2)
    mailbox.update_item(
        series.id,
        exceptions={
            second: {
                "start": second + timedelta(days=1, hours=2),
                "end": second + timedelta(days=1, hours=3),
                "location": "Teams",
            }
        },
        cancelled_occurrences={third},
    )
    found = mailbox.expand_calendar(None, start, start + timedelta(days=60))
    assert [(o.type, o.start, o.location) for o in found] == [
        ("occurrence", start, "Room 1"),
        ("exception", second + timedelta(days=1, hours=2), "Teams"),
        ("occurrence", start + timedelta(weeks=3), "Room 1"),
    ]
    assert found[1].original_start == second and found[1].series_master_id == series.id
    assert found[1].subject == "Series"
    assert mailbox.occurrence(found[1].id).location == "Teams"
    # An exception moved out of its original window is still found where it went.
    moved_only = mailbox.expand_calendar(None, second + timedelta(days=1), second + timedelta(days=2))
    assert [o.type for o in moved_only] == ["exception"]


def test_single_events_cancelled_and_window(mailbox):
    start = datetime(2024, 6, 3, 9, tzinfo=UTC)
    single = mailbox.add_event(subject="One", start=start, end=start + timedelta(hours=1))
    cancelled = mailbox.add_event(
        subject="Off", start=start, end=start + timedelta(hours=1), is_cancelled=True
    )
    assert mailbox.expand_calendar(None, start + timedelta(hours=1), start + timedelta(hours=2)) == []
    found = mailbox.expand_calendar(None, start - timedelta(hours=1), start + timedelta(minutes=1))
    assert {o.id for o in found} == {single.id, cancelled.id}
    assert {o.type for o in found} == {"singleInstance"}


def test_copy_gives_new_immutable_id(mailbox):
    contact = mailbox.add_contact(
        given_name="Klaus", surname="Schulz", email_addresses=["k@schulz-bau.example"]
    )
    assert contact.display_name == "Klaus Schulz"
    copy = mailbox.copy_item(contact.id, "contacts")
    assert copy.immutable_id != contact.immutable_id and copy.email_addresses == contact.email_addresses
