import logging
from datetime import timedelta

from odoo import fields, models

from ..services import ContactChange, ThrottledError, TimeBudgetExceeded
from ..services.contact_mapping import contact_fingerprint, contact_from_partner, parse_marker

_logger = logging.getLogger(__name__)

#: Microsoft's answers to an update of a contact that is no longer there (deleted in Outlook).
GONE_CODES = {"ErrorItemNotFound", "HTTP404", "ItemNotFound"}
#: Without a change in Odoo, the folder is compared with the bindings this often (contacts deleted
#: in Outlook come back then, or at once with "Sync now").
CONTACT_RECHECK = timedelta(hours=6)


class ExchangeMailbox(models.Model):
    """Contact push: the user's "In my Outlook" partners, kept current in their Outlook contacts.

    One push compares three things: the subscriptions (what should be there), the bindings (what
    the connector created, by remote id) and the contacts that carry this database's marker in the
    folder (what is really there). From that it creates what is missing (a contact deleted in
    Outlook is created again), updates what changed (fingerprint), deletes what must go (archived,
    deleted or no longer readable partners, unsubscribed ones when the user chose so), and adopts a
    marked contact instead of creating a second one (a create whose answer was lost). Contacts
    without this database's marker are never changed or deleted.
    """

    _inherit = "exchange.mailbox"

    contacts_checked_at = fields.Datetime(
        "Contacts last compared", copy=False, groups="base.group_system",
        help="Start of the last complete contact push; without a change in Odoo the folder is compared "
             "with what was pushed again some hours later.")
    contacts_folder_setting = fields.Char(copy=False, groups="base.group_system")

    def _sync_contacts(self, backend, run):
        """A push only when :meth:`_contacts_pending` finds work; "Sync now" always compares the folder.

        The partners are mapped once per sync: the values and fingerprints :meth:`_contacts_pending`
        computed are those the push sends (``exchange_contact_mapping`` in the context).
        """
        started = fields.Datetime.now()
        mailbox = self.with_context(exchange_contacts_full_check=getattr(run, "trigger", None) == "manual",
                                    exchange_contact_mapping={})
        compared = super(ExchangeMailbox, mailbox)._sync_contacts(backend, run)
        if compared:
            with self._exchange_page():
                self.write({"contacts_checked_at": started,
                            "contacts_folder_setting": self.user_id.exchange_contact_folder or False})
        return compared

    def _contacts_pending(self):
        """Whether the push has work, from the database alone: a partner whose mapped values
        changed (fingerprint) or newly subscribed, a pushed partner no longer wanted or readable,
        another folder; and, for contacts deleted in Outlook, a comparison every
        ``CONTACT_RECHECK`` or on "Sync now"."""
        self.ensure_one()
        checked = self.contacts_checked_at
        if (self.env.context.get("exchange_contacts_full_check") or not checked
                or checked < fields.Datetime.now() - CONTACT_RECHECK
                or (self.contacts_folder_setting or "") != (self.user_id.exchange_contact_folder or "")):
            return True
        wanted, lost_partner_ids = self._exchange_contact_subscriptions(end_lost=False)
        if lost_partner_ids or set(self._exchange_contact_bindings().mapped("res_id")) - set(wanted):
            return True
        database_uuid = self.env["ir.config_parameter"].sudo().get_param("database.uuid")
        mapped = self._exchange_contact_mapped(wanted, database_uuid)
        return any(wanted[partner_id].fingerprint != fingerprint
                   for partner_id, (_contact, fingerprint) in mapped.items())

    def _sync_contacts_folder_changed(self, backend, old_folder, run):
        """The user chose another contact folder: the contacts created in the old one are deleted."""
        bindings = self._exchange_contact_bindings()
        if not bindings:
            return
        changes = [ContactChange("delete", binding.id, remote_id=binding.remote_id) for binding in bindings]
        results = backend.push_contacts(old_folder, changes)
        done = bindings.browse([result.local_ref for result in results if result.ok])
        run._count(deleted=len(done), failed=len(results) - len(done))
        done.unlink()
        self.env["exchange.contact.subscription"].sudo().search([
            ("user_id", "=", self.user_id.id)]).fingerprint = False

    def _exchange_contact_bindings(self):
        return self.env["exchange.binding"].sudo().search([
            ("user_id", "=", self.user_id.id), ("kind", "=", "contact"), ("res_model", "=", "res.partner"),
        ])

    def _push_contacts(self, backend, folder, run):
        self.ensure_one()
        database_uuid = self.env["ir.config_parameter"].sudo().get_param("database.uuid")
        wanted, lost_partner_ids = self._exchange_contact_subscriptions()
        bindings = {binding.res_id: binding for binding in self._exchange_contact_bindings()}
        if not wanted and not bindings:
            return None  # nothing to push nor to remove: not even a listing
        marked = self._exchange_marked_contacts(backend, folder, database_uuid)
        present = {found.id for founds in marked.values() for found in founds}
        changes, plans = self._exchange_contact_upserts(wanted, marked, present, bindings, database_uuid)
        changes += self._exchange_contact_removals(wanted, lost_partner_ids, present, bindings)
        if not changes:
            return None
        results = backend.push_contacts(folder, changes)
        return self._exchange_apply_contact_results(results, plans, run)

    def _exchange_contact_subscriptions(self, end_lost=True):
        """``({partner id: subscription}, lost partner ids)``: the active partners the user still
        subscribes to and may read; the subscriptions to partners they can no longer read end
        (unless not ``end_lost``)."""
        user = self.user_id
        subscriptions = self.env["exchange.contact.subscription"].sudo().search([("user_id", "=", user.id)])
        partners = subscriptions.partner_id.with_user(user).with_context(active_test=False)
        readable_ids = set(partners._filtered_access("read").ids)
        lost = subscriptions.filtered(lambda s: s.partner_id.id not in readable_ids)
        lost_partner_ids = set(lost.partner_id.ids)
        if lost and end_lost:
            _logger.info("User %s lost read access to %d subscribed partners", user.login, len(lost))
            lost.unlink()
            subscriptions -= lost
        return {s.partner_id.id: s for s in subscriptions if s.partner_id.active}, lost_partner_ids

    @staticmethod
    def _exchange_marked_contacts(backend, folder, database_uuid):
        """What is really in the folder: ``{partner id: [MarkedContact]}`` of this database's marker."""
        marked = {}
        for found in backend.list_marked_contacts(folder):
            owner = parse_marker(found.marker)
            if owner and owner[0] == database_uuid:
                marked.setdefault(owner[1], []).append(found)
        return marked

    def _exchange_contact_mapped(self, wanted, database_uuid):
        """``{partner id: (RemoteContact, fingerprint)}`` of the wanted partners, read in bulk; those
        this sync mapped already (``exchange_contact_mapping`` in the context) are not read again."""
        known = self.env.context.get("exchange_contact_mapping")
        known = {} if known is None else known
        missing = [partner_id for partner_id in wanted if partner_id not in known]
        if missing:
            Partner = self.env["res.partner"].sudo().with_context(active_test=False)
            values = Partner.browse(missing)._exchange_contact_values(database_uuid)
            for partner_id in missing:
                contact = contact_from_partner(values[partner_id])
                known[partner_id] = (contact, contact_fingerprint(contact))
        return {partner_id: known[partner_id] for partner_id in wanted}

    def _exchange_contact_upserts(self, wanted, marked, present, bindings, database_uuid):
        """Creates and updates for the wanted partners: ``(changes, {partner id: (subscription,
        fingerprint)})``. A marked contact of a partner is adopted rather than created again."""
        Partner = self.env["res.partner"].sudo().with_context(active_test=False)
        mapped = self._exchange_contact_mapped(wanted, database_uuid)
        changes, plans = [], {}
        for partner_id, subscription in wanted.items():
            contact, fingerprint = mapped[partner_id]
            binding = bindings.get(partner_id)
            candidates = marked.get(partner_id, [])
            if binding and binding.remote_id in present:
                remote_id = binding.remote_id
            elif candidates:
                # Unbound (a create whose answer was lost) or bound to a contact that is gone:
                # the marked one is ours, adopt it rather than create a second one.
                remote_id = candidates[0].id
                self.env["exchange.binding"]._bind(
                    self.user_id, Partner.browse(partner_id), "contact", remote_id, candidates[0].change_key)
                subscription.fingerprint = False
            else:
                remote_id = None
            for extra in candidates:
                if extra.id != remote_id:  # a duplicate of ours (should not happen): keep one
                    changes.append(ContactChange("delete", ("duplicate", partner_id), remote_id=extra.id))
            if remote_id is None:
                changes.append(ContactChange("create", partner_id, contact=contact))
            elif subscription.fingerprint != fingerprint:
                changes.append(ContactChange("update", partner_id, remote_id=remote_id, contact=contact))
            else:
                continue
            plans[partner_id] = (subscription, fingerprint)
        return changes, plans

    def _exchange_contact_removals(self, wanted, lost_partner_ids, present, bindings):
        """Deletes for bound partners no longer wanted: archived, deleted, no longer readable, or
        unsubscribed when the user chose so. The other bindings end: their contacts stay as they are."""
        user = self.user_id
        gone = [partner_id for partner_id in bindings if partner_id not in wanted]
        remaining = self.env["res.partner"].sudo().with_context(active_test=False).browse(gone).exists()
        unsubscribed = set(remaining.filtered("active").ids) - lost_partner_ids
        changes = []
        for partner_id in gone:
            binding = bindings[partner_id]
            keep = partner_id in unsubscribed and not user.exchange_delete_contact_on_unsubscribe
            if binding.remote_id in present and not keep:
                changes.append(ContactChange("delete", ("binding", binding.id), remote_id=binding.remote_id))
            else:
                binding.unlink()  # gone in Outlook already, or left there on purpose: stop updating it
        return changes

    def _exchange_apply_contact_results(self, results, plans, run):
        """Store what Microsoft did; return the error that stopped the push early (None if none).

        Changes left undone (time budget spent, throttling) keep their old fingerprint: the next
        push sends them. A create whose answer was lost is found by its marker next time.
        """
        user = self.user_id
        stop = None
        Partner = self.env["res.partner"].sudo().with_context(active_test=False)
        Binding = self.env["exchange.binding"].sudo()
        counts = {"created": 0, "updated": 0, "deleted": 0, "failed": 0, "skipped": 0}
        for result in results:
            if not result.ok and result.error_code in ("TimeBudgetExceeded", "ThrottledError"):
                counts["skipped"] += 1
                if stop is None:
                    budget_spent = result.error_code == "TimeBudgetExceeded"
                    stop = (TimeBudgetExceeded if budget_spent else ThrottledError)(result.error_message)
                continue
            if result.op == "delete":
                if result.ok:
                    kind, key = result.local_ref
                    if kind == "binding":
                        Binding.browse(key).unlink()
                    counts["deleted"] += 1
                else:
                    counts["failed"] += 1
                continue
            subscription, fingerprint = plans[result.local_ref]
            if result.ok:
                Binding._bind(user, Partner.browse(result.local_ref), "contact", result.remote_id,
                              result.change_key)
                subscription.fingerprint = fingerprint
                counts["created" if result.op == "create" else "updated"] += 1
                continue
            counts["failed"] += 1
            if result.op == "update" and result.error_code in GONE_CODES:
                # Deleted in Outlook since the listing: created again at the next push.
                Binding.search([
                    ("user_id", "=", user.id), ("kind", "=", "contact"),
                    ("res_model", "=", "res.partner"), ("res_id", "=", result.local_ref),
                ]).unlink()
            elif result.error_code != "OutcomeUnknown":
                _logger.warning("Contact %s of partner %s for %s failed: %s %s", result.op, result.local_ref,
                                user.login, result.error_code, result.error_message)
        run._count(**counts)
        return stop
