import hashlib
from datetime import timedelta

from odoo import SUPERUSER_ID, api, fields, models
from odoo.exceptions import UserError

#: Refused sign-ins to one Exchange account, whoever tried, before the connector stops trying for
#: a while: below the lockout thresholds Active Directory is usually given (5 to 10).
DEFAULT_MAX_FAILURES_PER_ACCOUNT = 4
#: Refused sign-ins caused by one Odoo user, whatever the accounts, in the same window.
DEFAULT_MAX_FAILURES_PER_USER = 10
DEFAULT_WINDOW_MINUTES = 30


class ExchangeSignInFailure(models.Model):
    """One password Exchange refused: what limits password guessing through the connector.

    Writing the password lifts a mailbox's lockout (the user fixed it), so the lockout alone would
    let anyone try passwords without end and get the Active Directory account locked. These
    records count, per Exchange account and per Odoo user, the refusals of a recent window,
    whatever was written in between; they are forgotten after the window.
    """

    _name = "exchange.sign.in.failure"
    _description = "Refused Exchange sign-in"
    _order = "failed_at desc, id desc"

    account_key = fields.Char(
        required=True, index=True, readonly=True,
        help="SHA-256 of the server and the sign-in name: which Exchange account was tried.")
    actor_uid = fields.Integer(
        "Odoo user", required=True, index=True, readonly=True,
        help="Who caused the attempt: the user who clicked, or the mailbox's owner for scheduled syncs.")
    failed_at = fields.Datetime(required=True, default=fields.Datetime.now, index=True, readonly=True)

    @api.model
    def _account_key(self, host, login):
        return hashlib.sha256(f"{(host or '').lower()}|{(login or '').strip().lower()}".encode()).hexdigest()

    @api.model
    def _actor_uid(self, owner):
        """Who is trying: the current user, or the mailbox's owner when the connector itself does."""
        return owner.id if self.env.uid == SUPERUSER_ID else self.env.uid

    @api.model
    def _limits(self):
        ints = self.env["res.users"]._exchange_param_int
        window = timedelta(minutes=ints("sign_in_failure_window_minutes", DEFAULT_WINDOW_MINUTES))
        return (window, ints("max_sign_in_failures_per_account", DEFAULT_MAX_FAILURES_PER_ACCOUNT),
                ints("max_sign_in_failures_per_user", DEFAULT_MAX_FAILURES_PER_USER))

    @api.model
    def _check_allowed(self, account_key, actor_uid):
        """Raise UserError when the account or the user had too many refusals lately; nothing is sent then."""
        window, per_account, per_user = self._limits()
        since = fields.Datetime.now() - window
        failures = self.sudo().search([
            ("failed_at", ">", since), "|", ("account_key", "=", account_key), ("actor_uid", "=", actor_uid),
        ])
        of_account = failures.filtered(lambda failure: failure.account_key == account_key)
        of_user = failures.filtered(lambda failure: failure.actor_uid == actor_uid)
        for recent, limit in ((of_account, per_account), (of_user, per_user)):
            if len(recent) >= limit:
                retry_at = min(recent.mapped("failed_at")) + window
                raise UserError(self.env._(
                    "Exchange refused the password %(count)s times lately: to keep the account from being "
                    "locked, the connector tries again after %(time)s (UTC). Check the user name and "
                    "password meanwhile.", count=len(recent), time=fields.Datetime.to_string(retry_at)))

    @api.model
    def _record(self, account_key, actor_uid):
        return self.sudo().create({"account_key": account_key, "actor_uid": actor_uid})

    @api.autovacuum
    def _gc_old_failures(self):
        window, _per_account, _per_user = self._limits()
        self.sudo().search([("failed_at", "<", fields.Datetime.now() - window)]).unlink()
