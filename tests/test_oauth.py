import time
from urllib.parse import parse_qs, urlsplit

from odoo.exceptions import AccessError, UserError
from odoo.tests import HttpCase, new_test_user, tagged

from .common import CLIENT_ID, PASSWORD, TOKEN_ENDPOINT, ExchangeTenantMixin

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
#: Alice and Bob, with their transfer folders (Bob has the incoming one only).
ALICE_AND_BOB = {"users": [
    {"email": ALICE, "display_name": "Alice Example", "password": PASSWORD,
     "folders": ["Inbox/Transfer In", "Inbox/Transfer Out"]},
    {"email": BOB, "display_name": "Bob Example", "password": PASSWORD, "folders": ["Inbox/Transfer In"]},
]}


@tagged("post_install", "-at_install")
class TestExchangeOAuth(ExchangeTenantMixin, HttpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env, scenario=ALICE_AND_BOB)
        cls.alice = new_test_user(cls.env, login="alice", password="alice.pw", name="Alice",
                                  exchange_account_type="graph", exchange_email=ALICE)
        cls.bob = new_test_user(cls.env, login="bob", password="bob.pw", name="Bob",
                                exchange_account_type="graph", exchange_email=BOB)

    def start_connect(self, login):
        """Log in to Odoo as ``login``, click Connect; return the identity platform URL Odoo redirects to."""
        self.authenticate(login, f"{login}.pw")
        user = self.env["res.users"].search([("login", "=", login)])
        action = user.with_user(user).action_exchange_connect()
        self.assertEqual(action["type"], "ir.actions.act_url")
        response = self.url_open(action["url"], allow_redirects=False)
        self.assertEqual(response.status_code, 303, response.text[:500])
        return response.headers["Location"]

    def open_callback(self, callback_url):
        """Let Odoo's HTTP server handle the browser coming back to the callback URL."""
        parts = urlsplit(callback_url)
        self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}", self.redirect_uri)
        return self.url_open(f"{parts.path}?{parts.query}", allow_redirects=False)

    def stored_cache(self, user):
        self.env.invalidate_all()
        return user.sudo().exchange_token_cache

    def test_connect_stores_tokens_and_the_seam_refreshes_them_with_rotation(self):
        auth_uri = self.start_connect("alice")
        parts = urlsplit(auth_uri)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}",
                         self.tenant.authority + "/oauth2/v2.0/authorize")
        self.assertEqual(query["client_id"], CLIENT_ID)
        self.assertEqual(query["redirect_uri"], self.redirect_uri)
        self.assertEqual(query["code_challenge_method"], "S256")
        self.assertGreaterEqual(len(query["code_challenge"]), 43)
        self.assertEqual(query["login_hint"], ALICE)
        self.assertTrue(self.alice._exchange_oauth_state_is_valid(query["state"]))
        self.assertFalse(self.bob._exchange_oauth_state_is_valid(query["state"]))

        response = self.open_callback(self.sign_in_at_microsoft(auth_uri, ALICE))
        self.assertEqual(response.status_code, 303, response.text[:500])
        self.assertTrue(response.headers["Location"].endswith(f"/odoo/my-mailbox/{self.alice.id}"))
        first_cache = self.stored_cache(self.alice)
        self.assertTrue(first_cache)
        first_refresh_tokens = self.refresh_tokens(first_cache)
        self.assertEqual(len(first_refresh_tokens), 1)
        self.assertEqual(self.alice.exchange_connected_email, ALICE)
        self.assertEqual(self.alice.exchange_state, "connected")

        with self.alice._exchange_backend() as backend:
            self.assertEqual(backend.whoami().email, ALICE)
        self.assertEqual(self.stored_cache(self.alice), first_cache, "a valid access token needs no refresh")

        # The access token expires (tenant clock): Graph answers 401, the seam refreshes, keeps the new cache.
        self.tenant.identity.advance_clock(3700)
        self.tenant.request_log.clear()
        with self.alice._exchange_backend() as backend:
            self.assertIsNotNone(backend.find_folder("Inbox/Transfer In"))
        self.assertEqual(self.tenant.request_log.count(protocol="identity", endpoint=TOKEN_ENDPOINT), 1,
                         self.tenant.request_log.counts())
        second_refresh_tokens = self.refresh_tokens(self.stored_cache(self.alice))
        self.assertEqual(len(second_refresh_tokens), 1)
        self.assertNotEqual(second_refresh_tokens, first_refresh_tokens)
        # The old refresh token was redeemed: only the stored new one still works, as the next use shows.
        self.tenant.identity.advance_clock(3700)
        with self.alice._exchange_backend() as backend:
            self.assertEqual(backend.whoami().email, ALICE)
        self.assertNotIn(self.refresh_tokens(self.stored_cache(self.alice)).pop(),
                         first_refresh_tokens | second_refresh_tokens)

    def test_forged_state_is_refused_and_nothing_is_stored(self):
        auth_uri = self.start_connect("alice")
        back = urlsplit(self.sign_in_at_microsoft(auth_uri, ALICE))
        query = parse_qs(back.query)
        user_id, nonce, signature = query["state"][0].split(".")
        forged = [
            f"{user_id}.{nonce}.{'0' * len(signature)}",
            f"{user_id}.{nonce}x.{signature}",
            f"{self.bob.id}.{nonce}.{signature}",
            "",
        ]
        for state in forged:
            with self.subTest(state=state):
                response = self.url_open(
                    f"{back.path}?code={query['code'][0]}&state={state}", allow_redirects=False)
                self.assertEqual(response.status_code, 403)
        self.assertFalse(self.stored_cache(self.alice))
        # The genuine answer still completes the pending sign-in: refusals did not consume it.
        self.assertEqual(self.open_callback(back.geturl()).status_code, 303)
        self.assertTrue(self.stored_cache(self.alice))

    def test_state_of_another_user_is_refused(self):
        bob_auth_uri = self.start_connect("bob")
        bob_answer = self.sign_in_at_microsoft(bob_auth_uri, login=BOB)
        # Alice's browser is made to deliver Bob's sign-in answer (login CSRF).
        self.start_connect("alice")
        self.assertEqual(self.open_callback(bob_answer).status_code, 403)
        self.assertFalse(self.stored_cache(self.alice))
        self.assertFalse(self.stored_cache(self.bob))

    def test_replayed_callback_is_refused(self):
        answer = self.sign_in_at_microsoft(self.start_connect("alice"), ALICE)
        self.assertEqual(self.open_callback(answer).status_code, 303)
        self.alice.with_user(self.alice).action_exchange_disconnect()
        self.assertFalse(self.stored_cache(self.alice))
        self.assertEqual(self.open_callback(answer).status_code, 403)
        self.assertFalse(self.stored_cache(self.alice))

    def test_sign_in_as_another_microsoft_account_is_refused(self):
        answer = self.sign_in_at_microsoft(self.start_connect("alice"), login=BOB)
        response = self.open_callback(answer)
        self.assertEqual(response.status_code, 400)
        self.assertIn(f"You signed in to Microsoft as {BOB}", response.text)
        self.assertFalse(self.stored_cache(self.alice))

    def test_error_from_microsoft_is_shown_and_stores_nothing(self):
        auth_uri = self.start_connect("alice")
        state = parse_qs(urlsplit(auth_uri).query)["state"][0]
        response = self.url_open(
            f"/exchange_connector/oauth/callback?error=access_denied&error_description=AADSTS65004&state={state}",
            allow_redirects=False)
        self.assertEqual(response.status_code, 400)
        self.assertIn("Microsoft did not sign you in (access_denied)", response.text)
        self.assertFalse(self.stored_cache(self.alice))

    def test_disconnect_clears_the_sign_in(self):
        self.connect_without_browser(self.alice)
        self.assertTrue(self.stored_cache(self.alice))
        with self.assertRaises(AccessError):
            self.alice.with_user(self.bob).action_exchange_disconnect()
        self.alice.with_user(self.alice).action_exchange_disconnect()
        self.assertFalse(self.stored_cache(self.alice))
        self.assertEqual(self.alice.exchange_state, "not_connected")
        check = self.alice.with_user(self.alice)._exchange_check_connection()
        self.assertFalse(check["ok"])
        self.assertIn("not connected", check["message"])

    def test_owner_clicks_the_buttons_through_the_web_client(self):
        self.connect_without_browser(self.alice)
        self.authenticate("alice", "alice.pw")
        action = self.click("res.users", "action_exchange_test_connection", self.alice)
        self.assertEqual(action["params"]["type"], "success", action["params"]["message"])
        self.click("res.users", "action_exchange_disconnect", self.alice)
        self.assertFalse(self.stored_cache(self.alice))
        self.authenticate("bob", "bob.pw")
        with self.assertRaisesRegex(Exception, "AccessError"):
            self.click("res.users", "action_exchange_test_connection", self.alice)

    def click(self, model, method, record):
        """What the web client sends for a type="object" button."""
        return self.make_jsonrpc_request(f"/web/dataset/call_button/{model}.{method}", {
            "model": model, "method": method, "args": [record.ids], "kwargs": {},
        })

    def test_sign_in_cannot_be_started_from_another_site(self):
        # A link elsewhere lacks the token of the Connect button (or has an old or foreign one).
        self.authenticate("alice", "alice.pw")
        self.tenant.request_log.clear()
        old = self.alice._exchange_connect_token(issued=int(time.time()) - 3600)
        for url in ("/exchange_connector/oauth/start",
                    "/exchange_connector/oauth/start?token=1.forged",
                    f"/exchange_connector/oauth/start?token={old}",
                    f"/exchange_connector/oauth/start?token={self.bob._exchange_connect_token()}"):
            response = self.url_open(url, allow_redirects=False)
            self.assertEqual(response.status_code, 403, url)
        self.assertEqual(self.tenant.request_log.count(protocol="identity"), 0)
        # The button's own link still works.
        authorize = self.tenant.authority + "/oauth2/v2.0/authorize"
        self.assertTrue(self.start_connect("alice").startswith(authorize))

    def test_only_the_owner_can_connect(self):
        with self.assertRaisesRegex(UserError, "Only Alice can connect"):
            self.alice.action_exchange_connect()
        with self.assertRaises(AccessError):
            self.alice.with_user(self.bob)._exchange_oauth_start()
        self.alice.write({"exchange_account_type": "ews"})
        with self.assertRaisesRegex(UserError, "Office 365 mailboxes"):
            self.alice.with_user(self.alice).action_exchange_connect()
