import { registry } from "@web/core/registry";

const tours = registry.category("web_tour.tours");
const ENTRY = ".o-mail-DiscussSidebar .o-exchange-DiscussSidebarSync";
const kind = (name) => `${ENTRY} .o-exchange-DiscussSidebarSync-kind[data-kind=${name}]`;

/**
 * The Discuss cockpit of a connected on-premises mailbox: each button asks for its kind, the
 * scheduled job (run by the test a while after the click triggers it) does the work, and the
 * section shows the outcome without a reload and without polling, over the bus; the count of
 * mails waiting for a partner opens the assignment wizard.
 */
tours.add("exchange_connector_cockpit", {
    steps: () => [
        {
            content: "The section shows the connected mailbox",
            trigger: `${ENTRY} .o-exchange-DiscussSidebarSync-mailbox:contains('Connected as cora@contoso.test')`,
        },
        {
            content: "The section is live: the bus is connected, nothing re-reads it on a timer",
            trigger: `${ENTRY}[data-live=true]`,
        },
        {
            content: "Fetch mails",
            trigger: `${kind("mails")} button[name=exchange_fetch_mails]:enabled`,
            run: "click",
        },
        {
            content: "The click only asked: the section shows the request, the job has not run yet",
            trigger: `${kind("mails")} .o-exchange-DiscussSidebarSync-kindStatus:contains('Requested')`,
        },
        {
            content: "The job ran in the background, and the bus brought its outcome: mails imported, two waiting for a partner",
            trigger: `${kind("mails")} .o-exchange-DiscussSidebarSync-kindStatus:contains('2 mails imported, 2 waiting for you')`,
        },
        {
            content: "The count of mails waiting for a partner choice opens the assignment wizard",
            trigger: `${ENTRY} a[name=exchange_waiting]:contains('2 mails wait for a partner choice')`,
            run: "click",
        },
        {
            content: "The wizard shows the waiting mail and its candidates",
            trigger: ".modal .o_form_view:contains('Anna (Acme)'):contains('Anna (private)')",
        },
        {
            content: "Close the wizard",
            trigger: ".modal .btn-close",
            run: "click",
        },
        {
            content: "Fetch events",
            trigger: `${kind("events")} button[name=exchange_fetch_events]:enabled`,
            run: "click",
        },
        {
            content: "The event imported in the background appears",
            trigger: `${kind("events")} .o-exchange-DiscussSidebarSync-kindStatus:contains('1 event added, 0 updated, 0 removed')`,
        },
        {
            content: "Push contacts",
            trigger: `${kind("contacts")} button[name=exchange_fetch_contacts]:enabled`,
            run: "click",
        },
        {
            content: "The contact pushed in the background appears",
            trigger: `${kind("contacts")} .o-exchange-DiscussSidebarSync-kindStatus:contains('1 contact added, 0 updated, 0 removed')`,
        },
        {
            content: "Sync all",
            trigger: `${ENTRY} button[name=exchange_sync_now]:enabled`,
            run: "click",
        },
        {
            content: "The new mail of the second run appears, and the section is idle again",
            trigger: `${ENTRY}:not(:has(.fa-spin)) .o-exchange-DiscussSidebarSync-kind[data-kind=mails] .o-exchange-DiscussSidebarSync-kindStatus:contains('1 mail imported')` +
                `:not(:contains('waiting'))`,
        },
        {
            content: "The events of the second run: nothing new",
            trigger: `${kind("events")} .o-exchange-DiscussSidebarSync-kindStatus:contains('0 events added')`,
        },
    ],
});

/**
 * A newly connected mailbox waits for its user: the section shows what the first sync would
 * do (a dry run), and the first sync starts, in the background, once the user says so.
 */
tours.add("exchange_connector_first_sync_preview", {
    steps: () => [
        {
            content: "The dry run lists the mails of the incoming transfer folder",
            trigger: `${ENTRY} .o-exchange-DiscussSidebarSync-preview .o-exchange-preview-mails:contains('import 2 mails from Inbox/Transfer In')`,
        },
        {
            content: "… the missing outgoing folder, the calendar and the contacts",
            trigger: `${ENTRY} .o-exchange-DiscussSidebarSync-preview:contains('(a folder it creates)')` +
                `:contains('import 0 calendar entries'):contains('push 0 contacts')`,
        },
        {
            content: "Start the first sync",
            trigger: `${ENTRY} button[name=exchange_start_first_sync]:enabled`,
            run: "click",
        },
        {
            content: "The first sync ran in the background: the two mails are imported",
            trigger: `${kind("mails")} .o-exchange-DiscussSidebarSync-kindStatus:contains('2 mails imported')`,
        },
        {
            content: "The preview is gone",
            trigger: `${ENTRY}:not(:has(.o-exchange-DiscussSidebarSync-preview))`,
        },
    ],
});

/** An Office 365 mailbox that is not connected: the section offers Connect, and nothing to sync. */
tours.add("exchange_connector_cockpit_connect", {
    steps: () => [
        {
            content: "Connect is the one button offered",
            trigger: `${ENTRY}:not(:has(.o-exchange-DiscussSidebarSync-kind)):not(:has(button[name=exchange_sync_now]:enabled))` +
                ` .o-exchange-DiscussSidebarSync-status:contains('Not connected') button[name=exchange_connect]`,
        },
    ],
});

/** An Office 365 mailbox whose sign-in Microsoft refused: "connect again" leads to my mailbox. */
tours.add("exchange_connector_cockpit_reconnect", {
    steps: () => [
        {
            content: "The section says what is wrong, with nothing to sync",
            trigger: `${ENTRY}:not(:has(button[name=exchange_sync_now]:enabled)) a[name=exchange_reconnect]` +
                `:contains('Sign-in refused — connect again in my mailbox')`,
            run: "click",
        },
        {
            content: "My Preferences open on the Office 365 / Exchange tab, with Connect",
            trigger: ".modal:has(a[role=tab].active:contains('Office 365 / Exchange')) button[name=action_exchange_connect]",
        },
    ],
});

/** The bus drops (the browser goes offline): the section falls back to reading itself. */
tours.add("exchange_connector_cockpit_bus_down", {
    steps: () => [
        {
            content: "The section is live",
            trigger: `${ENTRY}[data-live=true]`,
            run: () => window.dispatchEvent(new Event("offline")),
        },
        {
            content: "The bus is down",
            trigger: `${ENTRY}[data-live=false]`,
        },
        {
            content: "Fetch mails",
            trigger: `${kind("mails")} button[name=exchange_fetch_mails]:enabled`,
            run: "click",
        },
        {
            content: "The outcome arrives all the same, read by the section itself",
            trigger: `${kind("mails")} .o-exchange-DiscussSidebarSync-kindStatus:contains('1 mail imported')`,
        },
    ],
});
