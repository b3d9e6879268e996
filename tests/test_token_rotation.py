import contextlib
import threading
import time
from unittest.mock import patch

from odoo import SUPERUSER_ID, api
from odoo.orm.environments import Transaction
from odoo.tests import TransactionCase, new_test_user, tagged

from odoo.addons.exchange_connector.models.exchange_mailbox import TOKEN_REFRESH_LOCK, StoredTokenCache
from odoo.addons.exchange_connector.services.auth import GraphOAuth

from .common import CLIENT_ID, CLIENT_SECRET, ExchangeTenantMixin
from .test_scheduler import WorkerKilled

COMPANY_KEYS = ("client_id", "client_secret", "authority_host", "tenant_id", "graph_url", "ca_bundle_path")


@tagged("post_install", "-at_install")
class TestTokenRotation(ExchangeTenantMixin, TransactionCase):
    """Single-use refresh tokens (strict rotation) used by workers with transactions of their own.

    The company settings and the user are committed (and removed afterwards): every worker
    here is a cursor of its own, as in production.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant()
        with cls.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            params = env["ir.config_parameter"]
            cls.saved_params = {key: params.get_param(f"exchange_connector.{key}") for key in COMPANY_KEYS}
            cls.configure_company(env)
        cls.addClassCleanup(cls.restore_company)

    @classmethod
    def restore_company(cls):
        with cls.registry.cursor() as cr:
            params = api.Environment(cr, SUPERUSER_ID, {})["ir.config_parameter"]
            for key, value in cls.saved_params.items():
                params.set_param(f"exchange_connector.{key}", value or False)

    def setUp(self):
        super().setUp()
        self.remote = self.new_remote_mailbox(f"rota{len(self.tenant.store.mailboxes())}")
        # Access tokens that msal deems expired at once: every use redeems the refresh token.
        self.tenant.knobs.set(self.remote.email, token_lifetime_seconds=60, refresh_token_single_use=True)
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            user = new_test_user(env, login=self.remote.email, exchange_account_type="graph",
                                 exchange_email=self.remote.email)
            user.exchange_token_cache = self.sign_in(self.remote.email)
            self.user_id, self.first_cache = user.id, user.exchange_token_cache
        self.addCleanup(self.remove_user)
        self.tenant.request_log.clear()

    def remove_user(self):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            user = env["res.users"].browse(self.user_id)
            partner = user.partner_id
            env["exchange.mailbox"].search([("user_id", "=", user.id)]).unlink()
            user.unlink()
            partner.unlink()

    @contextlib.contextmanager
    def worker(self):
        """The user in a cursor of its own: committed at the end, rolled back when killed."""
        with self.registry.cursor() as cr:
            # The test runner holds the registry lock that Environment() takes to look up the registry.
            cr.transaction = Transaction(self.registry)
            yield api.Environment(cr, SUPERUSER_ID, {})["res.users"].browse(self.user_id)

    def committed(self, *field_names):
        with self.worker() as user:
            mailbox = user._exchange_mailbox()
            return [user.exchange_token_cache] + [mailbox[name] for name in field_names]

    def test_a_rotated_token_survives_a_crash_of_its_worker(self):
        with self.assertRaises(WorkerKilled), self.worker() as user, user._exchange_backend() as backend:
            self.assertEqual(backend.whoami().email, self.remote.email)
            raise WorkerKilled()  # SIGKILL mid-sync: the worker's transaction is lost
        stored, = self.committed()
        self.assertTrue(self.refresh_tokens(stored).isdisjoint(self.refresh_tokens(self.first_cache)),
                        "the rotated refresh token was committed when it was received")
        with self.worker() as user, user._exchange_backend() as backend:
            self.assertEqual(backend.whoami().email, self.remote.email)
        _stored, failures, state = self.committed("auth_failures", "state")
        self.assertEqual((failures, state), (0, "connected"))

    def test_a_test_connection_during_a_sync_locks_nobody_out(self):
        with self.worker() as syncing, syncing._exchange_backend() as backend:
            # The sync read the stored sign-in; before its next token refresh, the user tests the
            # connection in another worker, which redeems that refresh token first.
            with self.worker() as testing:
                check = testing._exchange_check_connection()
            self.assertEqual(check["mailbox"], self.remote.email, check["message"])
            self.assertEqual(backend.whoami().email, self.remote.email,
                             "the sync refreshes with the token the test stored")
        _stored, failures, state, error = self.committed("auth_failures", "state", "last_error")
        self.assertEqual((failures, state, error), (0, "connected", False))
        self.assertEqual(self.tenant.request_log.count(protocol="identity", status=400), 0)

    def test_a_refresh_waits_for_another_workers_refresh_and_uses_its_token(self):
        refresh_started = threading.Event()
        refreshing = StoredTokenCache.refreshing

        def refreshing_observed(store):
            refresh_started.set()
            return refreshing(store)

        def sync():
            try:
                with self.worker() as user, user._exchange_backend() as backend:
                    results.append(backend.whoami().email)
            except Exception as error:  # noqa: BLE001 - re-raised in the test thread
                results.append(error)

        results = []
        with self.registry.cursor() as other_worker:
            # Another worker holds the mailbox's refresh lock and redeems the stored refresh token.
            other_worker.execute("SELECT pg_advisory_lock(%s, %s)", (TOKEN_REFRESH_LOCK, self.user_id))
            other_worker.commit()
            oauth = GraphOAuth(CLIENT_ID, CLIENT_SECRET, self.tenant.authority, cache_blob=self.first_cache,
                               verify=self.tenant.ca_path)
            oauth.delegated_token_provider(self.remote.email)(force_refresh=True)
            with patch.object(StoredTokenCache, "refreshing", refreshing_observed):
                thread = threading.Thread(target=sync, name="syncing")
                thread.start()
                self.assertTrue(refresh_started.wait(timeout=30), "the sync refreshes through the store")
                self.assertTrue(self.waits_for_the_lock(thread, other_worker),
                                f"the sync did not wait for the other worker's refresh: {results}")
                # It stores the rotated cache, then lets the waiting refresh go on.
                other_worker.execute("UPDATE res_users SET exchange_token_cache = %s WHERE id = %s",
                                     (oauth.cache_blob, self.user_id))
                other_worker.commit()
                other_worker.execute("SELECT pg_advisory_unlock(%s, %s)", (TOKEN_REFRESH_LOCK, self.user_id))
                other_worker.commit()
                thread.join(timeout=60)
        self.assertFalse(thread.is_alive(), "the sync hung")
        if isinstance(results[0], Exception):
            raise results[0]
        self.assertEqual(results, [self.remote.email])
        self.assertEqual(self.tenant.request_log.count(protocol="identity", status=400), 0,
                         "no refresh token redeemed twice")

    def waits_for_the_lock(self, thread, cr):
        """Whether ``thread`` comes to wait for the mailbox's refresh lock (False: it ended first)."""
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:
            cr.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                       "AND classid = %s AND objid = %s", (TOKEN_REFRESH_LOCK, self.user_id))
            if cr.fetchone():
                return True
            thread.join(timeout=0.01)  # the next look at the locks, or the thread's end
        return False
