import { registry } from "@web/core/registry";

const tours = registry.category("web_tour.tours");
const TAB = ".o_notebook .nav-link.active:contains('Office 365 / Exchange')";

/**
 * Connect, through the local tenant's sign-in page (filled by the test as a person would), back
 * to the Office 365 / Exchange tab that says which mailbox is connected.
 */
tours.add("exchange_connector_connect", {
    steps: () => [
        { content: "The mailbox settings open on the Office 365 / Exchange tab", trigger: TAB },
        {
            content: "The mailbox is not connected yet",
            trigger: "div[name=exchange_health] .badge:contains('Not connected')",
        },
        {
            content: "Connect: off to Microsoft's sign-in page",
            trigger: "button[name=action_exchange_connect]",
            run: "click",
            expectUnloadPage: true,
        },
        { content: "Back in Odoo, on the Office 365 / Exchange tab", trigger: TAB },
        {
            content: "Connected as the signed-in mailbox",
            trigger: "div[name=exchange_connected_email]:contains('alice@contoso.example')",
        },
        {
            content: "The badge says Connected, and Connect is gone",
            trigger: "div[name=exchange_health] .badge:contains('Connected')",
            run() {
                if (document.querySelector("button[name=action_exchange_connect]")) {
                    throw new Error("Connect is still offered after the sign-in");
                }
            },
        },
    ],
});

/**
 * Test connection with a wrong password, then with the right one: the tab shows each outcome at
 * once, without a reload of the page.
 */
tours.add("exchange_connector_test_connection", {
    steps: () => [
        { content: "The mailbox settings open on the Office 365 / Exchange tab", trigger: TAB },
        {
            content: "Test connection (the stored password is wrong)",
            trigger: "button[name=action_exchange_test_connection]",
            run: "click",
        },
        {
            content: "Exchange refused the password",
            trigger: ".o_notification:contains('refused the user name or password')",
        },
        {
            content: "The badge says the check failed, next to the error",
            trigger: "div[name=exchange_health] .badge:contains('last check failed')",
        },
        {
            content: "The error is on the tab",
            trigger: "div[name=exchange_last_error]:contains('refused the user name or password')",
        },
        {
            content: "Type the right password",
            trigger: "div[name=exchange_ews_password] input",
            run: "edit Passw0rd!",
        },
        {
            content: "Test connection again (the form saves first)",
            trigger: "button[name=action_exchange_test_connection]",
            run: "click",
        },
        {
            content: "It works (the transfer folders are still to be created)",
            trigger: ".o_notification:contains('Connected to tamsin@contoso.test')",
        },
        {
            content: "The badge says Connected and the old error is gone",
            trigger: "div[name=exchange_health] .badge:contains('Connected'):not(:contains('failed'))",
            run() {
                if (document.querySelector("div[name=exchange_last_error]")) {
                    throw new Error("The old error is still shown next to Connected");
                }
            },
        },
    ],
});

/** A mailbox whose last sync failed: the Discuss sidebar says so in words, not with a hover-only sign. */
tours.add("exchange_connector_discuss_failed_run", {
    steps: () => [
        {
            content: "The Discuss entry says that the last sync failed, and why",
            trigger:
                ".o-exchange-DiscussSidebarSync div[name=exchange_last_error]" +
                ":contains('Last sync failed'):contains('is unknown')",
        },
    ],
});
