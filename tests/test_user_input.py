import http.server
import inspect
import os
import threading
import time

from odoo.exceptions import ValidationError
from odoo.tests import TransactionCase, new_test_user, tagged
from odoo.tools import mute_logger

from odoo.addons.base.models.ir_autovacuum import is_autovacuum

from .common import ExchangeTenantMixin

EWS_PATH = "/EWS/Exchange.asmx"


class _AnswerHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests += 1
        self.send_response(self.server.status)
        for name, value in self.server.answer_headers + [("Content-Length", "0")]:
            self.send_header(name, value)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass


class AnsweringServer(http.server.ThreadingHTTPServer):
    """A plain HTTP server on the loopback that answers every request with one status and headers."""

    daemon_threads = True

    def __init__(self, status, headers=()):
        self.status, self.answer_headers, self.requests = status, list(headers), 0
        super().__init__(("127.0.0.1", 0), _AnswerHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def ews_url(self):
        return f"http://127.0.0.1:{self.server_port}{EWS_PATH}"

    def stop(self):
        self.shutdown()
        self.server_close()


@tagged("post_install", "-at_install")
class TestUserInput(ExchangeTenantMixin, TransactionCase):
    """What a careless user or an attacker may type in their mailbox settings."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.user, cls.remote = cls.ews_user(cls.env, "ines")
        cls.me = cls.user.with_user(cls.user)

    def setUp(self):
        super().setUp()
        self.tenant.request_log.clear()

    def assertRefused(self, values, message):
        with self.assertRaisesRegex(ValidationError, message):
            self.me.write(values)

    def test_allow_list_compares_the_host_the_request_reaches(self):
        self.env["ir.config_parameter"].sudo().set_param(
            "exchange_connector.ews_allowed_hosts", "mail.example.com")
        local = f"127.0.0.1:{self.tenant.port}"
        for url in (
            f"http://{local}\\@mail.example.com{EWS_PATH}",  # urlsplit: mail.example.com; urllib3: 127.0.0.1
            f"http://{local}\\\\@mail.example.com{EWS_PATH}",
            f"http://mail.example.com@{local}{EWS_PATH}",
            f"http://{local}#@mail.example.com{EWS_PATH}",
            f"http://{local}?@mail.example.com{EWS_PATH}",
            f"http://{local}%2F@mail.example.com{EWS_PATH}",
            f"http://mail.example.com.{local}{EWS_PATH}",
        ):
            with self.subTest(url=url), self.assertRaises(ValidationError):
                self.me.write({"exchange_ews_url": url})
        self.assertEqual(self.tenant.request_log.count(), 0)
        # The refusal names no server: the allow-list is the administrator's.
        with self.assertRaises(ValidationError) as refused:
            self.me.write({"exchange_ews_url": f"https://evil.example.org{EWS_PATH}"})
        self.assertNotIn("mail.example.com", str(refused.exception))
        self.assertNotIn("evil.example.org", str(refused.exception))
        self.me.write({"exchange_ews_url": f"https://MAIL.example.com{EWS_PATH}"})

    def test_wildcard_allows_the_domains_hosts_only(self):
        self.env["ir.config_parameter"].sudo().set_param(
            "exchange_connector.ews_allowed_hosts", "*.corp.example")
        self.me.write({"exchange_ews_url": f"https://ex01.corp.example{EWS_PATH}"})
        for host in ("corp.example", "evilcorp.example", "ex01.corp.example.evil.org"):
            with self.subTest(host=host), self.assertRaises(ValidationError):
                self.me.write({"exchange_ews_url": f"https://{host}{EWS_PATH}"})

    def test_credentials_inside_the_url_are_refused(self):
        for url in (f"https://anna:Secret1@mail.example.com{EWS_PATH}", f"https://anna@mail.example.com{EWS_PATH}",
                    f"https://:Secret1@mail.example.com{EWS_PATH}"):
            with self.subTest(url=url):
                self.assertRefused({"exchange_ews_url": url}, "must not contain a user name or password")
        self.assertNotIn("Secret1", self.user.sudo().exchange_ews_url)

    def test_urls_that_are_not_web_addresses_get_a_sentence(self):
        self.assertRefused({"exchange_ews_url": "https://[::1"}, "is not a web address")
        self.assertRefused({"exchange_ews_url": "https://mail.example.com:99999/EWS"}, "is not a web address")
        self.assertRefused({"exchange_ews_url": "ftp://mail.example.com/EWS"}, "is not a web address")
        self.assertRefused({"exchange_ews_url": f"https://mail.ex ample.com{EWS_PATH}"}, "spaces, line")
        self.assertRefused({"exchange_ews_url": f"https://mail.example.com\r\n{EWS_PATH}"}, "a line break")
        self.assertRefused({"exchange_ews_url": f"https://mail_x.example.com{EWS_PATH}"}, "not a host name")
        self.assertRefused({"exchange_ews_url": "https://mail.example.com/" + "E" * 3000}, "too long")

    def test_pasted_spaces_and_line_breaks_around_a_value_are_trimmed(self):
        self.me.write({
            "exchange_ews_url": f" {self.tenant.ews_url}\r\n", "exchange_email": f" {self.remote.email} ",
            "exchange_transfer_folder_in": "Odoo In\n",
        })
        self.assertEqual(self.user.sudo().exchange_ews_url, self.tenant.ews_url)
        self.assertEqual(self.user.sudo().exchange_email, self.remote.email)
        self.assertEqual(self.user.exchange_transfer_folder_in, "Odoo In")
        check = self.user._exchange_check_connection()
        self.assertEqual(check["mailbox"], self.remote.email, check["message"])

    def test_mailbox_address_is_checked(self):
        for address in ("anna", "anna@", "Anna <anna@example.com>", "anna@example.com, bob@example.com"):
            with self.subTest(address=address):
                self.assertRefused({"exchange_email": address}, "is not a mailbox address")

    def test_control_characters_are_refused(self):
        self.assertRefused({"exchange_ews_username": "EXAMPLE\\in\x00es"}, "control character")
        self.assertRefused({"exchange_ews_password": "pass\x00word"}, "control character")
        self.assertRefused({"exchange_transfer_folder_out": "Sent\tto Odoo"}, "control character")

    def test_numbers_out_of_range_get_a_sentence(self):
        self.assertRefused({"exchange_sync_interval": 2 ** 31}, "at most 10080 minutes")
        self.assertRefused({"exchange_sync_interval": -2 ** 31 - 1}, "at least 5 minutes")
        self.assertRefused({"exchange_event_days_back": 2 ** 31}, "use 0 to 3650")
        self.assertRefused({"exchange_event_days_ahead": -1}, "use 0 to 3650")

    def test_every_typed_text_is_bounded(self):
        started = time.monotonic()
        self.assertRefused({"exchange_ews_password": "p" * 10 * 1024 * 1024}, "at most 256 characters")
        self.assertRefused({"exchange_ews_username": "u" * 257}, "at most 256 characters")
        self.assertRefused({"exchange_transfer_folder_in": "f" * 10 * 1024 * 1024}, "at most 255 characters")
        self.assertRefused({"exchange_email": "a" * 250 + "@example.com"}, "at most 254 characters")
        self.assertRefused({"exchange_ca_bundle": self.tenant_ca_pem() * 300}, "at most 262144 characters")
        # Refused before any expensive work: far below what one NTLM hash of 10 MB took (152 s).
        self.assertLess(time.monotonic() - started, 30)
        self.assertEqual(self.user.sudo().exchange_ews_password, "Passw0rd!")

    def test_ca_bundle_must_be_pem_certificates(self):
        self.assertRefused({"exchange_ca_bundle": "not a certificate"}, "certificates in PEM form")
        broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        self.assertRefused({"exchange_ca_bundle": broken}, "certificates in PEM form")
        self.me.write({"exchange_ca_bundle": "Our CA:\n" + self.tenant_ca_pem()})

    def test_unused_ca_files_are_removed(self):
        mailbox = self.user._exchange_mailbox()
        old_path = mailbox._exchange_ews_verify()
        folder = os.path.dirname(old_path)
        self.assertEqual(folder, mailbox._exchange_ca_folder(), "in this database's filestore")
        other = new_test_user(self.env, login="other.ca", exchange_ca_bundle=self.tenant_ca_pem())
        stray = os.path.join(folder, "0" * 64 + ".pem")
        with open(stray, "w", encoding="ascii") as handle:
            handle.write("left behind")
        an_hour_ago = time.time() - 3600
        for path in (old_path, stray):
            os.utime(path, (an_hour_ago, an_hour_ago))

        self.me.write({"exchange_ca_bundle": "# renewed\n" + self.tenant_ca_pem()})
        new_path = mailbox._exchange_ews_verify()
        self.assertNotEqual(new_path, old_path)
        self.assertFalse(os.path.exists(stray), "a file no bundle names is removed")
        self.assertTrue(os.path.exists(old_path), "another user's bundle still names it")

        other.exchange_ca_bundle = False
        self.assertFalse(os.path.exists(old_path))
        self.assertTrue(os.path.exists(new_path))
        # A removed file comes back when its bundle is used again.
        self.user.sudo().exchange_ca_bundle = self.tenant_ca_pem()
        self.assertEqual(mailbox._exchange_ews_verify(), old_path)
        self.assertTrue(os.path.exists(old_path))

    def test_odoo_autovacuum_removes_stray_ca_files(self):
        mailboxes = self.env["exchange.mailbox"]
        cleaners = {name for name, _method in inspect.getmembers(type(mailboxes), is_autovacuum)}
        self.assertIn("_gc_exchange_ca_files", cleaners, "Odoo's daily autovacuum job calls it")
        folder = mailboxes._exchange_ca_folder()
        os.makedirs(folder, exist_ok=True)
        stray, fresh = (os.path.join(folder, digit * 64 + ".pem") for digit in "12")
        for path in (stray, fresh):
            with open(path, "w", encoding="ascii") as handle:
                handle.write("left behind")
        an_hour_ago = time.time() - 3600
        os.utime(stray, (an_hour_ago, an_hour_ago))
        mailboxes._gc_exchange_ca_files()
        self.assertFalse(os.path.exists(stray))
        self.assertTrue(os.path.exists(fresh), "a file just written may be about to be opened")
        os.remove(fresh)

    def test_stale_error_is_replaced_by_the_current_one(self):
        mailbox = self.user._exchange_mailbox()
        mailbox.last_error = "The certificate of mail.example.com is not trusted: ..."
        self.me.write({"exchange_email": False})
        self.me.action_exchange_test_connection()
        self.assertIn("has no mailbox address", mailbox.last_error)


@tagged("post_install", "-at_install")
class TestServerAnswers(TransactionCase):
    """Answers of an on-premises server that used to come back as raw errors or the wrong sentence."""

    def ews_user_at(self, server, login):
        self.addCleanup(server.stop)
        return new_test_user(
            self.env, login=login, exchange_account_type="ews", exchange_email=f"{login}@example.com",
            exchange_ews_url=server.ews_url, exchange_ews_username=f"{login}@example.com",
            exchange_ews_password="Passw0rd!", exchange_ews_auth="ntlm")

    def test_401_without_an_ntlm_challenge(self):
        user = self.ews_user_at(AnsweringServer(401, [("WWW-Authenticate", "Negotiate")]), "kerberos.only")
        with mute_logger("exchangelib.util"):
            check = user._exchange_check_connection()
        self.assertFalse(check["ok"])
        self.assertIn("does not offer NTLM sign-in", check["message"])
        mailbox = user._exchange_mailbox()
        self.assertEqual(mailbox.sudo().auth_failures, 0, "not the user's password: no lockout")
        self.assertEqual(mailbox.last_error_code, "NtlmNotOffered")

    def test_503_while_detecting_the_exchange_version(self):
        server = AnsweringServer(503)
        user = self.ews_user_at(server, "busy.server")
        check = user._exchange_check_connection()
        self.assertIn("answered that Exchange is unavailable (HTTP 503)", check["message"])
        self.assertNotIn("could not be reached", check["message"])
        self.assertGreater(server.requests, 0)
