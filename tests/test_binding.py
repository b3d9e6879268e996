from psycopg2 import IntegrityError

from odoo.tests import TransactionCase, new_test_user, tagged
from odoo.tools import mute_logger


@tagged("post_install", "-at_install")
class TestBinding(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.anna = new_test_user(cls.env, login="anna.binding", name="Anna Binding")
        cls.marco = new_test_user(cls.env, login="marco.binding", name="Marco Binding")
        cls.acme, cls.globex = cls.env["res.partner"].create([{"name": "Acme"}, {"name": "Globex"}])
        cls.bindings = cls.env["exchange.binding"]

    def test_bind_and_resolve_both_ways(self):
        binding = self.bindings._bind(self.anna, self.acme, "contact", "AAMk-acme", change_key="ck1")
        self.assertEqual((binding.res_model, binding.res_id, binding.change_key),
                         ("res.partner", self.acme.id, "ck1"))
        self.assertEqual(self.bindings._for_remote(self.anna, "contact", "AAMk-acme"), self.acme)
        self.assertEqual(self.bindings._remote_id(self.anna, self.acme, "contact"), "AAMk-acme")
        # Per user: the same partner in Marco's mailbox has an id of its own, Anna's is unknown to him.
        self.bindings._bind(self.marco, self.acme, "contact", "AAMk-marco-acme")
        self.assertEqual(self.bindings._remote_id(self.marco, self.acme, "contact"), "AAMk-marco-acme")
        self.assertFalse(self.bindings._for_remote(self.marco, "contact", "AAMk-acme"))
        # Per kind: an unknown remote id gives an empty recordset of the kind's model.
        unknown = self.bindings._for_remote(self.anna, "event", "AAMk-acme")
        self.assertEqual((unknown._name, len(unknown)), ("calendar.event", 0))
        self.assertIsNone(self.bindings._remote_id(self.anna, self.globex, "contact"))

    def test_rebinding_updates_the_remote_id_and_change_key(self):
        first = self.bindings._bind(
            self.anna, self.acme, "message", "id-before-move", remote_uid="<m1@example.org>")
        second = self.bindings._bind(self.anna, self.acme, "message", "id-after-move", change_key="ck2")
        self.assertEqual(first, second)
        self.assertEqual((second.remote_id, second.change_key, second.remote_uid),
                         ("id-after-move", "ck2", "<m1@example.org>"))
        self.assertFalse(self.bindings._for_remote(self.anna, "message", "id-before-move"))

    def test_a_remote_item_moves_to_the_record_bound_last(self):
        self.bindings._bind(self.anna, self.acme, "contact", "AAMk-shared")
        self.bindings._bind(self.anna, self.globex, "contact", "AAMk-shared")
        self.assertEqual(self.bindings._for_remote(self.anna, "contact", "AAMk-shared"), self.globex)
        self.assertIsNone(self.bindings._remote_id(self.anna, self.acme, "contact"))

    def test_deleted_record_is_not_returned(self):
        partner = self.env["res.partner"].create({"name": "Gone Ltd"})
        self.bindings._bind(self.anna, partner, "contact", "AAMk-gone")
        partner.unlink()
        self.assertFalse(self.bindings._for_remote(self.anna, "contact", "AAMk-gone"))

    def test_database_refuses_duplicates(self):
        values = {"user_id": self.anna.id, "kind": "contact", "res_model": "res.partner"}
        self.bindings.create(dict(values, res_id=self.acme.id, remote_id="AAMk-1"))
        with mute_logger("odoo.sql_db"):
            with self.assertRaises(IntegrityError), self.cr.savepoint():
                self.bindings.create(dict(values, res_id=self.acme.id, remote_id="AAMk-2"))
            with self.assertRaises(IntegrityError), self.cr.savepoint():
                self.bindings.create(dict(values, res_id=self.globex.id, remote_id="AAMk-1"))
        # Different kinds and users do not collide.
        self.bindings.create(dict(values, kind="event", res_id=self.acme.id, remote_id="AAMk-1"))
        self.bindings.create(dict(values, user_id=self.marco.id, res_id=self.acme.id, remote_id="AAMk-1"))

    def test_bindings_go_with_their_user(self):
        user = new_test_user(self.env, login="leaving.binding", name="Leaving")
        self.bindings._bind(user, self.acme, "contact", "AAMk-leaving")
        user.unlink()
        self.assertFalse(self.bindings.search([("remote_id", "=", "AAMk-leaving")]))
