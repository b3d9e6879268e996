import { registry } from "@web/core/registry";

/**
 * A user links an on-premises mailbox from "My Preferences": the EWS fields appear only once the
 * account type asks for them, and saving stores them on the user's own record.
 */
registry.category("web_tour.tours").add("exchange_connector_preferences", {
    steps: () => [
        { content: "Open the user menu", trigger: ".o_user_menu button", run: "click" },
        { content: "Open My Preferences", trigger: "[data-menu=preferences]", run: "click" },
        {
            content: "Open the Office 365 / Exchange tab",
            trigger: ".modal a[role=tab]:contains('Office 365 / Exchange')",
            run: "click",
        },
        {
            content: "No EWS field for an Office 365 mailbox",
            trigger: ".modal div[name=exchange_email]",
            run() {
                if (document.querySelector(".modal div[name=exchange_ews_url]")) {
                    throw new Error("The EWS URL is shown for an Office 365 mailbox");
                }
            },
        },
        {
            content: "Open the mailbox type menu",
            trigger: ".modal div[name=exchange_account_type] .o_select_menu_toggler",
            run: "click",
        },
        {
            content: "Choose Exchange on-premises",
            trigger: ".o_select_menu_item:contains('Exchange on-premises')",
            run: "click",
        },
        {
            content: "Enter the EWS URL",
            trigger: ".modal div[name=exchange_ews_url] input",
            run: "edit https://exchange.example.org/EWS/Exchange.asmx",
        },
        {
            content: "Enter the EWS password",
            trigger: ".modal div[name=exchange_ews_password] input",
            run: "edit tour-secret",
        },
        {
            content: "Name the outgoing transfer folder",
            trigger: ".modal div[name=exchange_transfer_folder_out] input",
            run: "edit Sent to Odoo",
        },
        {
            content: "Save: the web client reloads to apply the preferences",
            trigger: ".modal button[name=preference_save]",
            run: "click",
            expectUnloadPage: true,
        },
        { content: "Back in the web client, no dialog left", trigger: "body:not(.modal-open) .o_user_menu" },
    ],
});
