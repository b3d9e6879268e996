from . import controllers
from . import models
from . import wizard


def uninstall_hook(env):
    """Remove the company-wide settings (the Azure client secret among them): they are plain
    ir.config_parameter rows, which Odoo would otherwise keep after the addon is gone."""
    env["ir.config_parameter"].sudo().search([("key", "=like", "exchange_connector.%")]).unlink()
