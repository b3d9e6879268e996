import { registry } from "@web/core/registry";

/**
 * An imported mail on a partner's chatter says whose mailboxes it came from.
 */
registry.category("web_tour.tours").add("exchange_connector_imported_mail_chatter", {
    steps: () => [
        {
            content: "The imported mail is on the chatter",
            trigger: ".o-mail-Message:contains('Quarterly figures')",
        },
        {
            content: "It names the mailboxes it was in",
            trigger: ".o-mail-Message .o-exchange-MessageMailboxes:contains('In the mailboxes of'):contains('Chatter Reader'):contains('Second Holder')",
        },
    ],
});
