"""Address normalization: the one form mails, events and partners are compared in."""

import pytest

from services.addresses import address_variants, normalize_address, parse_address_header, readable_addresses
from services.backend import RemoteAddress


@pytest.mark.parametrize("value, expected", [
    ("NaMe@DoMaIn.CoM", "name@domain.com"),
    ("Anna Müller <Anna.Mueller@Example.COM>", "anna.mueller@example.com"),
    ('"Doe, John" <john@x.org>', "john@x.org"),
    ("  <john@x.org> ", "john@x.org"),
    ("info@xn--mller-kva.de", "info@müller.de"),
    ("info@MÜLLER.de", "info@müller.de"),
    # SMTP-UTF8 local parts are case-sensitive: kept as they are, like Odoo does.
    ("Jörg@example.com", "Jörg@example.com"),
])
def test_normalize_address(value, expected):
    assert normalize_address(value) == expected


@pytest.mark.parametrize("value", [
    None, "", "   ", "not an address", "a@b@c", "a@", "@b.com", "a@x.com, b@y.com", "a\x00@x.com",
    "a@x.com\r\nBcc: evil@x.com", 42,
])
def test_normalize_address_refuses(value):
    assert normalize_address(value) is None


def test_address_variants_cover_unicode_and_idna():
    assert address_variants("info@müller.de") == {"info@müller.de", "info@xn--mller-kva.de"}
    assert address_variants("a@x.com") == {"a@x.com"}
    assert address_variants(None) == set()


def test_parse_address_header_several_encoded_groups_duplicates():
    header = (
        "=?utf-8?q?M=C3=BCller=2C_Anna?= <ANNA@example.com>, bob@Example.com,"
        " team: carl@x.org, anna@example.com;, broken, <>"
    )
    assert parse_address_header(header) == [
        RemoteAddress("anna@example.com", "Müller, Anna"),
        RemoteAddress("bob@example.com", ""),
        RemoteAddress("carl@x.org", ""),
    ]


def test_parse_address_header_odd_input():
    assert parse_address_header(None) == []
    assert parse_address_header(b"Jos\xc3\xa9 <jose@x.es>") == [RemoteAddress("jose@x.es", "José")]
    # An unknown charset in an encoded word keeps the address and a readable name.
    assert parse_address_header("=?x-unknown?q?Caf=E9?= <cafe@x.fr>")[0].address == "cafe@x.fr"
    # 5,000 recipients stay 5,000 distinct addresses, in order.
    many = ", ".join(f"user{n}@bulk.example" for n in range(5000))
    parsed = parse_address_header(many)
    assert len(parsed) == 5000 and parsed[-1].address == "user4999@bulk.example"


@pytest.mark.parametrize(("header", "shown"), [
    ('"Anna Berger" <Anna@Demo.example>,"Marco Rossi" <marco@demo.example>',
     "Anna Berger <anna@demo.example>, Marco Rossi <marco@demo.example>"),
    ("=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <j@m.example>, plain@x.example",
     "Jürgen Müller <j@m.example>, plain@x.example"),
    ("undisclosed-recipients:;", "undisclosed-recipients:;"),
    ("", ""),
    (None, ""),
])
def test_readable_addresses(header, shown):
    assert readable_addresses(header) == shown
