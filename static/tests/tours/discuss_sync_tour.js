import { registry } from "@web/core/registry";

const tours = registry.category("web_tour.tours");
const ENTRY = ".o-mail-DiscussSidebar .o-exchange-DiscussSidebarSync";

/**
 * A user whose on-premises mailbox is connected but never synced asks for a sync from Discuss:
 * a notification confirms the request and the entry says it is pending.
 */
tours.add("exchange_connector_discuss_sync", {
    steps: () => [
        {
            content: "The Discuss sidebar shows the mailbox, never synced yet",
            trigger: `${ENTRY} .o-exchange-DiscussSidebarSync-status:contains('Not synced yet')`,
        },
        {
            content: "Sync now",
            trigger: `${ENTRY} button[name=exchange_sync_now]:enabled`,
            run: "click",
        },
        {
            content: "A notification confirms that the sync was requested",
            trigger: ".o_notification_manager .o_notification:contains('My sync log')",
        },
        {
            content: "The entry shows the pending sync",
            trigger: `${ENTRY} .o-exchange-DiscussSidebarSync-status:contains('Sync requested')`,
        },
        {
            content: "Open My sync log",
            trigger: `${ENTRY} button[name=exchange_sync_log]`,
            run: "click",
        },
        {
            content: "The user's sync log opens",
            trigger: ".o_breadcrumb:contains('My sync log')",
        },
    ],
});

/** A user without a mailbox gets a Discuss sidebar without the connector's entry. */
tours.add("exchange_connector_discuss_no_mailbox", {
    steps: () => [
        {
            // The sidebar mounts once every item, the connector's included, has loaded its data.
            content: "The Discuss sidebar is there, without the Office 365 / Exchange entry",
            trigger: `.o-mail-DiscussSidebar:has(.o-mail-Mailbox):not(:has(.o-exchange-DiscussSidebarSync))`,
        },
    ],
});

/**
 * A mailbox locked after failed sign-ins cannot be synced: the Discuss entry says so and leads
 * to the preferences, where "Sync now" is hidden until the user reconnects.
 */
tours.add("exchange_connector_discuss_locked", {
    steps: () => [
        {
            content: "Sync now is disabled for a locked mailbox",
            trigger: `${ENTRY} button[name=exchange_sync_now]:disabled`,
        },
        {
            content: "Follow the link to the preferences",
            trigger: `${ENTRY} a[name=exchange_reconnect]:contains('Password refused')`,
            run: "click",
        },
        {
            content: "My Preferences open on the Office 365 / Exchange tab (my mailbox)",
            trigger: ".modal a[role=tab].active:contains('Office 365 / Exchange')",
        },
        {
            content: "Test connection is offered, Sync now is not",
            trigger:
                ".modal div[name=exchange_account_buttons]:has(button[name=action_exchange_test_connection])" +
                ":not(:has(button[name=action_exchange_sync_now]))",
        },
    ],
});

/** "Sync now" on the Office 365 / Exchange tab of My Preferences. */
tours.add("exchange_connector_preferences_sync", {
    steps: () => [
        { content: "Open the user menu", trigger: ".o_user_menu button", run: "click" },
        { content: "Open My Preferences", trigger: "[data-menu=preferences]", run: "click" },
        {
            content: "Open the Office 365 / Exchange tab",
            trigger: ".modal a[role=tab]:contains('Office 365 / Exchange')",
            run: "click",
        },
        {
            content: "Sync now",
            trigger: ".modal button[name=action_exchange_sync_now]",
            run: "click",
        },
        {
            content: "A notification confirms that the sync was requested",
            trigger: ".o_notification_manager .o_notification:contains('My sync log')",
        },
    ],
});

/** An administrator asks for a sync of another user's mailbox from the user form. */
tours.add("exchange_connector_user_form_sync", {
    steps: () => [
        {
            content: "Open the Office 365 / Exchange tab",
            trigger: ".o_form_view a[role=tab]:contains('Office 365 / Exchange')",
            run: "click",
        },
        {
            content: "Sync now",
            trigger: ".o_form_view button[name=action_exchange_sync_now]",
            run: "click",
        },
        {
            content: "A notification confirms that the sync was requested",
            trigger: ".o_notification_manager .o_notification:contains('My sync log')",
        },
    ],
});
