from . import exchange_binding
from . import exchange_mailbox
from . import exchange_sync_run
from . import res_config_settings
from . import res_users
from . import exchange_address_choice
from . import res_partner
from . import exchange_queue_job
