"""Uninstall and reinstall exchange_connector in an existing database and check that uninstalling
leaves nothing behind (columns, tables, XML ids, crons, parameters).

Usage: lifecycle.py --odoo ODOO_SRC --addons-path P -d DB [--data-dir D] [--db_host H ...]
Prints one 'ok <check>' or 'FAIL <check>: why' line per check; exits 1 on any failure.
"""

import argparse
import sys

MODULE = "exchange_connector"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--odoo", required=True)
    args, odoo_args = parser.parse_known_args()
    sys.path.insert(0, args.odoo)

    from odoo import api  # noqa: PLC0415 (odoo is found through --odoo at run time)
    from odoo.modules.registry import Registry  # noqa: PLC0415
    from odoo.tools import config  # noqa: PLC0415

    config.parse_config(odoo_args, setup_logging=True)
    db = config["db_name"][0] if isinstance(config["db_name"], list) else config["db_name"]
    failures = 0

    def check(name, condition, why=""):
        nonlocal failures
        if condition:
            print(f"ok {name}")
        else:
            failures += 1
            print(f"FAIL {name}: {why}")

    def module_state():
        with Registry(db).cursor() as cr:
            cr.execute("SELECT state FROM ir_module_module WHERE name = %s", [MODULE])
            row = cr.fetchone()
            return row and row[0]

    check("installed before the cycle", module_state() == "installed", f"state is {module_state()}")
    with Registry(db).cursor() as cr:
        env = api.Environment(cr, api.SUPERUSER_ID, {})
        env["ir.module.module"].search([("name", "=", MODULE)]).button_immediate_uninstall()
    check("uninstall", module_state() == "uninstalled", f"state is {module_state()}")
    with Registry(db).cursor() as cr:
        cr.execute("""SELECT column_name FROM information_schema.columns
                      WHERE table_name IN ('res_users', 'res_users_settings', 'res_partner', 'calendar_event')
                        AND column_name LIKE 'exchange%%'""")
        columns = [row[0] for row in cr.fetchall()]
        check("uninstall drops the addon's columns", not columns, f"left: {columns}")
        cr.execute("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'exchange%%'")
        tables = [row[0] for row in cr.fetchall()]
        check("uninstall drops the addon's tables", not tables, f"left: {tables}")
        cr.execute("SELECT count(*) FROM ir_model_data WHERE module = %s", [MODULE])
        check("uninstall removes the addon's XML ids", cr.fetchone()[0] == 0, "ir_model_data rows left")
        cr.execute("SELECT key FROM ir_config_parameter WHERE key LIKE %s", [MODULE + ".%"])
        params = [row[0] for row in cr.fetchall()]
        check("uninstall removes the addon's settings", not params, f"left: {params}")
    with Registry(db).cursor() as cr:
        env = api.Environment(cr, api.SUPERUSER_ID, {})
        env["ir.module.module"].search([("name", "=", MODULE)]).button_immediate_install()
    check("reinstall", module_state() == "installed", f"state is {module_state()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
