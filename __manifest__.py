{
    "name": "Exchange & Office 365 Connector",
    "summary": "Mails and meetings from Exchange / Office 365 into Odoo, partners out to Outlook contacts "
    "(in English, German and Italian)",
    "version": "19.0.2.0.0",
    "category": "Productivity/Discuss",
    "author": "Exchange Connector Team",
    "website": "https://github.com/exchange-connector/exchange_connector",
    "license": "LGPL-3",
    "depends": ["mail", "calendar", "contacts"],
    "external_dependencies": {
        "python": ["msal", "exchangelib", "requests", "lxml"],
    },
    "data": [
        "security/exchange_connector_security.xml",
        "security/ir.model.access.csv",
        "security/exchange_contact_security.xml",
        "data/ir_cron_data.xml",
        "views/exchange_sync_run_views.xml",
        "views/exchange_mailbox_views.xml",
        "views/res_users_views.xml",
        "views/res_config_settings_views.xml",
        "views/exchange_menus.xml",
        "security/exchange_mail_security.xml",
        "views/exchange_mail_views.xml",
        "views/res_config_settings_mail_views.xml",
        "wizard/exchange_assign_partner_views.xml",
        "views/calendar_event_views.xml",
        "views/exchange_contact_views.xml",
    ],
    "assets": {
        "web.assets_backend": [
            "exchange_connector/static/src/discuss/*",
            "exchange_connector/static/src/tab/*",
            "exchange_connector/static/src/contacts/*",
            "exchange_connector/static/src/mail_import/*",
        ],
        "web.assets_tests": [
            "exchange_connector/static/tests/tours/*.js",
        ],
    },
    "uninstall_hook": "uninstall_hook",
    "application": True,
}
