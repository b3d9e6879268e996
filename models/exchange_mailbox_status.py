from markupsafe import Markup

from odoo import api, fields, models, tools

from ..services import AuthenticationError, ConnectionProblem
from .mail_thread import INBOX_NOTICE_CONTEXT

#: Context key set by the buttons of the Office 365 / Exchange tab: its reader needs no directions to it.
ON_TAB_CONTEXT = "exchange_on_tab"
#: The errors whose sentence depends on who reads it: kept by kind, worded again for each reader.
REWORDED_ERRORS = {cls.__name__: cls for cls in (AuthenticationError, ConnectionProblem)}


class ExchangeMailbox(models.Model):
    """What the screens and notices tell about a mailbox, worded for whoever reads them."""

    _inherit = "exchange.mailbox"

    transfer_folders_missing = fields.Boolean(
        copy=False,
        help="The last Test connection found a transfer folder missing: the tab offers to create it.")

    last_error_kind = fields.Char(
        copy=False,
        help="The class and kind of the last error (e.g. ConnectionProblem:tls), so that each reader "
             "gets it in their own words: the user on the tab, in Discuss, an administrator on the form.")

    def write(self, vals):
        if "last_error" in vals and "last_error_kind" not in vals:
            vals = dict(vals, last_error_kind=False)  # a new text, of no known kind
        return super().write(vals)

    @api.model
    def _exchange_error_kind(self, error):
        """``"<class>:<kind>"`` of an error whose wording depends on the reader, else False."""
        for name, cls in REWORDED_ERRORS.items():
            if isinstance(error, cls) and getattr(error, "kind", None):
                return f"{name}:{error.kind}"
        return False

    def _exchange_last_error_for_reader(self, on_tab=False):
        """The last error in the current reader's words: the stored sentence was written for whoever
        caused it (the scheduled job, the user, an administrator testing their connection)."""
        self.ensure_one()
        name, _sep, kind = (self.last_error_kind or "").partition(":")
        if not self.last_error or name not in REWORDED_ERRORS:
            return self.last_error or False
        reader = self.with_context(**{ON_TAB_CONTEXT: on_tab})
        return reader._exchange_describe_error(REWORDED_ERRORS[name]("", kind=kind))

    def _exchange_find_folder(self, backend, folder_kind, path):
        # A sync creates the folders it does not find: nothing is missing any more.
        folder = super()._exchange_find_folder(backend, folder_kind, path)
        if self.transfer_folders_missing:
            with self._exchange_page():
                self.transfer_folders_missing = False
        return folder

    def _exchange_notice_reader_is_owner(self):
        """Whether the text is for the mailbox's user: theirs to read, or stored by the scheduled job
        (as superuser) for the tab, where they read it. An administrator reads about another user."""
        user = self.env.user
        return user == self.user_id or user._is_superuser() \
            or bool(self.env.context.get("exchange_notice_to_owner"))

    def _exchange_where_to_fix(self):
        """Where the mailbox is fixed: nothing for its user already on the tab; for an administrator
        (even on the user's form) where that user fixes it."""
        if self._exchange_notice_reader_is_owner():
            if self.env.context.get(ON_TAB_CONTEXT):
                return ""
            return self.env._(" in your preferences (My Preferences, tab Office 365 / Exchange)")
        return self.env._(" in their preferences (tab Office 365 / Exchange)")

    def _exchange_lockout_sentence(self):
        """Why the connector no longer uses the stored credentials, and what to do, for this reader.

        An Exchange (on-premises) user corrects a password: they are never told to "reconnect".
        An administrator reading about another user's mailbox learns what that user must do.
        """
        self.ensure_one()
        user = self.user_id.sudo()
        where = self._exchange_where_to_fix()
        if self._exchange_notice_reader_is_owner():
            if user.exchange_account_type == "ews":
                return self.env._(
                    "The connector stopped using your Exchange password after repeated refused sign-ins, "
                    "so that Exchange does not lock your account. Correct the user name or "
                    "password%(where)s, then click Test connection.", where=where)
            return self.env._(
                "Microsoft refused the sign-in of your Office 365 mailbox several times: the connector "
                "stopped using it. Click Connect%(where)s and sign in with Microsoft again.", where=where)
        if user.exchange_account_type == "ews":
            return self.env._(
                "The connector stopped using the Exchange password of %(user)s after repeated refused "
                "sign-ins, so that Exchange does not lock the account. %(user)s must correct the user "
                "name or password%(where)s, or an administrator enters the right one on their user form; "
                "the synchronisation then resumes.", user=user.name, where=where)
        return self.env._(
            "Microsoft refused the sign-in of the Office 365 mailbox of %(user)s several times: the "
            "connector stopped using it. Only %(user)s can fix it: they must click Connect%(where)s and "
            "sign in with Microsoft again.", user=user.name, where=where)

    def _exchange_notify_user(self, error, situation):
        """Tell the mailbox's user, in their Odoo inbox whatever their notification preference, and
        by e-mail too when a mail server is configured: what happened, what to do, the details."""
        self.ensure_one()
        user = self.user_id.sudo()
        owner_view = self.with_context(exchange_notice_to_owner=True, **{ON_TAB_CONTEXT: False})
        if user.exchange_account_type == "ews":
            subject = self.env._("Exchange: your mailbox is not synchronised, check your password")
        else:
            subject = self.env._("Office 365: your mailbox is not synchronised, connect it again")
        what_to_do = owner_view._exchange_lockout_sentence() if self.state == "auth_failed" \
            else owner_view._exchange_error_text(error)
        body = Markup("<p>%s</p><p>%s</p><details><summary>%s</summary><pre>%s</pre></details>") % (
            situation, what_to_do, self.env._("Details"), str(error))
        self.env["mail.thread"].sudo().with_context(**{INBOX_NOTICE_CONTEXT: True}).message_notify(
            model="res.users",
            res_id=user.id,
            partner_ids=user.partner_id.ids,
            author_id=self.env.ref("base.partner_root").id,
            subject=subject,
            body=body,
        )
        if user.email and self._exchange_mail_server_configured():
            self.env["mail.mail"].sudo().create({
                "subject": subject,
                "body_html": body,
                "email_to": user.email_formatted,
                "recipient_ids": [],
                "auto_delete": True,
            })

    def _exchange_mail_server_configured(self):
        """Whether Odoo can send e-mail: an outgoing mail server, or an SMTP host in Odoo's configuration."""
        if self.env["ir.mail_server"].sudo().search_count([]):
            return True
        return tools.config.get("smtp_server") not in (None, "", False, "localhost")
