from odoo import models

#: Context key of the connector's notices: they go to the Odoo inbox, whatever the user's preference.
INBOX_NOTICE_CONTEXT = "exchange_connector_inbox_notice"
#: Context key of a mail import run's cache (a dict): what does not change while mails come in,
#: such as the company's own addresses and the alias domains, looked up once per run.
IMPORT_CACHE_CONTEXT = "exchange_import_cache"


class MailThread(models.AbstractModel):
    _inherit = "mail.thread"

    def _notify_get_recipients(self, message, msg_vals=False, **kwargs):
        recipients = super()._notify_get_recipients(message, msg_vals=msg_vals, **kwargs)
        if self.env.context.get(INBOX_NOTICE_CONTEXT):
            # A paused synchronisation must be seen in Odoo even by users who chose "by e-mail",
            # which no mail server may deliver: the connector e-mails them itself when it can.
            for recipient in recipients:
                if recipient.get("uid") and recipient.get("notif") == "email":
                    recipient["notif"] = "inbox"
        return recipients
