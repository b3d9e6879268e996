"""Mail import arrives: the transfer folders start over.

Earlier versions listed the transfer folders and counted every mail as skipped, and the saved
sync states moved past them. Forgetting the states makes the next sync list the folders from the
beginning, so that those mails are imported too; the import recognizes what it has already
stored (bindings, Message-IDs), which makes the restart safe to repeat.
"""

import logging

_logger = logging.getLogger(__name__)


def migrate(cr, version):
    if not version:
        return
    cr.execute("""
        UPDATE exchange_mailbox
           SET mails_in_state = NULL, mails_out_state = NULL
         WHERE mails_in_state IS NOT NULL OR mails_out_state IS NOT NULL
    """)
    _logger.info("Mail import: the transfer folders of %s mailboxes start over", cr.rowcount)
