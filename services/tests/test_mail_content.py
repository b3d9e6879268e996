"""Pure helpers of mail import: thread references, content keys, removal of remote content."""

from services.mail_content import (
    CONTENT_KEY_DOMAIN,
    clean_message_id,
    content_key,
    strip_remote_content,
    thread_references,
)


def test_thread_references_closest_first_without_duplicates():
    refs = thread_references("<c@x>", "<a@x> <b@x>\r\n <c@x>")
    assert refs == ["<c@x>", "<b@x>", "<a@x>"]
    assert thread_references(None, None) == []
    assert thread_references("garbage", "no ids here") == []


def test_clean_message_id():
    assert clean_message_id("  <abc@host>  ") == "<abc@host>"
    assert clean_message_id("<abc@host> (comment)") == "<abc@host>"
    assert clean_message_id("not an id") is None
    assert clean_message_id("") is None


def test_content_key_is_stable_and_discriminating():
    one = content_key("a@x", "2026-11-02 10:00:00", "Hi", "<p>body</p>")
    assert one == content_key("a@x", "2026-11-02 10:00:00", "Hi", "<p>body</p>")
    assert one.endswith(f"@{CONTENT_KEY_DOMAIN}>")
    assert one != content_key("a@x", "2026-11-02 10:00:00", "Hi", "<p>other</p>")
    assert one != content_key("b@x", "2026-11-02 10:00:00", "Hi", "<p>body</p>")


def test_strip_remote_content_keeps_inline_images_and_text():
    html = (
        '<p>Hello <img src="https://t.example/p.gif?u=1" width="1"> world'
        '<img src="cid:logo@x"><img src="data:image/png;base64,AAAA"></p>'
        '<div style="background: url(https://t.example/bg.png)">x</div>'
        '<table background="http://t.example/t.png"><tr><td>cell</td></tr></table>'
    )
    cleaned, removed = strip_remote_content(html)
    assert removed == 3
    assert "t.example" not in cleaned
    assert "cid:logo@x" in cleaned and "data:image/png" in cleaned
    assert "Hello" in cleaned and "world" in cleaned and "cell" in cleaned


def test_strip_remote_content_leaves_clean_html_alone():
    html = "<p>Nothing remote <a href='https://example.com'>link</a></p>"
    assert strip_remote_content(html) == (html, 0)
    assert strip_remote_content("") == ("", 0)


def test_repair_charsets_reads_unknown_ones_as_utf8_or_windows_1252():
    import email
    import email.policy

    from services.mail_content import repair_charsets

    def part(charset, payload):
        source = f"Content-Type: text/plain; charset={charset}\r\n\r\n".encode() + payload
        return email.message_from_bytes(source, policy=email.policy.SMTP)

    utf8 = part("x-klingon", "Grüße".encode())
    latin = part("x-klingon", "Grüße".encode("latin-1"))
    known = part("iso-8859-1", "Grüße".encode("latin-1"))
    assert [repair_charsets(m) for m in (utf8, latin, known)] == [1, 1, 0]
    assert utf8.get_content().strip() == "Grüße"
    assert latin.get_content().strip() == "Grüße"
    assert known.get_content_charset() == "iso-8859-1"
