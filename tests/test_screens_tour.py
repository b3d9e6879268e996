import base64
from unittest.mock import patch

import requests

from odoo.tests import HttpCase, new_test_user, tagged
from odoo.tests.common import ChromeBrowser

from odoo.addons.exchange_connector.services import ConnectionProblem

from .common import PASSWORD, ExchangeTenantMixin
from .test_oauth import ALICE, ALICE_AND_BOB

# What a person does on the tenant's sign-in page: type the password and sign in. Injected into
# every page of the browser, it acts on the sign-in form only.
SIGN_IN_AS_A_PERSON = """
document.addEventListener("DOMContentLoaded", () => {
    const form = document.querySelector("form input[name=password]")?.form;
    if (document.title === "Sign in to your account" && form && !document.getElementById("error")) {
        form.password.value = %s;
        form.submit();
    }
});
"""


@tagged("post_install", "-at_install")
class TestScreensTour(ExchangeTenantMixin, HttpCase):
    """The Office 365 / Exchange tab in a browser: Connect, and Test connection failing then working."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env, scenario=ALICE_AND_BOB)

    def test_connect_through_the_sign_in_page_back_to_connected_as(self):
        user = new_test_user(self.env, login="alice.test", name="Alice", exchange_account_type="graph",
                             exchange_email=ALICE)
        original_navigate = ChromeBrowser.navigate_to
        original_request_paused = ChromeBrowser._handle_request_paused
        tenant = self.tenant

        def navigate_to(browser, url, wait_stop=False):
            browser._websocket_request("Page.addScriptToEvaluateOnNewDocument", params={
                "source": SIGN_IN_AS_A_PERSON % f'"{PASSWORD}"'})
            return original_navigate(browser, url, wait_stop=wait_stop)

        def handle_request_paused(browser, **params):
            # The test browser reaches nothing but Odoo: the tenant's pages are fetched for it (over
            # HTTPS, trusting the tenant's CA as the connector does) and handed over as they are.
            request = params["request"]
            if not request["url"].startswith(tenant.base_url):
                return original_request_paused(browser, **params)
            answer = requests.request(
                request["method"], request["url"], data=request.get("postData"),
                headers={"Content-Type": request["headers"].get("Content-Type", "text/plain")},
                verify=tenant.ca_path, allow_redirects=False, timeout=30)
            headers = [{"name": name, "value": value} for name, value in answer.headers.items()
                       if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
            return browser._websocket_send("Fetch.fulfillRequest", params={
                "requestId": params["requestId"], "responseCode": answer.status_code,
                "responseHeaders": headers, "body": base64.b64encode(answer.content).decode()})

        with patch.object(ChromeBrowser, "navigate_to", navigate_to), \
                patch.object(ChromeBrowser, "_handle_request_paused", handle_request_paused):
            self.start_tour(f"/odoo/my-mailbox/{user.id}", "exchange_connector_connect", login=user.login)

        self.env.invalidate_all()
        self.assertEqual((user.exchange_state, user.exchange_connected_email), ("connected", ALICE))
        self.assertTrue(self.refresh_tokens(user.sudo().exchange_token_cache),
                        "the browser's sign-in at the tenant stored Alice's tokens")

    def test_failed_then_fixed_test_connection_shows_at_once(self):
        user, remote = self.ews_user(self.env, "tamsin")
        user._exchange_mark_connected(remote.email)
        user.exchange_ews_password = "not the password"
        self.start_tour(f"/odoo/my-mailbox/{user.id}", "exchange_connector_test_connection", login=user.login)
        self.env.invalidate_all()
        self.assertEqual(user.exchange_health, "connected")
        self.assertFalse(user.exchange_last_error)

    def test_discuss_marks_a_failed_last_run_plainly(self):
        user, remote = self.ews_user(self.env, "ursel")
        mailbox = user._exchange_mark_connected(remote.email)
        # What the seam records when the server's name does not resolve during a sync.
        mailbox._exchange_record_error(ConnectionProblem("Name or service not known", kind="dns"))
        self.assertEqual(user.exchange_health, "failing")
        self.start_tour("/odoo/discuss", "exchange_connector_discuss_failed_run", login=user.login)
