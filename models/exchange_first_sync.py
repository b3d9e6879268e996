from odoo import api, models


class ExchangeMailbox(models.Model):
    """First-sync preview: what the first real sync of a mailbox would do, found by listing only.

    The dry run asks Microsoft for listings (folders, the transfer folders' messages, the
    calendar window) and reads the user's subscriptions; it creates no folder, moves no mail,
    pushes no contact and saves no sync state, so that the real run that follows starts from
    the same point and its counts match.
    """

    _inherit = "exchange.mailbox"

    def _exchange_preview(self, backend):
        """``{"mails": [{"folder", "count", "exists"}], "events": n, "contacts": n}`` for this mailbox.

        ``mails`` has one entry per transfer folder set (a missing folder would be created
        empty); ``events`` counts the calendar entries in the user's window; ``contacts`` the
        partners the user subscribed to that the push would send. Kinds the user disabled
        are None.
        """
        self.ensure_one()
        user = self.user_id
        preview = {"mails": None, "events": None, "contacts": None}
        if user.exchange_sync_mails:
            preview["mails"] = []
            for folder_name in (user.exchange_transfer_folder_in, user.exchange_transfer_folder_out):
                if not folder_name:
                    continue
                path = f"Inbox/{folder_name}"
                folder = backend.find_folder(path)
                count = sum(len(page.items) for page in backend.sync_messages(folder, None)) if folder else 0
                preview["mails"].append({"folder": path, "count": count, "exists": bool(folder)})
        if user.exchange_sync_events:
            start, end = self._exchange_event_window()
            preview["events"] = sum(len(page.items) for page in backend.sync_events(start, end, None))
        if user.exchange_sync_contacts:
            wanted, _lost = self._exchange_contact_subscriptions(end_lost=False)
            preview["contacts"] = len(wanted)
        return preview

    @api.model
    def exchange_cockpit_preview(self):
        """The dry run of the current user's connected mailbox, for the Discuss section."""
        user = self.env.user
        user._exchange_check_may_use_mailboxes()
        mailbox = user.sudo()._exchange_mailbox()
        if mailbox.state != "connected":
            return False
        with mailbox.user_id._exchange_backend() as backend:
            return mailbox._exchange_preview(backend)
