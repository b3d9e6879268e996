from . import test_user_settings
from . import test_settings_security
from . import test_oauth
from . import test_connection
from . import test_backend_seam
from . import test_binding
from . import test_scheduler
from . import test_discuss_sync
