from odoo import api, models


class MailAliasDomain(models.Model):
    _inherit = "mail.alias.domain"

    @api.model
    def _find_aliases(self, email_list):
        """Remember the answers in the ``exchange_alias_cache`` dict of the context, when there is one.

        ``mail.thread.message_parse`` asks for the recipients of every mail (two searches each);
        the mail import parses a page of mails that mostly share them, under one cache per page.
        """
        cache = self.env.context.get("exchange_alias_cache")
        if cache is None:
            return super()._find_aliases(email_list)
        unknown = [address for address in dict.fromkeys(email_list) if address not in cache]
        if unknown:
            aliases = set(super()._find_aliases(unknown))
            cache.update((address, address in aliases) for address in unknown)
        return [address for address in email_list if cache.get(address)]
