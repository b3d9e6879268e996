"""The partner → Outlook contact mapping, its marker and fingerprint (pure), and both backends' round trip."""

import pytest

from services.backend import ContactChange
from services.contact_mapping import (
    MARKER_CATEGORY,
    contact_fingerprint,
    contact_from_partner,
    parse_marker,
    partner_emails,
    partner_marker,
    split_person_name,
    split_street,
    street_lines,
)

DB = "5d9f6a2e-0b1c-4d3e-8f7a-112233445566"

PERSON = {
    "name": "Anna Maria Berger",
    "is_company": False,
    "function": "Head of Purchasing",
    "parent_name": "Berger & Söhne GmbH",
    "phone": "+49 (0)89 / 123 45-6",
    "mobile": "0171 2345678 ext. 9",
    "email": "anna@berger.example, Anna Private <anna.b@mail.example>; third@x.example fourth@x.example",
    "street": "Hauptstraße 1",
    "street2": "Hinterhaus, 3. OG",
    "zip": "80331",
    "city": "München",
    "state": "Bayern",
    "country": "Germany",
    "website": "https://berger.example",
    "tags": ["VIP", "Odoo", "vip", "Lieferant"],
    "url": "https://odoo.example/odoo/contacts/42",
    "marker": partner_marker(DB, 42),
}


def test_person_maps_every_field():
    contact = contact_from_partner(PERSON)
    assert (contact.given_name, contact.surname) == ("Anna Maria", "Berger")
    assert contact.display_name == "Anna Maria Berger"
    assert contact.company_name == "Berger & Söhne GmbH"
    assert contact.job_title == "Head of Purchasing"
    assert contact.emails == ["anna@berger.example", "anna.b@mail.example", "third@x.example"]
    assert contact.business_phone == "+49 (0)89 / 123 45-6"
    assert contact.mobile_phone == "0171 2345678 ext. 9"
    assert (contact.street, contact.street2, contact.zip, contact.city) == (
        "Hauptstraße 1", "Hinterhaus, 3. OG", "80331", "München")
    assert (contact.state, contact.country, contact.website) == ("Bayern", "Germany", "https://berger.example")
    assert contact.categories == [MARKER_CATEGORY, "VIP", "Lieferant"]
    assert contact.notes == "Odoo: https://odoo.example/odoo/contacts/42"
    assert parse_marker(contact.marker) == (DB, 42)


def test_company_has_company_name_only():
    contact = contact_from_partner({"name": "Contoso Ltd", "is_company": True, "function": "ignored"})
    assert (contact.given_name, contact.surname, contact.job_title) == ("", "", "")
    assert contact.company_name == contact.display_name == "Contoso Ltd"
    assert contact.emails == [] and contact.categories == [MARKER_CATEGORY]


def test_names_in_other_scripts_and_long_values():
    assert split_person_name("王小明") == ("王小明", "")
    assert split_person_name("Ὀδυσσεύς  Λαερτιάδης") == ("Ὀδυσσεύς", "Λαερτιάδης")
    assert split_person_name("") == ("", "")
    long_name = "Ä" * 300
    contact = contact_from_partner({"name": f"x {long_name}", "city": "line\nbreak"})
    assert len(contact.surname) == 253 and contact.city == "line break"


def test_emails_without_any_address():
    assert partner_emails(False) == []
    assert partner_emails("not an address") == []
    assert partner_emails("A@x.example; a@X.example") == ["A@x.example"]


def test_fingerprint_changes_with_mapped_values_only():
    contact = contact_from_partner(PERSON)
    same = contact_from_partner(dict(PERSON))
    same.id, same.change_key = "AAMk", "CQAA"
    assert contact_fingerprint(contact) == contact_fingerprint(same)
    for change in ({"zip": "80332"}, {"tags": []}):
        changed = contact_from_partner(dict(PERSON, **change))
        assert contact_fingerprint(contact) != contact_fingerprint(changed)


def test_markers_and_streets():
    assert parse_marker(partner_marker("abc:def", 7)) == ("abc:def", 7)
    assert parse_marker("foreign") is None and parse_marker("db:x") is None and parse_marker(None) is None
    contact = contact_from_partner(PERSON)
    assert split_street(street_lines(contact)) == (contact.street, contact.street2)
    assert split_street("one\r\ntwo\nthree") == ("one", "two three")


@pytest.mark.parametrize("folder_name", ["Odoo", ""])
def test_round_trip_through_the_tenant(make_backend, mailbox, kind, folder_name):
    """What the mapping gives is what Microsoft keeps: read back field by field, marker listed."""
    backend = make_backend(mailbox)
    folder = backend.ensure_contact_folder(folder_name)
    if not folder_name:
        assert mailbox.folder(folder.id if kind == "ews" else "contacts").display_name == "Contacts"
    mailbox.add_contact(mailbox.folder("contacts").id, given_name="Own", surname="Contact")
    # Long values, another script, odd phone formats: what Outlook keeps is what was mapped.
    mine = contact_from_partner(dict(PERSON, function="Ω" * 300))
    assert len(mine.job_title) == 255
    plain = contact_from_partner({"name": "山田 太郎", "marker": partner_marker(DB, 43)})
    results = backend.push_contacts(folder, [ContactChange("create", 42, contact=mine),
                                             ContactChange("create", 43, contact=plain)])
    assert all(result.ok for result in results), results
    listed = {m.marker: m.id for m in backend.list_marked_contacts(folder)}
    assert listed == {mine.marker: results[0].remote_id, plain.marker: results[1].remote_id}
    back = backend.get_contact(results[0].remote_id)
    for name in ("given_name", "surname", "display_name", "company_name", "job_title", "emails",
                 "business_phone", "mobile_phone", "street", "street2", "city", "zip", "state", "country",
                 "website", "notes", "categories", "marker"):
        assert getattr(back, name) == getattr(mine, name), name
    stored = mailbox.item(results[0].remote_id)
    assert [a for _n, a in stored.email_addresses] == mine.emails
    assert stored.business_address.street == "Hauptstraße 1\nHinterhaus, 3. OG"
    assert stored.business_home_page == "https://berger.example"
    assert stored.categories == mine.categories
    changed = contact_from_partner(dict(PERSON, function="Ω" * 300, city="Augsburg", tags=["Neu"]))
    update = backend.push_contacts(folder, [ContactChange("update", 42, remote_id=results[0].remote_id,
                                                          contact=changed)])
    assert update[0].ok, update
    stored = mailbox.item(results[0].remote_id)
    assert stored.business_address.city == "Augsburg" and stored.categories == ["Odoo", "Neu"]
    assert {m.marker for m in backend.list_marked_contacts(folder)} == {mine.marker, plain.marker}
