import logging
import threading
from urllib.parse import parse_qs, quote, urlsplit

from odoo.tests import HttpCase, new_test_user, tagged

from .common import ExchangeTenantMixin

CONTROLLER_LOGGER = "odoo.addons.exchange_connector.controllers.main"


class AccessLogLines(logging.Handler):
    """Collects the HTTP access log lines of one path, as they would be written."""

    def __init__(self, path):
        super().__init__(logging.INFO)
        self.path, self.lines, self.logged = path, [], threading.Event()

    def emit(self, record):
        line = record.getMessage()
        if self.path in line:
            self.lines.append(line)
            self.logged.set()


@tagged("post_install", "-at_install")
class TestOAuthLogs(ExchangeTenantMixin, HttpCase):
    """What the sign-in answer leaves in Odoo's logs."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)
        cls.remote = cls.new_remote_mailbox("lorena")
        cls.user = new_test_user(cls.env, login="lorena", password="lorena.pw", exchange_account_type="graph",
                                 exchange_email=cls.remote.email)

    def start_connect(self):
        self.authenticate("lorena", "lorena.pw")
        action = self.user.with_user(self.user).action_exchange_connect()
        response = self.url_open(action["url"], allow_redirects=False)
        self.assertEqual(response.status_code, 303, response.text[:500])
        return response.headers["Location"]

    def test_the_code_stays_out_of_the_access_log(self):
        back = urlsplit(self.sign_in_at_microsoft(self.start_connect(), self.remote.email))
        code = parse_qs(back.query)["code"][0]
        access_log = AccessLogLines(back.path)
        werkzeug_logger = logging.getLogger("werkzeug")
        werkzeug_logger.addHandler(access_log)
        self.addCleanup(werkzeug_logger.removeHandler, access_log)
        response = self.url_open(f"{back.path}?{back.query}", allow_redirects=False)
        self.assertEqual(response.status_code, 303, response.text[:500])
        self.assertTrue(self.user.sudo().exchange_token_cache, "the sign-in itself worked")
        # Odoo's server logs the request line once the answer is sent: not a delay, a bound.
        self.assertTrue(access_log.logged.wait(timeout=30), "the callback was logged")
        self.assertNotIn(code, access_log.lines[0])
        self.assertIn("code=…", access_log.lines[0])

    def test_a_line_break_in_the_error_forges_no_log_line(self):
        state = parse_qs(urlsplit(self.start_connect()).query)["state"][0]
        forged = "access_denied\n2026-11-30 12:00:00,000 1 INFO db odoo.addons.base: admin logged in"
        with self.assertLogs(CONTROLLER_LOGGER, "WARNING") as logs:
            response = self.url_open(
                f"/exchange_connector/oauth/callback?error={quote(forged)}"
                f"&error_description={quote('x' * 5000 + chr(13))}&state={state}",
                allow_redirects=False)
        self.assertEqual(response.status_code, 400)
        messages = [record.getMessage() for record in logs.records]
        self.assertEqual(len(messages), 1)
        self.assertNotIn("\n", messages[0])
        self.assertNotIn("\r", messages[0])
        self.assertIn("access_denied\\n2026-11-30", messages[0])
        self.assertLess(len(messages[0]), 1000)
