"""What the benchmarks that run the connector inside an Odoo database share.

The Odoo set-up (``put_odoo_on_path``, ``open_registry``), the company's Microsoft app on the
local tenant (``register_app``, ``configure_company``), users connected to a tenant mailbox
(``mailbox_values``, ``connect``), syncs in one transaction that is rolled back
(``no_commit_progress``) and the process's peak memory (``peak_rss_mib``). Nothing here imports
Odoo before ``put_odoo_on_path`` (or the script's own set-up) has put its source on ``sys.path``.
"""

import os
import resource
import sys
from unittest.mock import patch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ODOO_SRC = os.environ.get("ODOO_SRC", "/opt/odoo19")
HOME = os.environ.get("EXCHANGE_CONNECTOR_HOME", os.path.expanduser("~/.local/share/exchange_connector"))

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"
REDIRECT_URI = "https://odoo.test/exchange_connector/oauth/callback"
PASSWORD = "Passw0rd!"


def put_odoo_on_path():
    """Odoo's source and the addon's repository (``services``, ``simulator``) on ``sys.path``."""
    for folder in (REPO, ODOO_SRC):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def open_registry(db, create=False):
    """Odoo's registry of ``db``; with ``create``, a missing ``db`` is made with the addon first."""
    import odoo  # noqa: F401, PLC0415 - after put_odoo_on_path()
    from odoo.modules.registry import Registry  # noqa: PLC0415
    from odoo.service import db as db_service  # noqa: PLC0415
    from odoo.tools import config  # noqa: PLC0415

    args = [
        f"--addons-path={ODOO_SRC}/addons,{ODOO_SRC}/odoo/addons,{HOME}/addons",
        f"--data-dir={HOME}/data",
        "--log-level=warn",
        "-d",
        db,
    ]
    for option, variable in (("db_host", "PGHOST"), ("db_port", "PGPORT"), ("db_user", "PGUSER")):
        if os.environ.get(variable):
            args.append(f"--{option}={os.environ[variable]}")
    config.parse_config(args)
    if create and not db_service.exp_db_exist(db):
        print(f"creating database {db} with exchange_connector (once, a minute or two)...", flush=True)
        db_service._create_empty_database(db)
        Registry.new(db, update_module=True, install_modules=["exchange_connector"], new_db_demo=False)
    return Registry(db)


def register_app(tenant):
    """The benchmarks' Microsoft app, registered in the tenant."""
    tenant.register_app(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])


def configure_company(env, tenant, **extra):
    """Point the company's connector settings at the tenant (``extra``: more settings)."""
    params = env["ir.config_parameter"].sudo()
    for key, value in {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authority_host": tenant.base_url,
        "tenant_id": tenant.tenant_id,
        "graph_url": tenant.graph_url,
        "ca_bundle_path": tenant.ca_path,
        **extra,
    }.items():
        params.set_param(f"exchange_connector.{key}", value)


def mailbox_values(tenant, kind, email):
    """A user's settings for the tenant mailbox ``email`` through ``kind`` ("graph" or "ews")."""
    values = {"exchange_account_type": kind, "exchange_email": email}
    if kind == "ews":
        with open(tenant.ca_path, encoding="ascii") as handle:
            values.update(
                exchange_ews_url=tenant.ews_url,
                exchange_ews_username=email,
                exchange_ews_password=PASSWORD,
                exchange_ews_auth="ntlm",
                exchange_verify_tls=True,
                exchange_ca_bundle=handle.read(),
            )
    return values


def sign_in(tenant, email):
    """The token cache of ``email`` after the tenant's real authorization-code flow."""
    # The addon's own module, not services/ by path: the seam then finds what the sign-in cached
    # in it (a first sync asks the tenant's identity endpoint nothing more).
    from odoo.addons.exchange_connector.services.auth import GraphOAuth  # noqa: PLC0415

    oauth = GraphOAuth(CLIENT_ID, CLIENT_SECRET, tenant.authority, verify=tenant.ca_path)
    flow = oauth.start_sign_in(REDIRECT_URI, login_hint=email)
    answer = tenant.browser_sign_in(flow["auth_uri"], email, PASSWORD)
    return oauth.finish_sign_in(flow, answer).cache_blob


def connect(user, tenant):
    """Sign a Graph ``user`` in, then record the connection of ``user``'s mailbox: syncing may start."""
    if user.exchange_account_type == "graph":
        user.exchange_token_cache = sign_in(tenant, user.exchange_email)
    # The user has seen the first-sync preview: the scheduled job syncs the mailbox.
    user._exchange_mark_connected(user.exchange_email).first_sync_pending = False


def no_commit_progress(env):
    """Patch ``ir.cron._commit_progress``: a sync's per-page commits do nothing (one transaction)."""
    return patch.object(type(env["ir.cron"]), "_commit_progress", lambda *args, **kwargs: float("inf"))


def peak_rss_mib():
    """The process's peak resident memory in MiB (Linux counts ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
