import base64
import logging

from odoo import models

from ..services import ExchangeError
from ..services.addresses import parse_address_header
from ..services.errors import ItemNotFound

_logger = logging.getLogger(__name__)

#: MIME sources fetched per bulk call: a page of the listing, bounded in bytes to bound memory.
FETCH_COUNT = 100
FETCH_BYTES = 20 * 1024 * 1024
#: Above this many addresses (a mass mailing), unknown and ambiguous ones are left out, not asked about.
MAX_ASKED_ADDRESSES = 50
#: Failed mails retried per run.
RETRY_BATCH = 100


def fetch_chunks(items):
    """``items`` (RemoteMessage) in groups of at most FETCH_COUNT mails and about FETCH_BYTES."""
    chunk, size = [], 0
    for item in items:
        item_size = item.size or 0
        if chunk and (len(chunk) >= FETCH_COUNT or size + item_size > FETCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


class ExchangeMailbox(models.Model):
    """Mail import: the transfer folders' mails onto the chatters, each real mail once per document.

    ``_sync_mails`` lists the folders page by page (base class); each page comes to
    :meth:`_import_message_page`, which fetches the new mails' MIME in bulk, parses it with
    Odoo's own parser, routes it (a reply to a known thread goes to its document, otherwise the
    sender's or the recipients' partners) and posts it without notifying anyone. Mails whose
    partner is uncertain wait in ``exchange.mail`` for the assignment wizard; mails that fail are
    retried by the next runs and parked after three tries. Deleting imported mails from the
    folder happens only once what stored them is committed.
    """

    _inherit = "exchange.mailbox"

    def _sync_mails(self, backend, run):
        # The page hook has no backend argument; the import needs it to fetch MIME in bulk.
        mailbox = self.with_context(exchange_mail_backend=backend)
        mailbox._exchange_delete_imported(backend)
        mailbox._exchange_retry_failed(backend, run)
        super(ExchangeMailbox, mailbox)._sync_mails(backend, run)
        # Every page is committed at this point: what they stored may leave the folder now.
        mailbox._exchange_delete_imported(backend)

    def _import_message_page(self, folder_kind, page, run):
        backend = self.env.context.get("exchange_mail_backend")
        if backend is None:
            return super()._import_message_page(folder_kind, page, run)
        user = self.user_id
        items = list({item.id: item for item in page.items}.values())
        known = self._exchange_known_mails([item.id for item in items])
        to_delete = self.env["exchange.mail"]
        fresh = []
        for item in items:
            mail = known.get(item.id)
            if mail is None:
                fresh.append(item)
            elif mail.state in ("posted", "ignored") and user.exchange_delete_after_import:
                # Stored by an earlier run that did not get to delete it (or the listing restarted).
                to_delete |= mail
        if to_delete:
            to_delete.filtered(lambda mail: not mail.delete_pending).write({"delete_pending": True})
        skipped = len(items) - len(fresh)
        for chunk in fetch_chunks(fresh):
            mimes = backend.get_mimes([item.id for item in chunk])
            entries = []
            failures = []
            for item in chunk:
                mime = mimes.get(item.id)
                if mime is None or isinstance(mime, ItemNotFound):
                    skipped += 1  # gone meanwhile: the listing reports it removed
                    continue
                entries.append((item, mime))
            mails = self._exchange_new_mails(folder_kind, [item for item, _mime in entries], run)
            pairs = []
            for (_item, mime), mail in zip(entries, mails, strict=True):
                if isinstance(mime, ExchangeError):
                    failures.append((mail, None, mime))
                else:
                    pairs.append((mail, mime))
            for mail, mime, error in failures:
                mail._exchange_failed(mime, error, run)
            self._exchange_import_mails(pairs, run)
        if skipped:
            run._count(skipped=skipped)

    # -- records of the folder's mails -------------------------------------------

    def _exchange_known_mails(self, remote_ids):
        """``{remote id: exchange.mail}`` of the mails of this mailbox already seen."""
        if not remote_ids:
            return {}
        bindings = self.env["exchange.binding"].sudo().search([
            ("user_id", "=", self.user_id.id), ("kind", "=", "message"),
            ("res_model", "=", "exchange.mail"), ("remote_id", "in", remote_ids),
        ])
        mails = self.env["exchange.mail"].sudo().browse(bindings.mapped("res_id")).exists()
        by_id = {mail.id: mail for mail in mails}
        return {b.remote_id: by_id[b.res_id] for b in bindings if b.res_id in by_id}

    def _exchange_new_mails(self, folder_kind, items, run):
        """Create the records of new mailbox items, bound to their remote ids, in two creates."""
        if not items:
            return self.env["exchange.mail"].sudo()
        user = self.user_id
        mails = self.env["exchange.mail"].sudo().create([{
            "user_id": user.id,
            "folder_kind": folder_kind,
            "state": "failed",  # until it is imported: a crash in between leaves it to the retries
            "run_id": run.id,
            "message_key": item.internet_message_id or False,
            "subject": (item.subject or "")[:1000],
            "email_from": item.from_.address if item.from_ else False,
            "date": item.sent.replace(tzinfo=None) if item.sent else False,
        } for item in items])
        self.env["exchange.binding"].sudo().create([{
            "user_id": user.id, "kind": "message", "res_model": "exchange.mail", "res_id": mail.id,
            "remote_id": item.id, "change_key": item.change_key or False,
            "remote_uid": item.internet_message_id or False,
        } for item, mail in zip(items, mails, strict=True)])
        return mails

    def _exchange_remote_ids(self, mails):
        bindings = self.env["exchange.binding"].sudo().search([
            ("user_id", "=", self.user_id.id), ("kind", "=", "message"),
            ("res_model", "=", "exchange.mail"), ("res_id", "in", mails.ids),
        ])
        return {b.res_id: b.remote_id for b in bindings}

    # -- import -------------------------------------------------------------------

    def _exchange_import_mails(self, pairs, run):
        """Parse, route and post ``[(exchange.mail, mime bytes)]``; each mail's failure is its own.

        Lookups are made once for all the mails (thread references, partner addresses, the
        company's own addresses); each mail is then stored in a savepoint, so that a bad one is
        recorded as failed while the others are kept.
        """
        Mail = self.env["exchange.mail"].sudo()
        parsed_mails = []
        for mail, mime in pairs:
            try:
                parsed = Mail._exchange_parse(mime)
            except Exception as error:  # noqa: BLE001 - any unreadable mail is one failed mail
                mail._exchange_failed(mime, error, run)
                continue
            mail.write(dict(Mail._exchange_envelope(parsed), run_id=run.id))
            parsed_mails.append((mail, mime, parsed))
        if not parsed_mails:
            return
        parents = self._exchange_thread_parents(
            {reference for _mail, _mime, parsed in parsed_mails for reference in parsed["thread_references"]})
        company = self.env["res.partner"]._exchange_company_addresses()
        addresses = set()
        for mail, _mime, parsed in parsed_mails:
            addresses.update(parsed["from_addresses"][:1])
            if mail.folder_kind == "out":
                addresses.update(parsed["recipient_addresses"])
        matches = self.env["res.partner"].sudo()._exchange_match_addresses(addresses - company, self.user_id)
        counts = {"created": 0, "skipped": 0}
        for mail, mime, parsed in parsed_mails:
            try:
                with self.env.cr.savepoint():
                    outcome = self._exchange_route(mail, mime, parsed, parents, matches, company)
            except Exception as error:  # noqa: BLE001 - one bad mail never stops the others
                mail._exchange_failed(mime, error, run)
                continue
            counts["created" if outcome == "posted" else "skipped"] += 1
        run._count(**counts)

    def _exchange_thread_parents(self, references):
        """``{Message-ID: mail.message}`` of the messages of Odoo documents among ``references``."""
        if not references:
            return {}
        messages = self.env["mail.message"].sudo().search([
            ("message_id", "in", list(references)), ("model", "!=", False), ("res_id", "!=", 0),
        ], order="id desc")
        parents = {}
        for message in messages:
            parents.setdefault(message.message_id, message)
        return parents

    def _exchange_route(self, mail, mime, parsed, parents, matches, company):
        """Post ``mail`` where it belongs, queue it, or ignore it; return its new state."""
        user = self.user_id
        empty = self.env["res.partner"].sudo()
        sender = next(iter(parsed["from_addresses"]), None)
        if mail.folder_kind == "out":
            author = user.partner_id
        else:
            author = matches.get(sender, empty) if sender else empty
            author = author if len(author) == 1 else empty
        for reference in parsed["thread_references"]:
            parent = parents.get(reference)
            if parent and self.env[parent.model].sudo().browse(parent.res_id).exists():
                messages = mail._exchange_post(parsed, [(parent.model, parent.res_id)], author)
                mail._exchange_mark_posted(messages)
                return "posted"
        if mail.folder_kind == "in":
            concerned = [sender] if sender else []
        else:
            concerned = parsed["recipient_addresses"]
        concerned = [address for address in concerned if address not in company]
        if not concerned:
            if mail.folder_kind == "in" and not sender:
                reason = self.env._("The mail has no sender address (From).")
            else:
                reason = self.env._("The mail concerns only the company's own addresses.")
            mail._exchange_mark_ignored(reason)
            return "ignored"
        certain, ambiguous, unknown = empty, [], []
        for address in concerned:
            partners = matches.get(address, empty)
            if len(partners) == 1:
                certain |= partners
            elif partners:
                ambiguous.append(address)
            else:
                unknown.append(address)
        policy = user.company_id.exchange_unknown_address or "queue"
        if len(concerned) > MAX_ASKED_ADDRESSES:
            # A mass mailing: filed on the partners it certainly reaches, nobody asked about the rest.
            ambiguous, unknown = [], []
        if unknown and policy == "create":
            certain |= self._exchange_create_partners(unknown, parsed)
            unknown = []
        elif unknown and policy == "ignore":
            unknown = []
        if ambiguous or unknown:
            reasons = []
            if ambiguous:
                reasons.append(self.env._(
                    "Several partners have %(addresses)s.", addresses=", ".join(ambiguous)))
            if unknown:
                reasons.append(self.env._("No partner has %(addresses)s.", addresses=", ".join(unknown)))
            mail.write({
                "state": "queued", "reason": " ".join(reasons), "mime": base64.b64encode(mime),
                "pending_addresses": ", ".join(concerned), "partner_ids": [(6, 0, certain.ids)],
            })
            return "queued"
        if not certain:
            mail._exchange_mark_ignored(self.env._(
                "No partner has %(addresses)s.", addresses=", ".join(concerned)))
            return "ignored"
        messages = mail._exchange_post(parsed, [("res.partner", partner.id) for partner in certain], author)
        mail._exchange_mark_posted(messages, certain)
        return "posted"

    def _exchange_create_partners(self, addresses, parsed):
        """New partners for unknown ``addresses``, under the company partner of their domain if one exists."""
        names = {}
        for header in ("email_from", "to", "cc"):
            for remote in parse_address_header(parsed.get(header) or ""):
                names.setdefault(remote.address, remote.name)
        Partner = self.env["res.partner"].sudo()
        created = Partner.browse()
        for address in addresses:
            domain = address.rsplit("@", 1)[1]
            company = Partner.search([
                ("is_company", "=", True),
                "|", ("email_normalized", "=like", f"%@{domain}"), ("website", "=ilike", f"%{domain}%"),
            ], limit=1)
            created |= Partner.create({
                "name": names.get(address) or address,
                "email": address,
                "parent_id": company.id or False,
                "company_id": False,
            })
        return created

    # -- retries and deletion -----------------------------------------------------

    def _exchange_retry_failed(self, backend, run):
        """Import again the mails that failed in earlier runs (their MIME fetched again if missing)."""
        failed = self.env["exchange.mail"].sudo().search([
            ("user_id", "=", self.user_id.id), ("state", "=", "failed"), ("run_id", "!=", run.id),
        ], limit=RETRY_BATCH, order="id")
        if not failed:
            return
        missing = failed.filtered(lambda mail: not mail.mime)
        remote_ids = self._exchange_remote_ids(missing)
        fetched = backend.get_mimes(list(remote_ids.values())) if remote_ids else {}
        with self._exchange_page():
            pairs = []
            for mail in failed:
                if mail.mime:
                    pairs.append((mail, mail._exchange_source()))
                    continue
                mime = fetched.get(remote_ids.get(mail.id))
                if isinstance(mime, bytes):
                    pairs.append((mail, mime))
                elif isinstance(mime, ItemNotFound) or mime is None:
                    mail.write({"state": "parked", "reason": self.env._(
                        "The mail left the transfer folder before it could be imported.")})
                else:
                    mail._exchange_failed(None, mime, run)
            self._exchange_import_mails(pairs, run)

    def _exchange_delete_imported(self, backend):
        """Remove from the transfer folders the mails whose import is committed (delete after import)."""
        mails = self.env["exchange.mail"].sudo().search([
            ("user_id", "=", self.user_id.id), ("delete_pending", "=", True),
        ])
        if not mails:
            return
        for remote_id in self._exchange_remote_ids(mails).values():
            backend.delete_message(remote_id)
        with self._exchange_page():
            mails.write({"delete_pending": False})
