from odoo import api, models
from odoo.tools.mail import email_normalize, email_split

#: Context key of the connector's notices: they go to the Odoo inbox, whatever the user's preference.
INBOX_NOTICE_CONTEXT = "exchange_connector_inbox_notice"
#: Context key of a mail import run's cache (a dict): what does not change while mails come in,
#: such as the company's own addresses and the bounce aliases, looked up once per run.
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

    @api.model
    def _detect_is_bounce(self, message, message_dict):
        cache = self.env.context.get(IMPORT_CACHE_CONTEXT)
        if cache is None:
            return super()._detect_is_bounce(message, message_dict)
        # Odoo's test, with the bounce aliases searched once per import run instead of once per
        # mail (``message_parse`` asks for every mail: most of the import's queries otherwise).
        if "bounce_aliases" not in cache:
            cache["bounce_aliases"] = self.env["mail.alias.domain"].sudo().search(
                [("name", "!=", False)]).mapped("bounce_email")
        bounce_aliases = cache["bounce_aliases"]
        email_to_list = [email_normalize(e) or e for e in email_split(message_dict["to"])]
        if bounce_aliases and any(email in bounce_aliases for email in email_to_list):
            return True
        email_from_localpart = (email_split(message_dict["email_from"]) or [""])[0].split("@", 1)[0].lower()
        if email_from_localpart == "mailer-daemon":
            return True
        content_type = message.get_content_type()
        return content_type == "multipart/report" or "report-type=delivery-status" in content_type
