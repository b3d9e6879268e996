import email
import io
from collections import defaultdict

from markupsafe import Markup, escape

from odoo import api, fields, models
from odoo.tools import clean_context, html2plaintext

from ..services.addresses import parse_address_header, readable_addresses
from ..services.mail_content import (
    PARSE_POLICY,
    clean_message_id,
    content_key,
    repair_charsets,
    strip_remote_content,
    thread_references,
)
from ..services.mime_spool import SpooledPart, spool_large_parts, spooled_content
from .mail_thread import IMPORT_CACHE_CONTEXT

MAIL_STATES = [
    ("queued", "Waiting for a partner"),
    ("posted", "Posted"),
    ("ignored", "Ignored"),
    ("failed", "Failed, retried"),
    ("parked", "Parked"),
]
#: Tries after which a mail that keeps failing is parked (point 7 of the mail import).
MAX_TRIES = 3
DEFAULT_ATTACHMENT_LIMIT_MB = 25
PREVIEW_CHARS = 600
#: Mail sources above this size are read from a file, their big attachments spooled to files of
#: their own before parsing (``services.mime_spool``) and stored without passing through base64.
STREAM_BYTES = 4 * 1024 * 1024


class ExchangeMail(models.Model):
    """A mail of a user's transfer folder as the import knows it: where it went, or why it waits.

    One record per user and mailbox item (its remote id is in ``exchange.binding``, kind
    "message"). The chatter posts it led to are ``message_ids``; the same real mail in three
    users' folders gives three records and, per document, one ``mail.message`` that names all
    three users (``mail.message.exchange_user_ids``). Mails that wait for a partner (ambiguous or
    unknown address), failed or were parked keep their MIME source until they are posted.
    """

    _name = "exchange.mail"
    _description = "Mail of an Exchange transfer folder"
    _order = "date desc, id desc"
    _rec_name = "subject"

    user_id = fields.Many2one("res.users", required=True, ondelete="cascade", index=True, readonly=True)
    company_id = fields.Many2one(related="user_id.company_id")
    folder_kind = fields.Selection(
        [("in", "Incoming"), ("out", "Outgoing")], "Transfer folder", required=True, readonly=True)
    state = fields.Selection(MAIL_STATES, required=True, default="queued", index=True, readonly=True)
    reason = fields.Text(readonly=True, help="Why the mail waits, was ignored, failed or was parked.")
    tries = fields.Integer(readonly=True, help="Failed import attempts; the mail is parked after 3.")
    run_id = fields.Many2one(
        "exchange.sync.run", "Last sync run", ondelete="set null", readonly=True,
        help="The run that last imported or tried to import this mail.")
    failed_run_ids = fields.Many2many(
        "exchange.sync.run", "exchange_mail_failed_run_rel", "mail_id", "run_id", "Failed in runs",
        readonly=True, help="The sync runs in which this mail failed or was parked.")
    message_key = fields.Char(
        "Message-ID", index=True, readonly=True,
        help="The mail's Message-ID, or a content hash for a mail that has none.")
    subject = fields.Char(readonly=True)
    email_from = fields.Char("From", readonly=True)
    email_to = fields.Text("To", readonly=True)
    email_cc = fields.Text("Cc", readonly=True)
    date = fields.Datetime(readonly=True)
    preview = fields.Text(readonly=True, help="The beginning of the text, as plain text.")
    attachment_names = fields.Text("Attachments", readonly=True)
    pending_addresses = fields.Char(
        readonly=True, help="The addresses the mail concerns, for which a partner is to be chosen.")
    partner_ids = fields.Many2many(
        "res.partner", string="Partners", readonly=True,
        help="Where the mail was posted, or the partners already certain while it waits.")
    message_ids = fields.Many2many("mail.message", string="Chatter messages", readonly=True)
    mime = fields.Binary("Source", attachment=True, readonly=True)
    delete_pending = fields.Boolean(
        readonly=True, help="Stored and committed; to be removed from the transfer folder at the next step.")

    # -- parsing --------------------------------------------------------------

    @api.model
    def _exchange_parse(self, mime):
        """Odoo's own parse of ``mime`` plus what routing needs: a dict (``mail.thread.message_parse``).

        ``mime`` is bytes or a binary file. A file, or a source above :data:`STREAM_BYTES`, is
        parsed without its big attachments: they are decoded to files of their own as the source
        is read, and appear among ``attachments`` as :class:`~services.mime_spool.SpooledPart`
        contents; ``parsed["spooled"]`` holds them (close it when done, else their temporary
        files go when it is garbage-collected).
        """
        spooled = None
        if not isinstance(mime, bytes) or len(mime) > STREAM_BYTES:
            fp = io.BytesIO(mime) if isinstance(mime, bytes) else mime
            fp.seek(0)
            spooled = spool_large_parts(fp)
            mime = spooled.skeleton
        try:
            parsed = self._exchange_parse_bytes(mime)
        except BaseException:
            if spooled:
                spooled.close()
            raise
        parsed["spooled"] = spooled
        if spooled and spooled.parts:
            parsed["attachments"] = [
                attachment._replace(
                    content=spooled_content(attachment.content, spooled.parts) or attachment.content)
                for attachment in parsed.get("attachments") or []
            ]
        return parsed

    @api.model
    def _exchange_parse_bytes(self, mime):
        message = email.message_from_bytes(mime, policy=PARSE_POLICY)
        repair_charsets(message)
        parsed = self.env["mail.thread"].message_parse(message)
        key = clean_message_id(message.get("Message-Id", "")) if message.get("Message-Id") else None
        if not key:
            key = content_key(parsed.get("email_from"), parsed.get("date"), parsed.get("subject"),
                              parsed.get("body"))
        parsed["message_id"] = key
        parsed["thread_references"] = thread_references(parsed.get("in_reply_to"), parsed.get("references"))
        parsed["from_addresses"] = [a.address for a in parse_address_header(parsed.get("email_from"))]
        parsed["recipient_addresses"] = [
            a.address for a in parse_address_header(",".join(
                filter(None, [str(message.get("To", "") or ""), str(message.get("Cc", "") or "")])))
        ]
        return parsed

    @api.model
    def _exchange_envelope(self, parsed):
        """The values shown in the queue for a parsed mail."""
        names = [attachment[0] for attachment in parsed.get("attachments") or []]
        return {
            "message_key": parsed["message_id"],
            "subject": (parsed.get("subject") or "")[:1000],
            "email_from": readable_addresses(parsed.get("email_from"))[:1000],
            "email_to": readable_addresses(parsed.get("to")) or False,
            "email_cc": readable_addresses(parsed.get("cc")) or False,
            "date": parsed.get("date") or fields.Datetime.now(),
            # One paragraph without link targets: it is read in a list row of the wizard.
            "preview": " ".join(html2plaintext(parsed.get("body") or "", include_references=False).split())[
                :PREVIEW_CHARS],
            "attachment_names": "\n".join(str(name) for name in names) or False,
        }

    # -- posting --------------------------------------------------------------

    @api.model
    def _exchange_attachment_limit(self, user):
        """Bytes above which an attachment is left out (per company, ``exchange_attachment_limit_mb``)."""
        limit_mb = user.company_id.exchange_attachment_limit_mb or DEFAULT_ATTACHMENT_LIMIT_MB
        return limit_mb * 1024 * 1024

    @api.model
    def _exchange_post_batch(self, user, posts):
        """Post each ``(parsed, targets, author)`` of ``posts`` once per document; their messages, in order.

        ``targets`` are ``(model, res_id)`` pairs. A document that already has the mail's
        Message-ID (another user had the same mail, a run is repeated, or the batch holds it
        twice) only gets ``user`` added to the message's ``exchange_user_ids``; a mail that Odoo
        itself sent (its Message-ID is on messages none of which was imported) is not posted
        again. The new messages are created in one go, directly, as the gateway's own log
        helpers do: no notification, no mail.mail, no follower subscription.
        """
        Message = self.env["mail.message"].sudo().with_context(clean_context(self.env.context))
        keys = {parsed["message_id"] for parsed, _targets, _author in posts}
        stored = defaultdict(dict)
        for message in Message.search([("message_id", "in", list(keys))]):
            stored[message.message_id][(message.model, message.res_id)] = message
        sent_by_odoo = {
            key for key, by_document in stored.items()
            if not any(message.exchange_user_ids for message in by_document.values())
        }
        values_list, planned = [], []
        for parsed, targets, author in posts:
            key = parsed["message_id"]
            by_document = stored[key]
            if key in sent_by_odoo:
                planned.append(list(by_document.values()))
                continue
            refs = []
            for model, res_id in targets:
                found = by_document.get((model, res_id))
                if found is None:
                    found = len(values_list)
                    values_list.append(self._exchange_message_values(user, parsed, model, res_id, author))
                    by_document[(model, res_id)] = found
                refs.append(found)
            planned.append(refs)
        created = Message.create(values_list) if values_list else Message
        results, existing = [], Message
        for refs in planned:
            messages = Message.browse([created[ref].id if isinstance(ref, int) else ref.id for ref in refs])
            existing |= messages.filtered(lambda message: user not in message.exchange_user_ids)
            results.append(messages)
        if existing:
            existing.write({"exchange_user_ids": [(4, user.id)]})
        return results

    @api.model
    def _exchange_message_values(self, user, parsed, model, res_id, author):
        """The values of the chatter message of a parsed mail on one document (attachments created)."""
        # A mail posted on several documents is cleaned once.
        if "clean_body" not in parsed:
            parsed["clean_body"] = strip_remote_content(parsed.get("body") or "")
        body, removed = parsed["clean_body"]
        body = Markup(body) if body else Markup()
        notes = []
        if removed:
            notes.append(self.env._(
                "%(count)s remote images or references (trackers) were removed.", count=removed))
        limit = self._exchange_attachment_limit(user)
        attachments, spooled = [], []
        for attachment in parsed.get("attachments") or []:
            content = attachment.content
            if isinstance(content, SpooledPart):
                size = content.size  # known before a byte of it is read into memory
            else:
                size = len(content) if isinstance(content, (bytes, str)) else 0
            if size > limit:
                notes.append(self.env._(
                    "The attachment %(name)s (%(size).1f MB) was not imported: it is larger than the "
                    "limit of %(limit)s MB.", name=attachment.fname, size=size / 1048576,
                    limit=limit // 1048576))
                continue
            (spooled if isinstance(content, SpooledPart) else attachments).append(attachment)
            if attachment.fname and attachment.fname.lower() == "winmail.dat":
                notes.append(self.env._(
                    "winmail.dat holds Outlook rich text (TNEF) that Odoo cannot show; it is attached as "
                    "it came. Ask the sender to send plain or HTML mails."))
        if notes:
            body += Markup("<p><i>%s</i></p>") % Markup("<br/>").join(escape(note) for note in notes)
        values = {
            "model": model,
            "res_id": res_id,
            "message_type": "email",
            "subtype_id": self.env["ir.model.data"]._xmlid_to_res_id("mail.mt_comment"),
            "is_internal": False,
            "author_id": author.id if author else False,
            "email_from": parsed.get("email_from") or False,
            "subject": parsed.get("subject") or False,
            "body": body,
            "date": parsed.get("date") or fields.Datetime.now(),
            "message_id": parsed["message_id"],
            "incoming_email_to": parsed.get("to") or False,
            "incoming_email_cc": parsed.get("cc") or False,
            "email_add_signature": False,
            "reply_to": False,
            "exchange_user_ids": [(4, user.id)],
        }
        if attachments:
            # Creates the attachments on the document and points the body's cid: images at them.
            thread = self.env["mail.thread"].sudo()
            values.update(thread._process_attachments_for_post(attachments, [], values))
        if spooled:
            # Odoo's post helper would base64-encode the bytes and decode them again: a big
            # attachment goes to the filestore from its file, read once.
            created = self.env["ir.attachment"].sudo().create([{
                "name": attachment.fname or "attachment",
                "description": attachment.fname or "attachment",
                "type": "binary",
                "raw": attachment.content.read(),
                "mimetype": attachment.content.content_type,
                "res_model": model,
                "res_id": res_id,
            } for attachment in spooled])
            values["attachment_ids"] = list(values.get("attachment_ids") or []) + [
                (4, attachment_id) for attachment_id in created.ids]
        return values

    @api.model
    def _exchange_posted_values(self, user, messages, partners=None):
        """The values of a mail once posted as ``messages``; its MIME is no longer needed."""
        values = {"state": "posted", "message_ids": [(6, 0, messages.ids)], "mime": False, "reason": False,
                  "pending_addresses": False}
        if partners is not None:
            values["partner_ids"] = [(6, 0, partners.ids)]
        if user.exchange_delete_after_import:
            values["delete_pending"] = True
        return values

    def _exchange_pending_addresses(self):
        return [address.strip() for address in (self.pending_addresses or "").split(",") if address.strip()]

    @api.model
    def _exchange_post_chosen(self, choices):
        """Post each waiting mail of ``choices`` (``[(exchange.mail, res.partner)]``) on its partners.

        The mails of one user are posted in one batch: the Message-ID lookups and the messages'
        creation happen once, not per mail.
        """
        # One parse cache (alias domains, aliases) for all the chosen mails.
        Mail = self.with_context(**{IMPORT_CACHE_CONTEXT: {}})
        by_user = defaultdict(list)
        try:
            for mail, partners in choices:
                parsed = Mail._exchange_parse(mail._exchange_source())
                if mail.folder_kind == "out":
                    author = mail.user_id.partner_id
                else:
                    sender = next(iter(parsed["from_addresses"]), None)
                    author = partners.filtered(lambda partner, s=sender: partner.email_normalized == s)[:1]
                    if not author and len(partners) == 1:
                        author = partners
                targets = [("res.partner", partner.id) for partner in partners]
                by_user[mail.user_id].append((mail, partners, (parsed, targets, author)))
            for user, posts in by_user.items():
                messages = self._exchange_post_batch(user, [post for _mail, _partners, post in posts])
                for (mail, partners, _post), posted in zip(posts, messages, strict=True):
                    mail.write(self._exchange_posted_values(user, posted, partners))
        finally:
            for posts in by_user.values():
                for _mail, _partners, (parsed, _targets, _author) in posts:
                    if parsed.get("spooled"):
                        parsed["spooled"].close()

    # -- user actions ---------------------------------------------------------

    def action_assign_partner(self):
        """Open the assignment wizard on the selected waiting mails."""
        waiting = self.filtered(lambda mail: mail.state == "queued")
        return {
            "type": "ir.actions.act_window",
            "res_model": "exchange.assign.partner",
            "view_mode": "form",
            "target": "new",
            "name": self.env._("Assign to partners"),
            "context": {"default_mail_ids": [(6, 0, waiting.ids)]},
        }

    def action_ignore(self):
        """The user decides that these waiting or parked mails go nowhere."""
        for mail in self.filtered(lambda mail: mail.state in ("queued", "parked", "failed")):
            values = {"state": "ignored", "mime": False,
                      "reason": self.env._("Ignored by %(user)s.", user=self.env.user.name)}
            # sudo: res.users - the mailbox preferences are closed to others, even in the mail's own rights
            if mail.user_id.sudo().exchange_delete_after_import:
                values["delete_pending"] = True
            mail.write(values)

    def action_retry(self):
        """Try parked mails again at the next sync."""
        # bin_size: whether a mail has its source is asked, not the source itself.
        parked = self.with_context(bin_size=True).filtered(lambda mail: mail.state == "parked" and mail.mime)
        parked.write({"state": "failed", "tries": 0})

    def _exchange_source(self):
        """The stored MIME source as bytes (read from its attachment: no base64 on the way)."""
        self.ensure_one()
        stored = self.env["ir.attachment"].sudo().with_context(bin_size=False).search([
            ("res_model", "=", self._name), ("res_field", "=", "mime"), ("res_id", "=", self.id),
        ], limit=1)
        return stored.raw or b""

    def _exchange_store_mime(self, source):
        """Store the MIME source read from the binary file ``source`` (a big mail) as ``mime``."""
        self.ensure_one()
        source.seek(0)
        self.env["ir.attachment"].sudo().create({
            "name": "mime", "type": "binary", "raw": source.read(), "mimetype": "message/rfc822",
            "res_model": self._name, "res_field": "mime", "res_id": self.id,
        })
