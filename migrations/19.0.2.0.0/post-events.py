"""Event import arrives: every calendar starts over.

Earlier versions counted the calendar entries as skipped and saved the calendar state past them;
resumed from that state, a listing would report only later changes and the meetings already in
the calendars would never be imported. Forgetting the states makes the next sync list each user's
whole window again (Graph's delta, EWS's fingerprint).
"""


def migrate(cr, version):
    if not version:
        return
    cr.execute("""
        UPDATE exchange_mailbox
           SET events_state = NULL, events_window_start = NULL, events_window_end = NULL
         WHERE events_state IS NOT NULL OR events_window_start IS NOT NULL
    """)
