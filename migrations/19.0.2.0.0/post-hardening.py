"""Hardening: no credentials left inside stored EWS URLs, no CA files left in the shared folder.

The URL is now refused with a user name or password inside (``https://user:pw@host/...``); such
URLs saved before were readable by every internal user and reached the sync log. They lose the
part before "@", and the sync log forgets it too.

The users' CA certificates were written to one folder for all databases and never removed; they
now live in each database's filestore, cleaned as bundles change. The old folder's files go: a
database not upgraded yet writes again the one it needs when it uses it.
"""

import contextlib
import glob
import logging
import os
import re

from odoo.tools import config

_logger = logging.getLogger(__name__)

USERINFO = re.compile(r"^(\s*https?://)[^/?#]*@", re.IGNORECASE)


def migrate(cr, version):
    if not version:
        return
    cr.execute("SELECT id, login, exchange_ews_url FROM res_users WHERE exchange_ews_url LIKE %s", ("%@%",))
    for user_id, login, url in cr.fetchall():
        cleaned = USERINFO.sub(r"\1", url)
        if cleaned != url:
            cr.execute("UPDATE res_users SET exchange_ews_url = %s WHERE id = %s", (cleaned, user_id))
            _logger.warning("The EWS URL of %s held a user name or password: removed from the URL", login)
    cr.execute(
        r"UPDATE exchange_sync_run"
        r"   SET exc_message = regexp_replace(exc_message, '(https?://)[^/?#\s]*@', '\1', 'gi')"
        r" WHERE exc_message ~* 'https?://[^/?#\s]*@'")
    for path in glob.glob(os.path.join(config["data_dir"], "exchange_connector", "ca", "*.pem")):
        with contextlib.suppress(OSError):
            os.remove(path)
