from odoo import Command
from odoo.exceptions import AccessError
from odoo.tests import HttpCase, TransactionCase, new_test_user, tagged

from .common import ExternalApiMixin, create_mailbox_users

MAILBOX_SETTINGS = ["exchange_email", "exchange_ews_url", "exchange_ews_username", "exchange_ca_bundle"]
PAUL, MARCO, ANNA = (
    ("paul.portal", "paul.portal.pw"), ("marco.test", "marco.test.pw"), ("anna.test", "anna.test.pw"))
COMPANY_SETTINGS = [
    "exchange_tenant_id", "exchange_client_id", "exchange_client_secret", "exchange_authority_host",
    "exchange_graph_url", "exchange_ca_bundle_path", "exchange_ews_allowed_hosts",
]


@tagged("post_install", "-at_install")
class TestMailboxAccessOverRpc(ExternalApiMixin, HttpCase):
    """Portal users and other internal users, each with their own credentials over the external API."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.anna, cls.marco = create_mailbox_users(cls.env)
        cls.anna.sudo().exchange_ca_bundle = False
        cls.portal = new_test_user(cls.env, login="paul.portal", password="paul.portal.pw",
                                   groups="base.group_portal")
        params = cls.env["ir.config_parameter"].sudo()
        for key, value in {
            "tenant_id": "0b6f1c4e-tenant", "client_id": "client-1",
            "authority_host": "https://login.contoso.test", "graph_url": "https://graph.contoso.test",
            "ca_bundle_path": "/etc/contoso/ca.pem", "ews_allowed_hosts": "mail.contoso.test",
        }.items():
            params.set_param(f"exchange_connector.{key}", value)

    def test_portal_user_gets_no_mailbox(self):
        me = self.portal.id
        self.assertRpcAccessError(*PAUL, "res.users", "write", [me], {
            "exchange_account_type": "ews", "exchange_ews_url": "https://mail.contoso.test/EWS/Exchange.asmx",
            "exchange_email": "paul@contoso.test", "exchange_ews_password": "x"})
        self.assertRpcAccessError(*PAUL, "res.users", "write", [me], {"exchange_sync_interval": 60})
        self.assertRpcAccessError(*PAUL, "res.users", "read", [me], ["exchange_account_type"])
        self.assertRpcAccessError(*PAUL, "res.users", "read", [me], ["exchange_ews_password"])
        for action in ("action_exchange_test_connection", "action_exchange_sync_now",
                       "action_exchange_connect", "action_exchange_disconnect",
                       "action_exchange_create_transfer_folders"):
            with self.subTest(action=action):
                self.assertRpcAccessError(*PAUL, "res.users", action, [me])
        self.assertEqual(self.rpc(*PAUL, "res.users", "exchange_sync_summary"), {"configured": False})
        # What every user may do with their own record still works.
        self.rpc(*PAUL, "res.users", "write", [me], {"tz": "Europe/Rome"})
        self.assertFalse(self.portal.exchange_account_type)
        self.assertFalse(self.env["exchange.mailbox"].search([("user_id", "=", me)]))

    def test_other_users_mailbox_settings_are_private(self):
        for field in MAILBOX_SETTINGS:
            with self.subTest(field=field):
                self.assertRpcAccessError(*MARCO, "res.users", "read", [self.anna.id], [field])
                self.assertRpcAccessError(*MARCO, "res.users", "search", [(field, "=", "anna@example.com")])
        public = self.rpc(*MARCO, "res.users", "read", [self.anna.id],
                          ["name", "exchange_account_type"])
        self.assertEqual(public[0]["exchange_account_type"], "ews")
        own = self.rpc(*ANNA, "res.users", "read", [self.anna.id], MAILBOX_SETTINGS)
        self.assertEqual(own[0]["exchange_ews_url"], "https://mail.example.com/EWS/Exchange.asmx")
        self.assertEqual(own[0]["exchange_ews_username"], "EXAMPLE\\anna")

    def test_company_settings_are_for_administrators(self):
        defaults = self.rpc(*MARCO, "res.config.settings", "default_get", COMPANY_SETTINGS)
        for value in ("0b6f1c4e-tenant", "client-1", "login.contoso.test", "graph.contoso.test",
                      "/etc/contoso/ca.pem", "mail.contoso.test"):
            self.assertNotIn(value, repr(defaults))
        admin = self.env["res.config.settings"].default_get(COMPANY_SETTINGS)
        self.assertEqual(admin["exchange_ews_allowed_hosts"], "mail.contoso.test")


@tagged("post_install", "-at_install")
class TestMailboxGroup(TransactionCase):
    """Administrators may keep mailboxes to some internal users: the group is no longer implied."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.anna, cls.marco = create_mailbox_users(cls.env)
        group = cls.env.ref("exchange_connector.group_exchange_user")
        cls.env.ref("base.group_user").implied_ids = [Command.unlink(group.id)]
        cls.anna.group_ids = [Command.link(group.id)]

    def test_only_members_of_the_group_have_a_mailbox(self):
        marco = self.marco.with_user(self.marco)
        self.assertFalse(self.marco.has_group("exchange_connector.group_exchange_user"))
        with self.assertRaises(AccessError):
            marco.write({"exchange_sync_interval": 60})
        with self.assertRaises(AccessError):
            marco.read(["exchange_account_type"])
        with self.assertRaises(AccessError):
            marco.action_exchange_test_connection()
        # The Discuss section and the sign-in start work on env.user, a superuser record.
        Cockpit = self.env["exchange.mailbox"].with_user(self.marco)
        for kind in ("mails", None):
            with self.assertRaises(AccessError):
                Cockpit.exchange_cockpit_request(kind)
        with self.assertRaises(AccessError):
            Cockpit.exchange_cockpit_preview()
        with self.assertRaises(AccessError):
            marco.env.user._exchange_oauth_start()
        self.assertEqual(marco.exchange_sync_summary(), {"configured": False})
        anna = self.anna.with_user(self.anna)
        anna.write({"exchange_sync_interval": 60})
        self.assertEqual(anna.read(["exchange_ews_url"])[0]["exchange_ews_url"],
                         "https://mail.example.com/EWS/Exchange.asmx")
        # Administrators manage every mailbox, members of the group or not.
        self.marco.write({"exchange_sync_interval": 45})
        self.assertEqual(self.marco.exchange_sync_interval, 45)
