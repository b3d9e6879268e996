from odoo import api, fields, models

#: System parameter: the first sync of a newly connected mailbox waits until its user confirms,
#: unless it is "0" (an opt-out for deployments that sync at once).
FIRST_SYNC_PREVIEW_PARAM = "exchange_connector.first_sync_preview"


class ExchangeMailbox(models.Model):
    """First-sync preview: what the first real sync of a mailbox would do, found by listing only.

    The dry run asks Microsoft for listings (folders, the transfer folders' messages, the
    calendar window) and reads the user's subscriptions; it creates no folder, moves no mail,
    pushes no contact and saves no sync state, so that the real run that follows starts from
    the same point and its counts match.
    """

    _inherit = "exchange.mailbox"

    first_sync_pending = fields.Boolean(
        "First sync waits for confirmation", copy=False,
        help="Newly connected: the scheduled job leaves the mailbox alone until its user has seen what "
             "the first sync would do (the preview in Discuss) and started it.")

    @api.model
    def _due_domain(self):
        return super()._due_domain() + [("first_sync_pending", "=", False)]

    def write(self, vals):
        if vals.get("sync_requested") and "first_sync_pending" not in vals:
            # Sync now (the preferences tab, an administrator) is a go as much as the preview's
            # button: the preview is offered, never a lock.
            vals = dict(vals, first_sync_pending=False)
        if vals.get("state") == "connected" and "first_sync_pending" not in vals and \
                self.env["ir.config_parameter"].sudo().get_param(FIRST_SYNC_PREVIEW_PARAM, "1") != "0":
            never_synced = self.filtered(
                lambda mailbox: mailbox.state != "connected" and not mailbox.last_sync_done)
            if never_synced:
                super(ExchangeMailbox, never_synced).write(dict(vals, first_sync_pending=True))
                return super(ExchangeMailbox, self - never_synced).write(vals)
        return super().write(vals)

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
                # Counted only: the listing need not fetch the recipients (EWS: one request less a page).
                pages = backend.sync_messages(folder, None, recipients=False) if folder else ()
                count = sum(len(page.items) for page in pages)
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
        # env.user is a superuser record: the check must run in the caller's own rights.
        self.env["res.users"].sudo(False)._exchange_check_may_use_mailboxes()
        mailbox = user.sudo()._exchange_mailbox()
        if mailbox.state != "connected":
            return False
        with mailbox._exchange_backend() as backend:
            return mailbox._exchange_preview(backend)

    @api.model
    def exchange_cockpit_start_first_sync(self):
        """The user saw the preview and starts the first sync: the scheduled job does it now."""
        mailbox = self.env.user.sudo()._exchange_mailbox()
        mailbox.first_sync_pending = False
        return self.exchange_cockpit_request()
