import json
import sys
import threading
import traceback
import xmlrpc.client
from unittest.mock import patch
from urllib.parse import parse_qs, urlsplit

from odoo.tests import new_test_user
from odoo.tests.common import _super_send

from odoo.addons.exchange_connector.services import AuthenticationError
from odoo.addons.exchange_connector.services.auth import GraphOAuth
from odoo.addons.exchange_connector.simulator import Tenant


def create_mailbox_users(env):
    """Two internal users, each with a linked on-premises mailbox and a secret of their own."""
    anna = new_test_user(
        env, login="anna.test", password="anna.test.pw", name="Anna Test",
        exchange_account_type="ews", exchange_email="anna@example.com",
        exchange_ews_url="https://mail.example.com/EWS/Exchange.asmx",
        exchange_ews_username="EXAMPLE\\anna", exchange_ews_password="anna-secret",
    )
    marco = new_test_user(
        env, login="marco.test", password="marco.test.pw", name="Marco Test",
        exchange_account_type="graph", exchange_email="marco@example.com",
    )
    anna.sudo().exchange_token_cache = '{"RefreshToken": {"anna": "rt-secret"}}'
    marco.sudo().exchange_token_cache = '{"RefreshToken": {"marco": "rt-secret"}}'
    return anna, marco


CLIENT_ID = "5e1f0c4a-odoo-exchange-connector"
CLIENT_SECRET = "odoo~test~secret"
#: A redirect URI for sign-ins that bypass Odoo's controller (tests of later steps).
DIRECT_REDIRECT_URI = "https://odoo.test/exchange_connector/oauth/callback"
PASSWORD = "Passw0rd!"
TOKEN_ENDPOINT = "/{tenant}/oauth2/v2.0/token"


def _no_commit_progress(self, processed=0, *, remaining=None, deactivate=False):
    return float("inf")


def no_commit_progress(env):
    """Patch ``ir.cron._commit_progress`` for a sync run in the test transaction, which cannot commit:
    it commits nothing and reports unlimited time left."""
    return patch.object(type(env["ir.cron"]), "_commit_progress", _no_commit_progress)


class ExchangeTenantMixin:
    """A real local Microsoft tenant over HTTPS for the test class, and the company pointed at it.

    Not a TestCase: test modules combine it with TransactionCase or HttpCase. Call
    ``cls.start_tenant(cls.env)`` in setUpClass (without ``env`` the company settings are left
    alone, for tests that must commit them themselves).
    """

    @classmethod
    def _request_handler(cls, session, prepared_request, /, **kwargs):
        # Odoo's guard against external requests compares the timeout with a number, while
        # services/ gives requests a (connect, read) pair. The tenant is on the loopback, and
        # ".invalid" names never resolve (RFC 6761): nothing leaves the machine.
        host = urlsplit(prepared_request.url).hostname or ""
        if host in ("127.0.0.1", "localhost") or host.endswith(".invalid"):
            return _super_send(session, prepared_request, **kwargs)
        return super()._request_handler(session, prepared_request, **kwargs)

    @classmethod
    def start_tenant(cls, env=None, scenario=None):
        cls.tenant = Tenant.start(scenario=scenario)
        cls.addClassCleanup(cls.tenant.stop)
        base_url = (env or cls.env)["ir.config_parameter"].sudo().get_param("web.base.url")
        cls.redirect_uri = f"{base_url}/exchange_connector/oauth/callback"
        cls.tenant.register_app(CLIENT_ID, CLIENT_SECRET, [cls.redirect_uri, DIRECT_REDIRECT_URI])
        if env is not None:
            cls.configure_company(env)

    @classmethod
    def configure_company(cls, env):
        params = env["ir.config_parameter"].sudo()
        for key, value in {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authority_host": cls.tenant.base_url,
            "tenant_id": cls.tenant.tenant_id,
            "graph_url": cls.tenant.graph_url,
            "ca_bundle_path": cls.tenant.ca_path,
        }.items():
            params.set_param(f"exchange_connector.{key}", value)

    @classmethod
    def tenant_ca_pem(cls):
        with open(cls.tenant.ca_path, encoding="ascii") as handle:
            return handle.read()

    @classmethod
    def new_remote_mailbox(cls, name):
        return cls.tenant.store.add_mailbox(f"{name}@contoso.test", name.title(), password=PASSWORD)

    @classmethod
    def ews_user(cls, env, name, password=PASSWORD, **values):
        """An internal user with an on-premises mailbox in the tenant, trusted through its CA in PEM."""
        remote = cls.new_remote_mailbox(name)
        settings = {
            "exchange_account_type": "ews", "exchange_email": remote.email,
            "exchange_ews_url": cls.tenant.ews_url, "exchange_ews_username": remote.email,
            "exchange_ews_password": password, "exchange_ews_auth": "ntlm",
            "exchange_verify_tls": True, "exchange_ca_bundle": cls.tenant_ca_pem(),
        }
        user = new_test_user(env, login=f"{name}.test", name=name.title(), **dict(settings, **values))
        return user, remote

    @classmethod
    def graph_user(cls, env, name, preview_seen=True, **values):
        """An internal user with an Office 365 mailbox, signed in through the tenant's browser flow
        (``preview_seen``: and past the first-sync preview, see :meth:`connected_user`)."""
        remote = cls.new_remote_mailbox(name)
        user = new_test_user(
            env, login=f"{name}.test", name=name.title(), exchange_account_type="graph",
            exchange_email=remote.email, **values)
        user.exchange_token_cache = cls.sign_in(remote.email)
        if preview_seen:
            user._exchange_mailbox().first_sync_pending = False
        return user, remote

    @classmethod
    def connected_user(cls, kind, name, env=None, preview_seen=True, **values):
        """A Graph or EWS user (``kind``) of the tenant whose connection is recorded: syncing may start.

        ``preview_seen``: the user has confirmed the first-sync preview (the scheduled job syncs
        the mailbox); False leaves the new mailbox waiting for its user, as after a real Connect.
        """
        if kind == "graph":
            user, remote = cls.graph_user(env or cls.env, name, preview_seen=preview_seen, **values)
        else:
            user, remote = cls.ews_user(env or cls.env, name, **values)
        mailbox = user._exchange_mark_connected(remote.email)
        if preview_seen:
            mailbox.first_sync_pending = False
        return user, remote

    @classmethod
    def sign_in(cls, email, password=PASSWORD):
        """Run the real authorization-code flow against the tenant; return msal's token cache blob."""
        oauth = GraphOAuth(CLIENT_ID, CLIENT_SECRET, cls.tenant.authority, verify=cls.tenant.ca_path)
        flow = oauth.start_sign_in(DIRECT_REDIRECT_URI, login_hint=email)
        answer = cls.tenant.browser_sign_in(flow["auth_uri"], email, password)
        return oauth.finish_sign_in(flow, answer).cache_blob

    def sign_in_at_microsoft(self, auth_uri, login, password=PASSWORD):
        """Fill the tenant's login form; return the URL it sends the browser back to."""
        return self.tenant.browser_sign_in_redirect(auth_uri, login, password)

    def connect_without_browser(self, user, login=None):
        """Connect ``user`` through the model API (what the controller does), for tests of later steps."""
        user = user.with_user(user)
        flow = user._exchange_oauth_start()
        back = urlsplit(self.sign_in_at_microsoft(flow["auth_uri"], login=login or user.exchange_email))
        params = {key: values[0] for key, values in parse_qs(back.query).items()}
        user._exchange_oauth_finish(flow, params)
        user.env.invalidate_all()

    @staticmethod
    def refresh_tokens(cache_blob):
        return {entry["secret"] for entry in json.loads(cache_blob).get("RefreshToken", {}).values()}

    def refused_sign_in(self, user):
        """The AuthenticationError of a whoami() through the seam.

        Not ``assertRaises``: in Odoo tests it rolls back to a savepoint, and with it the
        failure count the seam just recorded.
        """
        try:
            with user._exchange_backend() as backend:
                backend.whoami()
        except AuthenticationError as error:
            return error
        raise AssertionError(f"{user.login} signed in")


class ConfiguredTenantMixin(ExchangeTenantMixin):
    """The tenant of the test class with the company pointed at it; every test starts with the
    tenant's default knobs and an empty request log."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_tenant(cls.env)

    def setUp(self):
        super().setUp()
        self.tenant.knobs.reset()
        self.tenant.request_log.clear()


class WorkerThreadsMixin:
    """Code run in threads of their own, as cron workers run it, with what they raise re-raised."""

    def in_thread(self, target, name):
        """Run ``target`` in a thread; return a function that joins it and re-raises what it raised."""
        errors = []

        def run():
            try:
                target()
            except BaseException as error:  # noqa: BLE001 - re-raised in the test thread
                errors.append(error)

        thread = threading.Thread(target=run, name=name)
        thread.start()

        def join():
            thread.join(timeout=90)
            if thread.is_alive():
                self.fail("the worker hung in:\n" + "".join(
                    traceback.format_stack(sys._current_frames()[thread.ident])))
            if errors:
                raise errors[0]

        return join

    def run_side_by_side(self, first, second, first_inside, second_done, names=("first", "second")):
        """Two workers at once: ``second`` starts once ``first_inside`` is set (by ``first`` where it
        then waits for ``second_done``, or when ``first`` ends) and sets ``second_done`` when it ends."""

        def run_first():
            try:
                first()
            finally:
                first_inside.set()

        def run_second():
            first_inside.wait(timeout=60)
            try:
                second()
            finally:
                second_done.set()

        join_first = self.in_thread(run_first, names[0])
        join_second = self.in_thread(run_second, names[1])
        try:
            join_first()
        finally:
            join_second()


class ExternalApiMixin:
    """Calls over the external API (XML-RPC) with a user's own credentials, for HttpCase tests."""

    def rpc(self, login, password, model, method, *args, **kwargs):
        uid = self.xmlrpc_common.authenticate(self.env.cr.dbname, login, password, {})
        self.assertTrue(uid, f"{login} could not log in over XML-RPC")
        return self.xmlrpc_object.execute_kw(
            self.env.cr.dbname, uid, password, model, method, list(args), kwargs)

    def assertRpcAccessError(self, *call):
        with self.assertRaises(xmlrpc.client.Fault) as caught:
            self.rpc(*call)
        # The messages of odoo.exceptions.AccessError for a field, a model, a group-restricted method,
        # and the connector's own for users who may have no mailbox.
        self.assertRegex(caught.exception.faultString,
                         r"enough rights to access the field|not allowed to (modify|access)|Access Denied"
                         r"|mailboxes are for internal users")
