import os

from odoo import tools
from odoo.exceptions import UserError
from odoo.tests import TransactionCase, new_test_user, tagged

from odoo.addons.exchange_connector.services import RemoteMailbox

from .common import PASSWORD, ConfiguredTenantMixin

MIME = (b"From: Sender <sender@example.org>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        b"Message-ID: <{subject}@example.org>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\nHello\r\n")


@tagged("post_install", "-at_install")
class TestBackendSeam(ConfiguredTenantMixin, TransactionCase):
    def test_ews_backend_trusts_the_users_own_ca_and_connects_the_mailbox(self):
        user, remote = self.ews_user(self.env, "erika")
        with user._exchange_backend() as backend:
            self.assertEqual(backend.whoami().email.lower(), remote.email.lower())
            self.assertTrue(backend.config.service_endpoint.startswith(self.tenant.base_url))
        pem_path = user._exchange_mailbox()._exchange_ews_verify()
        ca_folder = os.path.join(tools.config.filestore(self.env.cr.dbname), "exchange_connector", "ca")
        self.assertTrue(pem_path.startswith(ca_folder))
        with open(pem_path, encoding="ascii") as handle:
            self.assertEqual(handle.read().strip(), self.tenant_ca_pem().strip())
        self.assertTrue(self.tenant.request_log.count(protocol="ews", mailbox=remote.email))
        mailbox = user._exchange_mailbox()
        self.assertEqual(mailbox.state, "connected", "working credentials start the sync")
        self.assertEqual(mailbox.connected_email, remote.email)
        self.assertEqual(user.with_user(user).exchange_state, "connected", "the owner reads their status")

    def test_ews_verify_off_and_system_cas(self):
        user, _remote = self.ews_user(self.env, "vera", exchange_ca_bundle=False)
        self.assertIs(user._exchange_mailbox()._exchange_ews_verify(), True)
        user.exchange_verify_tls = False
        self.assertIs(user._exchange_mailbox()._exchange_ews_verify(), False)

    def test_graph_seam_persists_the_rotated_refresh_token(self):
        # Tokens living 60 s are "expired" for msal (5 min margin): every use refreshes, and the
        # tenant accepts each refresh token once (strict rotation, stricter than Microsoft). The
        # second use works only if the first one's rotated cache was saved.
        remote = self.new_remote_mailbox("greta")
        self.tenant.knobs.set(remote.email, token_lifetime_seconds=60, refresh_token_single_use=True)
        user = new_test_user(self.env, login="greta.test", name="Greta", exchange_account_type="graph",
                             exchange_email=remote.email)
        user.exchange_token_cache = self.sign_in(remote.email)
        self.assertEqual(user._exchange_mailbox().state, "connected", "a stored sign-in connects the mailbox")
        caches = [user.exchange_token_cache]
        for _attempt in range(2):
            with user._exchange_backend() as backend:
                self.assertEqual(backend.whoami(), RemoteMailbox(remote.email, "Greta"))
            caches.append(user.exchange_token_cache)
        self.assertEqual(len(set(caches)), 3, "each refresh rotated the stored cache")
        self.assertEqual(
            self.tenant.request_log.count(endpoint="/v1.0/me", mailbox=remote.email, status=200), 2)
        self.assertEqual(user._exchange_mailbox().auth_failures, 0)

    def test_a_disconnect_during_a_sync_is_not_undone_by_the_rotated_token(self):
        remote = self.new_remote_mailbox("dirk")
        self.tenant.knobs.set(remote.email, token_lifetime_seconds=60)  # every use refreshes
        user = new_test_user(self.env, login="dirk.test", name="Dirk", exchange_account_type="graph",
                             exchange_email=remote.email)
        user.exchange_token_cache = self.sign_in(remote.email)
        with user._exchange_backend() as backend:
            backend.whoami()  # rotates the refresh token
            user.action_exchange_disconnect()  # meanwhile, from the preferences
        self.assertFalse(user.exchange_token_cache, "the sign-in stays forgotten")
        self.assertEqual(user.exchange_state, "not_connected")

    def test_lockout_after_repeated_password_failures_stops_all_requests(self):
        user, remote = self.ews_user(self.env, "lars", password="wrong-password")
        user._exchange_mark_connected(remote.email)
        for attempt in range(1, 4):
            self.assertEqual(self.refused_sign_in(user).kind, "password")
            self.assertEqual(user._exchange_mailbox().auth_failures, attempt)
        mailbox = user._exchange_mailbox()
        self.assertEqual(mailbox.state, "auth_failed")
        self.assertEqual(user.exchange_state, "auth_failed")
        self.assertIn("password", user.exchange_last_error)
        notice = self.env["mail.message"].search([("partner_ids", "in", user.partner_id.ids)])
        self.assertEqual(len(notice), 1)
        self.assertIn("paused after 3 failed sign-ins", str(notice.body))
        self.assertIn("Correct the user name or password in your preferences", str(notice.body))

        # Refused requests carry no mailbox in the log (Exchange never learnt who it was): count them all.
        served = len(self.tenant.request_log.entries)
        locked = "stopped using your Exchange password"
        with self.assertRaisesRegex(UserError, locked), user._exchange_backend():
            pass
        self.assertEqual(len(self.tenant.request_log.entries), served,
                         "a locked mailbox never reaches Exchange")

        # What the preferences do once the user corrected the password.
        user._exchange_reset_lockout()
        user.exchange_ews_password = PASSWORD
        with user._exchange_backend() as backend:
            backend.whoami()
        self.assertEqual(mailbox.state, "connected")
        self.assertEqual(mailbox.auth_failures, 0)

    def test_revoked_sign_in_locks_at_the_configured_limit_and_asks_to_reconnect(self):
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.max_auth_failures", 2)
        remote = self.new_remote_mailbox("rita")
        self.tenant.knobs.set(remote.email, token_lifetime_seconds=60)
        user = new_test_user(self.env, login="rita.test", name="Rita", exchange_account_type="graph",
                             exchange_email=remote.email)
        user.exchange_token_cache = self.sign_in(remote.email)
        self.tenant.identity.revoke(remote.email)
        notices = self.env["mail.message"].search
        self.assertEqual(self.refused_sign_in(user).kind, "invalid_grant")
        mailbox = user._exchange_mailbox()
        self.assertEqual(mailbox.state, "connected", "one refusal does not lock the mailbox yet")
        warning = notices([("partner_ids", "in", user.partner_id.ids)])
        self.assertEqual(len(warning), 1, "Microsoft's invalid_grant is passed on before the lockout")
        self.assertIn("stops after 2 failed attempts unless you reconnect", str(warning.body))
        self.assertEqual(self.refused_sign_in(user).kind, "invalid_grant")
        self.assertEqual((mailbox.state, mailbox.last_error_code), ("auth_failed", "invalid_grant"))
        lockout = notices([("partner_ids", "in", user.partner_id.ids), ("id", "not in", warning.ids)])
        self.assertIn("paused after 2 failed sign-ins", str(lockout.body))
        self.assertIn("Click Connect in your preferences", str(lockout.body))
        self.tenant.request_log.clear()
        with self.assertRaises(UserError), user._exchange_backend():
            pass
        self.assertFalse(self.tenant.request_log.entries, "not even the identity platform is asked")
        # Signing in again (what the Connect button stores) restarts syncing.
        user.exchange_token_cache = self.sign_in(remote.email)
        self.assertEqual((mailbox.state, mailbox.auth_failures), ("connected", 0))

    def test_lifting_a_lockout_leaves_an_office365_mailbox_without_sign_in_not_connected(self):
        user, _remote = self.graph_user(self.env, "lena")
        mailbox = user._exchange_mailbox()
        mailbox.write({"state": "auth_failed", "auth_failures": 3})
        user.with_context(exchange_token_rotation=True).exchange_token_cache = False
        user._exchange_reset_lockout()
        self.assertEqual((mailbox.state, mailbox.auth_failures), ("not_connected", 0))
        self.assertFalse(mailbox.filtered_domain(mailbox._due_domain()), "nothing to sync until Connect")

    def test_disconnect_stops_syncing_and_forgets_states(self):
        user, remote = self.graph_user(self.env, "dora")
        mailbox = user._exchange_mailbox()
        mailbox.mails_in_state = "https://example.invalid/delta?token=1"
        user.exchange_token_cache = False
        self.assertEqual(mailbox.state, "not_connected")
        self.assertFalse(mailbox.mails_in_state)
        self.assertFalse(mailbox.filtered_domain(mailbox._due_domain()))
