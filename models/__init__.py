from . import exchange_binding
from . import exchange_mailbox
from . import exchange_sync_run
from . import res_config_settings
from . import res_users
from . import exchange_sign_in_failure
