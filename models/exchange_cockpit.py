from odoo import api, fields, models
from odoo.exceptions import UserError

#: The kinds the Discuss section has a button for, in its order.
COCKPIT_KINDS = ("mails", "events", "contacts")
#: Bus notification type telling the user's open Discuss sections that a sync started or ended.
COCKPIT_BUS_TYPE = "exchange_connector/cockpit"


class ExchangeMailbox(models.Model):
    """The Discuss section "Office 365 / Exchange": the user's cockpit over their own mailbox.

    It reads :meth:`exchange_cockpit` and asks for syncs with :meth:`exchange_cockpit_request`;
    the scheduled job does the work and tells the user's browser tabs over the bus when a kind
    starts and ends (:meth:`_exchange_cockpit_notify`), so that the section refreshes itself.
    """

    _inherit = "exchange.mailbox"

    # -- what the section shows ----------------------------------------------

    @api.model
    def exchange_cockpit(self):
        """The current user's mailbox as the Discuss section shows it, in one call.

        ``{"configured": False}`` for a user without a mailbox; otherwise the connection
        (``state``, ``account_type``, ``connected_email``, ``last_error``), ``kinds`` (per kind:
        enabled, requested, running, the last run and its sentence) and ``waiting``, the number
        of mails waiting for a partner choice. Always about the caller.
        """
        summary = self.env["res.users"].exchange_sync_summary()
        if not summary.get("configured"):
            return summary
        user = self.env.user
        mailbox = self.sudo().search([("user_id", "=", user.id)], limit=1)
        enabled = {"mails": user.exchange_sync_mails, "events": user.exchange_sync_events,
                   "contacts": user.exchange_sync_contacts}
        requested = mailbox._exchange_requested_kinds() if mailbox.sync_requested else ()
        Run = self.env["exchange.sync.run"].sudo()
        # The newest run of each kind, in one query (runs are created in the order they start).
        newest = Run.browse(run_id for _kind, run_id in Run._read_group(
            [("user_id", "=", user.id), ("kind", "in", COCKPIT_KINDS)], ["kind"], ["id:max"]))
        last_of = {run.kind: run for run in newest}
        kinds = []
        for kind in COCKPIT_KINDS:
            last = last_of.get(kind, Run)
            kinds.append({
                "kind": kind,
                "enabled": bool(enabled[kind]),
                "requested": bool(mailbox.sync_requested) and (requested is None or kind in requested),
                "running": last.state == "started",
                "last_state": last.state or False,
                "last_done": fields.Datetime.to_string(last.date_done) if last.date_done else False,
                "last_text": self._exchange_cockpit_run_text(last) if last else False,
            })
        summary.update(
            first_sync_pending=bool(mailbox.first_sync_pending) and mailbox.state == "connected",
            account_type=user.exchange_account_type,
            connected_email=mailbox.connected_email or False,
            kinds=kinds,
            waiting=self.env["exchange.mail"].sudo().search_count(
                [("user_id", "=", user.id), ("state", "=", "queued")]),
        )
        return summary

    # -- what its buttons do -------------------------------------------------

    @api.model
    def exchange_cockpit_request(self, kind=None):
        """Ask for a sync of the current user's mailbox, of one kind or (``kind`` None) of all.

        Only the request is written and the scheduled job triggered: the job does the work in
        the background. A request for one kind adds to one already pending; "Sync all" asks
        for every enabled kind.
        """
        user = self.env.user
        if kind is not None and kind not in COCKPIT_KINDS:
            raise UserError(self.env._("Unknown kind of synchronisation: %(kind)s", kind=kind))
        # env.user is a superuser record: the check must run in the caller's own rights.
        self.env["res.users"].sudo(False)._exchange_check_may_use_mailboxes()
        user.sudo()._exchange_mailbox()._exchange_request_sync(kind)
        return self.exchange_cockpit()

    @api.model
    def exchange_cockpit_open_waiting(self):
        """The assignment wizard on the current user's mails that wait for a partner choice."""
        waiting = self.env["exchange.mail"].search(
            [("user_id", "=", self.env.user.id), ("state", "=", "queued")])
        if not waiting:
            raise UserError(self.env._("No mail is waiting for a partner choice."))
        # Run by the web client itself (not as a button's result): it needs the views.
        return dict(waiting.action_assign_partner(), views=[(False, "form")])

    @api.model
    def exchange_cockpit_my_mailbox(self):
        """The current user's preferences opened on the Office 365 / Exchange tab (my mailbox), as the
        user menu opens them: where the section sends its reader to connect again or fix a password."""
        action = self.env["res.users"].action_get()
        view_id = self.env["ir.model.data"]._xmlid_to_res_id(
            "exchange_connector.view_users_form_exchange_mailbox")
        return dict(action, res_id=self.env.uid, views=[(view_id, "form")])

    # -- telling the browser -------------------------------------------------

    def _exchange_cockpit_notify(self, kind, phase):
        """Tell the user's open Discuss sections that ``kind`` is ``phase`` ("running" or "done"), or
        (``kind`` False) that the whole sync ended ("idle").

        Sent with the next commit of the sync (the bus delivers after commit), so that the
        section re-reads what that commit stored.
        """
        self.ensure_one()
        self.user_id._bus_send(COCKPIT_BUS_TYPE, {"kind": kind, "phase": phase})

    def _exchange_sync_kind(self, kind, backend, run):
        manual = getattr(run, "trigger", "cron") == "manual"
        if manual:
            self._exchange_cockpit_notify(kind, "running")
            self._exchange_commit()
        error = super()._exchange_sync_kind(kind, backend, run)
        # A scheduled run that found nothing leaves nothing new to show.
        if manual or getattr(run, "record", run) or error is not None:
            self._exchange_cockpit_notify(kind, "done")
        return error

    def _exchange_sync(self, budget=None, trigger="cron"):
        errors = super()._exchange_sync(budget, trigger)
        if trigger == "manual":
            # The time of the last sync and its error are written after the kinds' "done".
            self._exchange_cockpit_notify(False, "idle")
        return errors

    @api.model
    def _exchange_cockpit_run_text(self, run):
        """The run in one sentence for the Discuss section, e.g. "12 mails imported, 2 waiting for you"."""
        run.ensure_one()
        if run.state == "started":
            return self.env._("Running…")
        if run.state == "failed":
            return self.env._("Failed: %(error)s", error=run.exc_message or run.exc_name or "")
        if run.kind == "mails":
            waiting = self.env["exchange.mail"].sudo().search_count(
                [("run_id", "=", run.id), ("state", "=", "queued")])
            text = self.env._("1 mail imported") if run.count_created == 1 else \
                self.env._("%(count)s mails imported", count=run.count_created)
            if waiting:
                text = self.env._("%(text)s, %(count)s waiting for you", text=text, count=waiting)
        else:
            if run.kind == "events":
                added = self.env._("1 event added") if run.count_created == 1 else \
                    self.env._("%(count)s events added", count=run.count_created)
            else:
                added = self.env._("1 contact added") if run.count_created == 1 else \
                    self.env._("%(count)s contacts added", count=run.count_created)
            text = self.env._("%(text)s, %(updated)s updated, %(deleted)s removed",
                              text=added, updated=run.count_updated, deleted=run.count_deleted)
        if run.count_failed:
            text = self.env._("%(text)s, %(count)s failed", text=text, count=run.count_failed)
        if run.state == "partial":
            text = self.env._("%(text)s (continues at the next run)", text=text)
        return text
