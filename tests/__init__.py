from . import test_user_settings
from . import test_settings_security
