from odoo import api, fields, models
from odoo.exceptions import UserError


class ExchangeAssignPartner(models.TransientModel):
    """Choose the partners of mails waiting in the queue (ambiguous or unknown address), post them there.

    The candidates are the partners of the mails' addresses; others can be added. "Always use"
    remembers the choice per address (``exchange.address.choice``) for the user's later mails.
    """

    _name = "exchange.assign.partner"
    _description = "Assign imported mails to partners"

    mail_ids = fields.Many2many("exchange.mail", string="Mails", required=True)
    candidate_ids = fields.One2many("exchange.assign.partner.candidate", "wizard_id", string="Candidates")
    extra_partner_ids = fields.Many2many(
        "res.partner", string="Other partners", help="Partners that are not among the candidates.")
    remember = fields.Boolean(
        "Always use these partners for these addresses",
        help="Later mails of these addresses go to the chosen partners without asking (editable in "
             "My remembered partners).")

    @api.model
    def default_get(self, fields_list):
        values = super().default_get(fields_list)
        mail_ids = values.get("mail_ids") or []
        ids = []
        for command in mail_ids:
            if isinstance(command, (list, tuple)) and command[0] == 6:
                ids += command[2]
            elif isinstance(command, (list, tuple)) and command[0] == 4:
                ids.append(command[1])
            elif isinstance(command, int):
                ids.append(command)
        if not ids and self.env.context.get("active_model") == "exchange.mail":
            ids = self.env.context.get("active_ids") or []
            values["mail_ids"] = [(6, 0, ids)]
        if "candidate_ids" in fields_list:
            mails = self.env["exchange.mail"].browse(ids).filtered(lambda mail: mail.state == "queued")
            values["candidate_ids"] = [(0, 0, line) for line in self._candidate_lines(mails)]
        return values

    @api.model
    def _candidate_lines(self, mails):
        lines = []
        seen = set()
        Partner = self.env["res.partner"]
        for mail in mails:
            addresses = mail._exchange_pending_addresses()
            matches = Partner._exchange_match_addresses(addresses, mail.user_id) if addresses else {}
            for address in addresses:
                for partner in matches.get(address, Partner):
                    if (address, partner.id) in seen:
                        continue
                    seen.add((address, partner.id))
                    lines.append({"address": address, "partner_id": partner.id,
                                  "selected": partner in mail.partner_ids})
            for partner in mail.partner_ids:
                if not any(line["partner_id"] == partner.id for line in lines):
                    lines.append({"address": partner.email_normalized or "", "partner_id": partner.id,
                                  "selected": True})
        return lines

    def _partners_for(self, mail, chosen_lines):
        """The partners ``mail`` goes to: its certain ones, the chosen candidates of its addresses, others."""
        addresses = set(mail._exchange_pending_addresses())
        partners = mail.partner_ids | self.extra_partner_ids
        partners |= chosen_lines.filtered(lambda line: line.address in addresses).partner_id
        return partners or chosen_lines.partner_id

    def action_assign(self):
        self.ensure_one()
        chosen = self.candidate_ids.filtered("selected")
        if not chosen and not self.extra_partner_ids:
            raise UserError(self.env._("Choose at least one partner, or ignore the mails."))
        mails = self.mail_ids.filtered(lambda mail: mail.state == "queued")
        # The addresses are read before posting clears them.
        decisions = [
            (mail, mail._exchange_pending_addresses(), self._partners_for(mail, chosen)) for mail in mails
        ]
        # All in one batch per user: one Message-ID lookup, the messages created in one go.
        self.env["exchange.mail"].sudo()._exchange_post_chosen(
            [(mail.sudo(), partners) for mail, _addresses, partners in decisions])
        if self.remember:
            self._remember(decisions, chosen)
        return {"type": "ir.actions.act_window_close"}

    def action_ignore(self):
        self.mail_ids.action_ignore()
        return {"type": "ir.actions.act_window_close"}

    def _remember(self, decisions, chosen):
        """Remember, per address of the mails, the chosen candidates of that address.

        A mail of a single address remembers all its partners for it (e.g. one picked among
        "Other partners" for an unknown address).
        """
        Choice = self.env["exchange.address.choice"]
        for mail, addresses, partners_of_mail in decisions:
            for address in addresses:
                partners = chosen.filtered(lambda line, a=address: line.address == a).partner_id
                if not partners and len(addresses) == 1:
                    partners = partners_of_mail
                if not partners:
                    continue
                existing = Choice.search([("user_id", "=", mail.user_id.id), ("address", "=", address)])
                if existing:
                    existing.partner_ids = [(6, 0, partners.ids)]
                else:
                    Choice.create({
                        "user_id": mail.user_id.id, "address": address, "partner_ids": [(6, 0, partners.ids)],
                    })


class ExchangeAssignPartnerCandidate(models.TransientModel):
    _name = "exchange.assign.partner.candidate"
    _description = "Candidate partner of a waiting mail"
    _order = "address, id"

    wizard_id = fields.Many2one("exchange.assign.partner", required=True, ondelete="cascade")
    address = fields.Char(readonly=True)
    partner_id = fields.Many2one("res.partner", required=True, readonly=True)
    selected = fields.Boolean("Use")
    company_name = fields.Char("Company", related="partner_id.parent_id.name")
    salesperson_id = fields.Many2one(related="partner_id.user_id", string="Salesperson")
    last_activity = fields.Datetime(
        compute="_compute_last_activity", help="The date of the partner's last chatter message.")

    @api.depends("partner_id")
    def _compute_last_activity(self):
        partners = self.partner_id
        last = {}
        if partners:
            groups = self.env["mail.message"].sudo()._read_group(
                [("model", "=", "res.partner"), ("res_id", "in", partners.ids)], ["res_id"], ["date:max"])
            last = dict(groups)
        for line in self:
            line.last_activity = last.get(line.partner_id.id, False)
