from datetime import date, datetime, timedelta, timezone

from services.backend import RemoteEvent
from services.event_mapping import (
    attendee_state,
    event_match_key,
    event_times,
    is_private,
    series_uid,
    show_as,
)

UTC = timezone.utc
CLEAN = "040000008200E00074C5B7101A82E008" + "00000000" + "A1B2C3D4E5F60718" + "0" * 16 + "10000000ABCDEF"


def occurrence_uid(day):
    """The iCalUId Graph gives an occurrence: the series id with the occurrence's date written in."""
    stamp = f"{day.year:04X}{day.month:02X}{day.day:02X}"
    return CLEAN[:32] + stamp + CLEAN[40:]


def test_series_uid_clears_the_instance_date_of_outlook_ids_only():
    assert series_uid(occurrence_uid(date(2024, 6, 10))) == CLEAN
    assert series_uid(CLEAN) == CLEAN
    assert series_uid("event-123@google.com") == "event-123@google.com"
    original = datetime(2024, 6, 10, 9, tzinfo=UTC)
    assert series_uid("event-123@google.com07E8060A", original) == "event-123@google.com"
    assert series_uid("event-123@google.com07E8060A", original + timedelta(days=1)).endswith("0A")
    assert series_uid(None) is None


def test_match_key_is_the_same_whether_a_mailbox_shares_the_uid_across_the_series_or_not():
    original = datetime(2024, 6, 10, 9, tzinfo=UTC)
    shared = RemoteEvent(id="a", ical_uid=CLEAN, type="occurrence", original_start=original)
    per_occurrence = RemoteEvent(
        id="b",
        ical_uid=occurrence_uid(original.date()),
        type="exception",
        original_start=original,
        start=original + timedelta(days=1),
    )
    assert event_match_key(shared) == event_match_key(per_occurrence)
    next_week = RemoteEvent(
        id="c", ical_uid=CLEAN, type="occurrence", original_start=original + timedelta(days=7)
    )
    assert event_match_key(next_week) != event_match_key(shared)
    assert event_match_key(RemoteEvent(id="d", ical_uid=CLEAN)) == CLEAN
    assert event_match_key(RemoteEvent(id="e")) is None


def test_timed_event_times_are_naive_utc():
    event = RemoteEvent(
        id="a",
        start=datetime(2024, 3, 31, 9, tzinfo=timezone(timedelta(hours=2))),
        end=datetime(2024, 3, 31, 10, 30, tzinfo=timezone(timedelta(hours=2))),
    )
    assert event_times(event) == {
        "allday": False,
        "start": datetime(2024, 3, 31, 7),
        "stop": datetime(2024, 3, 31, 8, 30),
    }


def test_all_day_dates_survive_edges_seen_from_any_zone():
    for offset in (-10, -5, 0, 1, 2, 9, 11):
        zone = timezone(timedelta(hours=offset))
        event = RemoteEvent(
            id="a",
            is_all_day=True,
            start=datetime(2024, 6, 3, tzinfo=zone),
            end=datetime(2024, 6, 5, tzinfo=zone),
        )
        times = event_times(event)
        assert times["allday"]
        assert (times["start"].date(), times["stop"].date()) == (date(2024, 6, 3), date(2024, 6, 4)), offset


def test_answers_free_busy_and_privacy():
    assert attendee_state("organizer") == "accepted"
    assert attendee_state("tentative") == "tentative"
    assert attendee_state("none") == attendee_state("weird") == "needsAction"
    assert show_as(RemoteEvent(id="a", show_as="free")) == "free"
    assert show_as(RemoteEvent(id="a", show_as="workingElsewhere")) == "busy"
    assert is_private(RemoteEvent(id="a", sensitivity="private"))
    assert not is_private(RemoteEvent(id="a", sensitivity="personal"))
