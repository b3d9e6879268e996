from odoo import api, models

from .mail_thread import IMPORT_CACHE_CONTEXT


class MailAliasDomain(models.Model):
    _inherit = "mail.alias.domain"

    @api.model
    def search(self, domain, offset=0, limit=None, order=None):
        """Every alias domain (``search([])``) read once per mail import run, under its cache.

        Odoo's parser asks for all of them for every mail it parses: its bounce test and its
        alias lookups. They do not change while a run imports its mails.
        """
        cache = self.env.context.get(IMPORT_CACHE_CONTEXT)
        if cache is None or domain or offset or limit or order:
            return super().search(domain, offset=offset, limit=limit, order=order)
        if "alias_domains" not in cache:
            cache["alias_domains"] = super().search(domain).ids
        return self.browse(cache["alias_domains"])

    @api.model
    def _find_aliases(self, email_list):
        """Remember the answers for the run, under the mail import's cache when there is one.

        ``mail.thread.message_parse`` asks for the recipients of every mail; the mails of a run
        mostly share them.
        """
        cache = self.env.context.get(IMPORT_CACHE_CONTEXT)
        if cache is None:
            return super()._find_aliases(email_list)
        known = cache.setdefault("aliases", {})
        unknown = [address for address in dict.fromkeys(email_list) if address not in known]
        if unknown:
            aliases = set(super()._find_aliases(unknown))
            known.update((address, address in aliases) for address in unknown)
        return [address for address in email_list if known.get(address)]
