# Run inside `odoo-bin shell` by dev/run: links the demo database to the local tenant.
# Idempotent: every run brings users, partners and settings back to the demo state.
import json
import os

tenant_file = os.environ.get("EXCHANGE_TENANT_JSON", "")
tenant = None
if os.path.exists(tenant_file):
    with open(tenant_file, encoding="utf-8") as handle:
        tenant = json.load(handle)

# Partners whose addresses appear in the demo mailboxes; two share info@schulz-bau.example so
# the "choose the partner" wizard has something to ask.
DEMO_PARTNERS = [
    ("Weber Maschinenbau AG", "buchhaltung@weber-maschinenbau.example"),
    ("Schulz Bau GmbH", "info@schulz-bau.example"),
    ("Schulz Bau Montage GmbH", "info@schulz-bau.example"),
    ("James Carter (Northwind Traders)", "james.carter@northwind.example"),
    ("Ferrari Imballaggi SpA", "ordini@ferrari-imballaggi.example"),
    ("Ferrari Imballaggi SpA, Amministrazione", "amministrazione@ferrari-imballaggi.example"),
]
Partner = env["res.partner"]
for name, email in DEMO_PARTNERS:
    if not Partner.search([("name", "=", name), ("email", "=", email)], limit=1):
        Partner.create({"name": name, "email": email, "is_company": "(" not in name})

# The Azure app (the tenant's demo app) knows the redirect URI on this address only; Odoo would
# otherwise keep whatever address it was last reached on.
params = env["ir.config_parameter"].sudo()
params.set_param("web.base.url", os.environ.get("EXCHANGE_DEMO_BASE_URL", "http://127.0.0.1:8069"))
params.set_param("web.base.url.freeze", True)

logins = []
if tenant:
    app = tenant["apps"][0]
    for key, value in {
        "tenant_id": tenant["tenant_id"],
        "client_id": app["client_id"],
        "client_secret": app["client_secret"],
        "authority_host": tenant["base_url"],
        "graph_url": tenant["graph_url"],
        "ca_bundle_path": tenant["ca_path"],
    }.items():
        params.set_param(f"exchange_connector.{key}", value)
    with open(tenant["ca_path"], encoding="utf-8") as handle:
        ca_pem = handle.read()
    internal = env.ref("base.group_user")
    for index, mailbox in enumerate(tenant["users"]):
        login = mailbox["email"].split("@")[0]
        user = env["res.users"].with_context(active_test=False).search([("login", "=", login)], limit=1)
        values = {
            "name": mailbox["display_name"], "email": mailbox["email"], "active": True,
            "exchange_email": mailbox["email"],
            # The first demo user reaches the tenant as Office 365 (Graph), the others as an
            # on-premises Exchange (EWS), so both protocols are on show.
            "exchange_account_type": "graph" if index == 0 else "ews",
            "exchange_ews_url": tenant["ews_url"],
            "exchange_ews_username": mailbox["username"] or mailbox["email"],
            "exchange_ews_password": mailbox["password"],
            "exchange_ews_auth": "ntlm",
            "exchange_ca_bundle": ca_pem,
            # Odoo shows the mailbox's times in the zone its owner lives in.
            "tz": mailbox.get("time_zone") or "UTC",
        }
        if not user:
            user = env["res.users"].create(
                {"login": login, "password": login, "group_ids": [(4, internal.id)], **values})
        else:
            user.write(values)
        if user.exchange_account_type == "ews":
            # On-premises mailboxes start syncing once a Test connection succeeded.
            user._exchange_check_connection()
        logins.append((login, login, mailbox["email"], mailbox["password"], user.exchange_account_type,
                       user._exchange_mailbox().state))
env.cr.commit()

print("Demo database ready.")
print("  Log in as admin / admin (administrator)")
for login, password, email, microsoft_password, kind, state in logins:
    if kind == "graph":
        print(f"  or as {login} / {password}  (mailbox {email} via Microsoft Graph: click Connect in "
              f"My Preferences → Office 365 / Exchange, then sign in at Microsoft as {email} / "
              f"{microsoft_password})")
    elif state == "connected":
        print(f"  or as {login} / {password}  (mailbox {email} via EWS, connected with the Exchange "
              f"password {microsoft_password})")
    else:
        print(f"  or as {login} / {password}  (mailbox {email} via EWS, NOT connected: see My "
              f"Preferences → Office 365 / Exchange; Exchange password {microsoft_password})")
if not tenant:
    print("  (no local tenant: mailbox settings were not linked)")
