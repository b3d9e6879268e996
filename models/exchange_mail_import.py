import base64
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timezone
from typing import Optional

from odoo import Command, fields, models
from odoo.fields import Domain

from ..services import ExchangeError
from ..services.addresses import parse_address_header
from ..services.backend import MAILBOX_WIDE_ERRORS, RemoteMessage
from ..services.errors import ItemNotFound
from .exchange_mail import MAX_TRIES, STREAM_BYTES
from .exchange_mailbox import PendingRun
from .mail_thread import IMPORT_CACHE_CONTEXT

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


@dataclass
class MailToImport:
    """One mail on its way in: a new mailbox item, or a known ``exchange.mail`` tried again."""

    folder_kind: str
    source: object  # MIME bytes, or the ExchangeError met fetching it
    item: Optional[RemoteMessage] = None
    mail: object = None  # exchange.mail
    parsed: Optional[dict] = None


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
        # The page hook has no backend argument; the import needs it to fetch MIME in bulk. The
        # run's cache keeps what does not change meanwhile (own addresses, aliases) for all pages.
        mailbox = self.with_context(exchange_mail_backend=backend, **{IMPORT_CACHE_CONTEXT: {}})
        mailbox._exchange_delete_imported(backend)
        mailbox._exchange_retry_failed(backend, run)
        result = super(ExchangeMailbox, mailbox)._sync_mails(backend, run)
        # Every page is committed at this point: what they stored may leave the folder now.
        mailbox._exchange_delete_imported(backend)
        return result

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
        # A big mail (its size known from the listing) is fetched alone, streamed into a file,
        # and imported alone: a page never holds several of them, nor one twice in memory.
        big = [item for item in fresh if (item.size or 0) > STREAM_BYTES]
        for item in big:
            try:
                source = backend.get_mime_file(item.id)
            except ItemNotFound:
                skipped += 1  # gone meanwhile: the listing reports it removed
                continue
            except ExchangeError as error:
                if isinstance(error, MAILBOX_WIDE_ERRORS):
                    raise  # the run stops here; the next one lists this page again
                source = error
            try:
                self._exchange_import_mails([MailToImport(folder_kind, source, item=item)], run)
            finally:
                if not isinstance(source, ExchangeError):
                    source.close()
        fresh = [item for item in fresh if (item.size or 0) <= STREAM_BYTES]
        for chunk in fetch_chunks(fresh):
            sources = backend.get_mimes([item.id for item in chunk])
            batch = []
            for item in chunk:
                source = sources.get(item.id)
                if source is None or isinstance(source, ItemNotFound):
                    skipped += 1  # gone meanwhile: the listing reports it removed
                    continue
                batch.append(MailToImport(folder_kind, source, item=item))
            self._exchange_import_mails(batch, run)
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

    def _exchange_remote_ids(self, mails):
        bindings = self.env["exchange.binding"].sudo().search([
            ("user_id", "=", self.user_id.id), ("kind", "=", "message"),
            ("res_model", "=", "exchange.mail"), ("res_id", "in", mails.ids),
        ])
        return {b.res_id: b.remote_id for b in bindings}

    # -- import -------------------------------------------------------------------

    def _exchange_import_mails(self, batch, run):
        """Parse, route, post and record the :class:`MailToImport` of ``batch``.

        The lookups are made once for the batch (thread references, Message-IDs, partner
        addresses, the company's own addresses) and the chatter messages created in one go.
        A mail that cannot be read is recorded as failed; when storing the batch fails, it is
        stored again mail by mail, so that a bad mail fails alone while the others are kept.
        """
        # Odoo's parser looks up the alias domains and the recipients' aliases for every mail: once
        # per run (or per batch, outside a run) under the import's cache.
        if IMPORT_CACHE_CONTEXT not in self.env.context:
            return self.with_context(**{IMPORT_CACHE_CONTEXT: {}})._exchange_import_mails(batch, run)
        Mail = self.env["exchange.mail"].sudo()
        outcomes = []
        readable = []
        for entry in batch:
            if isinstance(entry.source, ExchangeError):
                outcomes.append((entry, self._exchange_failure(entry, entry.source)))
                continue
            try:
                entry.parsed = Mail._exchange_parse(entry.source)
            except Exception as error:  # noqa: BLE001 - any unreadable mail is one failed mail
                outcomes.append((entry, self._exchange_failure(entry, error)))
                continue
            if not entry.parsed.get("date") and entry.item and (entry.item.sent or entry.item.received):
                # No (readable) Date header: the date Exchange gives the mail is the next best thing.
                when = (entry.item.sent or entry.item.received).astimezone(timezone.utc).replace(tzinfo=None)
                entry.parsed["date"] = fields.Datetime.to_string(when)
            readable.append(entry)
        if readable:
            try:
                with self.env.cr.savepoint():
                    outcomes += self._exchange_route_batch(readable)
            except Exception as error:  # noqa: BLE001 - one bad mail never stops the others
                if len(readable) == 1:
                    outcomes.append((readable[0], self._exchange_failure(readable[0], error)))
                else:
                    for entry in readable:
                        try:
                            with self.env.cr.savepoint():
                                outcomes += self._exchange_route_batch([entry])
                        except Exception as single_error:  # noqa: BLE001 - recorded on the mail
                            outcomes.append((entry, self._exchange_failure(entry, single_error)))
        try:
            self._exchange_record_outcomes(outcomes, run)
        finally:
            for entry in batch:
                if entry.parsed and entry.parsed.get("spooled"):
                    entry.parsed["spooled"].close()

    def _exchange_failure(self, entry, error):
        """The values of a failed try: retried by the next runs, parked at the third failure."""
        tries = (entry.mail.tries if entry.mail else 0) + 1
        values = {
            "state": "parked" if tries >= MAX_TRIES else "failed",
            "tries": tries,
            "reason": f"{type(error).__name__}: {error}"[:2000],
        }
        if not isinstance(entry.source, ExchangeError) and not (entry.mail and entry.mail.mime):
            values["mime"] = self._exchange_mime_value(entry.source)
        _logger.warning("Exchange mail %s of user %s not imported (try %s): %s",
                        entry.item.internet_message_id if entry.item else entry.mail.message_key,
                        self.user_id.login, tries, values["reason"])
        return values

    @staticmethod
    def _exchange_mime_value(source):
        """The ``mime`` value of a source kept for later: base64 of bytes; a big mail's file as it is."""
        return base64.b64encode(source) if isinstance(source, bytes) else source

    def _exchange_record_outcomes(self, outcomes, run):
        """Create the records of the new mails (bound to their remote ids) and update the known ones.

        A big mail's source (a file) is stored once the record exists, from the file.
        """
        user = self.user_id
        Mail = self.env["exchange.mail"].sudo()
        counts = {"created": 0, "skipped": 0, "failed": 0}
        new, files = [], []
        for entry, values in outcomes:
            values = dict(values, run_id=run.id)
            if values.get("mime") is not None and not isinstance(values["mime"], (bytes, str, bool)):
                files.append((entry, values.pop("mime")))
            if entry.parsed is not None:
                values = dict(Mail._exchange_envelope(entry.parsed), **values)
            if values["state"] == "posted":
                counts["created"] += 1
            elif values["state"] in ("failed", "parked"):
                counts["failed"] += 1
                values["failed_run_ids"] = [Command.link(run.id)]
            else:
                counts["skipped"] += 1
            if entry.mail:
                entry.mail.write(values)
                continue
            item = entry.item
            values.setdefault("message_key", item.internet_message_id or False)
            values.setdefault("subject", (item.subject or "")[:1000])
            values.setdefault("email_from", item.from_.address if item.from_ else False)
            values.setdefault("date", item.sent.replace(tzinfo=None) if item.sent else False)
            new.append((item, dict(values, user_id=user.id, folder_kind=entry.folder_kind)))
        if new:
            mails = Mail.create([values for _item, values in new])
            self.env["exchange.binding"].sudo().create([{
                "user_id": user.id, "kind": "message", "res_model": "exchange.mail", "res_id": mail.id,
                "remote_id": item.id, "change_key": item.change_key or False,
                "remote_uid": item.internet_message_id or False,
            } for (item, _values), mail in zip(new, mails, strict=True)])
            created = {id(item): mail for (item, _values), mail in zip(new, mails, strict=True)}
        for entry, source in files:
            (entry.mail or created[id(entry.item)])._exchange_store_mime(source)
        run._count(**{name: count for name, count in counts.items() if count})

    def _exchange_route_batch(self, entries):
        """Route the parsed ``entries``, post those that have a place; ``[(entry, exchange.mail values)]``."""
        Mail = self.env["exchange.mail"].sudo()
        user = self.user_id
        references = {reference for entry in entries for reference in entry.parsed["thread_references"]}
        parents = self._exchange_thread_parents(references)
        company = self._exchange_company_addresses()
        addresses = set()
        for entry in entries:
            addresses.update(entry.parsed["from_addresses"][:1])
            if entry.folder_kind == "out":
                addresses.update(entry.parsed["recipient_addresses"])
        matches = self.env["res.partner"].sudo()._exchange_match_addresses(addresses - company, user)
        if (user.company_id.exchange_unknown_address or "queue") == "create":
            names = self._exchange_partners_to_create(entries, parents, matches, company)
            if names:
                # Before routing: the new partners author the mails, and are created once per batch.
                matches.update(self._exchange_create_partners(names))
        outcomes, posts = [], []
        for entry in entries:
            values, post = self._exchange_route(entry, parents, matches, company)
            outcomes.append((entry, values))
            if post:
                posts.append((entry, values, post))
        messages = Mail._exchange_post_batch(
            user, [(entry.parsed, targets, author) for entry, _values, (targets, author, _partners) in posts])
        for (_entry, values, (_targets, _author, partners)), posted in zip(posts, messages, strict=True):
            values.update(Mail._exchange_posted_values(user, posted, partners))
        return outcomes

    def _exchange_company_addresses(self):
        """The company's own addresses, once per run (or per call outside a run)."""
        cache = self.env.context.get(IMPORT_CACHE_CONTEXT)
        if cache is None:
            return self.env["res.partner"]._exchange_company_addresses()
        if "company_addresses" not in cache:
            cache["company_addresses"] = self.env["res.partner"]._exchange_company_addresses()
        return cache["company_addresses"]

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
        # Whether their documents still exist: one query per model for the batch, not one per mail.
        documents = defaultdict(set)
        for message in parents.values():
            documents[message.model].add(message.res_id)
        existing = set()
        for model, res_ids in documents.items():
            if model in self.env:
                found = self.env[model].sudo().browse(res_ids).exists()
                existing.update((model, res_id) for res_id in found.ids)
        return {key: parent for key, parent in parents.items() if (parent.model, parent.res_id) in existing}

    def _exchange_route(self, entry, parents, matches, company):
        """Where the mail goes: ``(values, post)`` with ``post`` = ``(targets, author, partners)`` or None.

        A reply to a message of an Odoo document goes to that document; otherwise the partners
        are the sender's (incoming folder) or the recipients' (outgoing folder). Uncertain
        partners make the mail wait in the queue; no partner at all has it ignored.
        """
        user = self.user_id
        parsed = entry.parsed
        empty = self.env["res.partner"].sudo()
        sender = next(iter(parsed["from_addresses"]), None)
        if entry.folder_kind == "out":
            author = user.partner_id
        else:
            author = matches.get(sender, empty) if sender else empty
            author = author if len(author) == 1 else empty
        for reference in parsed["thread_references"]:
            parent = parents.get(reference)
            if parent:
                return {}, ([(parent.model, parent.res_id)], author, None)
        concerned = self._exchange_concerned(entry, company)
        if not concerned:
            if entry.folder_kind == "in" and not sender:
                reason = self.env._("The mail has no sender address (From).")
            else:
                reason = self.env._("The mail concerns only the company's own addresses.")
            return self._exchange_ignored_values(reason), None
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
        if unknown and policy == "ignore":
            unknown = []
        if ambiguous or unknown:
            reasons = []
            if ambiguous:
                reasons.append(self.env._(
                    "Several partners have %(addresses)s.", addresses=", ".join(ambiguous)))
            if unknown:
                reasons.append(self.env._("No partner has %(addresses)s.", addresses=", ".join(unknown)))
            values = {
                "state": "queued", "reason": " ".join(reasons), "pending_addresses": ", ".join(concerned),
                "partner_ids": [(6, 0, certain.ids)],
            }
            if not (entry.mail and entry.mail.mime):
                values["mime"] = self._exchange_mime_value(entry.source)
            return values, None
        if not certain:
            return self._exchange_ignored_values(self.env._(
                "No partner has %(addresses)s.", addresses=", ".join(concerned))), None
        return {}, ([("res.partner", partner.id) for partner in certain], author, certain)

    @staticmethod
    def _exchange_concerned(entry, company):
        """The addresses a mail is filed by: the sender's (incoming), the recipients' (outgoing); not ours."""
        parsed = entry.parsed
        if entry.folder_kind == "in":
            concerned = parsed["from_addresses"][:1]
        else:
            concerned = parsed["recipient_addresses"]
        return [address for address in concerned if address not in company]

    def _exchange_ignored_values(self, reason):
        values = {"state": "ignored", "reason": reason, "mime": False}
        if self.user_id.exchange_delete_after_import:
            values["delete_pending"] = True
        return values

    def _exchange_partners_to_create(self, entries, parents, matches, company):
        """``{address: name}`` of the unknown addresses the batch's mails are to be filed by.

        The same mails as :meth:`_exchange_route` would file by them: not replies to a known
        thread, not mass mailings.
        """
        names = {}
        for entry in entries:
            if any(reference in parents for reference in entry.parsed["thread_references"]):
                continue
            concerned = self._exchange_concerned(entry, company)
            unknown = [address for address in concerned if not matches.get(address)]
            if not unknown or len(concerned) > MAX_ASKED_ADDRESSES:
                continue
            named = {}
            for header in ("email_from", "to", "cc"):
                for remote in parse_address_header(entry.parsed.get(header) or ""):
                    named.setdefault(remote.address, remote.name)
            for address in unknown:
                # Named as the first mail of the batch that has it says (as mail by mail would).
                names.setdefault(address, named.get(address) or address)
        return names

    def _exchange_create_partners(self, names):
        """New partners for the unknown addresses of ``names`` (``{address: name}``), in one go.

        Each goes under the company partner of its domain if one exists. They are created quietly
        (no follower, no log message): the import that makes them notifies nobody.
        """
        Partner = self.env["res.partner"].sudo()
        domains = sorted({address.rsplit("@", 1)[1] for address in names})
        candidates = Partner.search(Domain("is_company", "=", True) & Domain.OR(
            Domain("email_normalized", "=like", f"%@{domain}") | Domain("website", "=ilike", f"%{domain}%")
            for domain in domains))
        company_of = {}
        for domain in domains:
            # The first in the partners' order, as a ``search(..., limit=1)`` per domain would give.
            company_of[domain] = next((
                partner for partner in candidates
                if (partner.email_normalized or "").endswith(f"@{domain}")
                or domain.lower() in (partner.website or "").lower()), Partner)
        quiet = Partner.with_context(
            tracking_disable=True, mail_create_nolog=True, mail_create_nosubscribe=True)
        created = quiet.create([{
            "name": name,
            "email": address,
            "parent_id": company_of[address.rsplit("@", 1)[1]].id or False,
            "company_id": False,
        } for address, name in names.items()])
        return dict(zip(names, created.with_env(Partner.env), strict=True))

    # -- retries and deletion -----------------------------------------------------

    def _exchange_retry_failed(self, backend, run):
        """Import again the mails that failed in earlier runs (their MIME fetched again if missing).

        Called before this run lists anything: every failed mail is one of an earlier run.
        """
        # bin_size: whether a mail has its source is asked, not the source itself.
        failed = self.env["exchange.mail"].sudo().with_context(bin_size=True).search([
            ("user_id", "=", self.user_id.id), ("state", "=", "failed"),
        ], limit=RETRY_BATCH, order="id")
        if not failed:
            return
        if isinstance(run, PendingRun):
            run = self._exchange_start_run(run)
        missing = failed.filtered(lambda mail: not mail.mime)
        remote_ids = self._exchange_remote_ids(missing)
        fetched = backend.get_mimes(list(remote_ids.values())) if remote_ids else {}
        with self._exchange_page():
            batch = []
            for mail in failed:
                source = mail._exchange_source() if mail.mime else fetched.get(remote_ids.get(mail.id))
                if source is None or isinstance(source, ItemNotFound):
                    mail.write({"state": "parked", "reason": self.env._(
                        "The mail left the transfer folder before it could be imported.")})
                    continue
                batch.append(MailToImport(mail.folder_kind, source, mail=mail))
            self._exchange_import_mails(batch, run)

    def _exchange_delete_imported(self, backend):
        """Remove from the transfer folders the mails whose import is committed (delete after import)."""
        mails = self.env["exchange.mail"].sudo().search([
            ("user_id", "=", self.user_id.id), ("delete_pending", "=", True),
        ])
        if not mails:
            return
        remote_ids = self._exchange_remote_ids(mails)
        results = backend.delete_messages(list(remote_ids.values()))
        deleted = mails.filtered(lambda mail: results.get(remote_ids.get(mail.id)) is None)
        for mail in mails - deleted:
            _logger.warning("Exchange mail %s of user %s not deleted from the transfer folder: %s",
                            mail.message_key, self.user_id.login, results[remote_ids[mail.id]])
        with self._exchange_page():
            deleted.write({"delete_pending": False})
