from odoo.tests import HttpCase, new_test_user, tagged


@tagged("post_install", "-at_install")
class TestImportedMailOnChatter(HttpCase):
    def test_chatter_names_the_mailboxes(self):
        reader = new_test_user(self.env, login="chatter.reader", name="Chatter Reader",
                               groups="base.group_user,base.group_partner_manager")
        holder = new_test_user(self.env, login="second.holder", name="Second Holder")
        partner = self.env["res.partner"].create({"name": "Figures Inc", "email": "figures@inc.test"})
        parsed = {
            "message_id": "<figures@inc.test>", "subject": "Quarterly figures",
            "body": "<p>See the figures</p>", "email_from": "figures@inc.test", "date": "2026-11-02 10:00:00",
        }
        Mail = self.env["exchange.mail"]
        for user in (reader, holder):
            Mail._exchange_post_batch(user, [(parsed, [("res.partner", partner.id)], partner)])
        self.start_tour(f"/odoo/contacts/{partner.id}", "exchange_connector_imported_mail_chatter",
                        login=reader.login)
