import { registry } from "@web/core/registry";

const TAB = ".o_notebook .nav-link.active:contains('Office 365 / Exchange')";

/**
 * The Office 365 / Exchange tab of a German-speaking user: labels, buttons, the status badge and
 * the answer of Test connection (a sentence of the server) are in German.
 */
registry.category("web_tour.tours").add("exchange_connector_german_tab", {
    steps: () => [
        { content: "The mailbox settings open on the Office 365 / Exchange tab", trigger: TAB },
        {
            content: "The mailbox field groups and labels are German",
            trigger: ".o_form_label:contains('Postfachtyp')",
        },
        { content: "Incoming transfer folder", trigger: ".o_form_label:contains('Eingehender Transferordner')" },
        { content: "What to synchronize", trigger: ".o_horizontal_separator:contains('Was synchronisiert wird')" },
        {
            content: "The buttons are German, none left in English",
            trigger: "button[name=action_exchange_sync_now]:contains('Jetzt synchronisieren')",
            run() {
                const test = document.querySelector("button[name=action_exchange_test_connection]");
                if (!test || !test.textContent.includes("Verbindung testen")) {
                    throw new Error(`Test connection is not in German: ${test?.textContent}`);
                }
                if (document.body.textContent.includes("Test connection")) {
                    throw new Error("English 'Test connection' left on the tab");
                }
            },
        },
        {
            content: "Verbindung testen (the stored password is wrong)",
            trigger: "button[name=action_exchange_test_connection]",
            run: "click",
        },
        {
            content: "The server's answer is German",
            trigger: ".o_notification:contains('Exchange hat den Benutzernamen oder das Passwort abgelehnt')",
        },
        {
            content: "The badge says so in German",
            trigger: "div[name=exchange_health] .badge:contains('Verbunden, aber die letzte Prüfung ist fehlgeschlagen')",
        },
    ],
});

const ENTRY = ".o-mail-DiscussSidebar .o-exchange-DiscussSidebarSync";

/** The Discuss section of a German-speaking user: the JS and OWL strings are German too. */
registry.category("web_tour.tours").add("exchange_connector_german_discuss", {
    steps: () => [
        {
            content: "The connected mailbox, in German",
            trigger: `${ENTRY} .o-exchange-DiscussSidebarSync-mailbox:contains('Verbunden als')`,
        },
        {
            content: "The buttons of each kind (JS strings)",
            trigger: `${ENTRY} button[name=exchange_fetch_mails]:contains('E-Mails abrufen')`,
            run() {
                for (const [name, label] of [
                    ["exchange_fetch_events", "Termine abrufen"],
                    ["exchange_fetch_contacts", "Kontakte übertragen"],
                ]) {
                    const button = document.querySelector(`${ENTRY} button[name=${name}]`);
                    if (!button || !button.textContent.includes(label)) {
                        throw new Error(`${name} does not read "${label}": ${button?.textContent}`);
                    }
                }
            },
        },
        {
            content: "The section's own buttons (OWL template)",
            trigger: `${ENTRY} button[name=exchange_sync_now]:contains('Alles synchronisieren')`,
        },
        {
            content: "The sync log",
            trigger: `${ENTRY} button[name=exchange_sync_log]:contains('Mein Synchronisierungsprotokoll')`,
        },
    ],
});
