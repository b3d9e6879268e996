import { Component, onWillStart, onWillUnmount, status, useState } from "@odoo/owl";

import { discussSidebarItemsRegistry } from "@mail/core/public_web/discuss_sidebar";

import { deserializeDateTime, formatDateTime } from "@web/core/l10n/dates";
import { _t } from "@web/core/l10n/translation";
import { user } from "@web/core/user";
import { useService } from "@web/core/utils/hooks";

/** Milliseconds between two reads of the section while a sync is pending and the bus is down. */
const BUSY_REFRESH_MS = 2000;
/** Events of the bus service after which notifications may have been missed: read the section again. */
const BUS_BACK_EVENTS = ["BUS:CONNECT", "BUS:RECONNECT"];

/**
 * "Office 365 / Exchange" section of the Discuss sidebar, the user's cockpit: the connection
 * (or the one button that fixes it), the last run of each kind with its counts, the mails
 * waiting for a partner choice, and the buttons Fetch mails / Fetch events / Push contacts /
 * Sync all.
 *
 * A button only asks the server for a sync (exchange.mailbox.exchange_cockpit_request): the
 * scheduled job does the work in the background, never this request. The job tells the
 * user's tabs over the bus ("exchange_connector/cockpit") when a kind starts and ends, and the
 * section reads itself again. Only while the bus is not connected does a pending sync make it
 * re-read itself every two seconds instead (and once more when the bus is back), so that it
 * never stays stale; a connected bus is the only way the outcome arrives.
 */
export class DiscussSidebarExchange extends Component {
    static template = "exchange_connector.DiscussSidebarExchange";
    static props = {};

    setup() {
        super.setup();
        this.orm = useService("orm");
        this.action = useService("action");
        this.busService = useService("bus_service");
        this.store = useService("mail.store");
        this.state = useState({
            summary: { configured: false },
            requesting: false,
            preview: null,
            // Whether the bus is connected, i.e. the job's notifications reach this tab. Followed
            // through the events: a stopped bus (the browser went offline) says "disconnect"
            // without changing its worker's state.
            live: this.busService.workerState === "CONNECTED",
        });
        this.refreshTimer = null;
        this.onBusNotification = () => this.loadSummary();
        this.onBusBack = () => {
            this.state.live = true;
            this.loadSummary();
        };
        this.onBusDown = () => {
            this.state.live = false;
            if (this.isBusy) {
                this.loadSummary(); // starts the fallback re-reads
            }
        };
        this.onWorkerState = ({ detail }) => (this.state.live = detail === "CONNECTED");
        this.busService.subscribe("exchange_connector/cockpit", this.onBusNotification);
        for (const event of BUS_BACK_EVENTS) {
            this.busService.addEventListener(event, this.onBusBack);
        }
        this.busService.addEventListener("BUS:DISCONNECT", this.onBusDown);
        this.busService.addEventListener("BUS:WORKER_STATE_UPDATED", this.onWorkerState);
        // Awaited, so that the sidebar appears with the entry (or without it) at once, not
        // with an entry popping in later.
        onWillStart(() => this.loadSummary());
        onWillUnmount(() => {
            this.busService.unsubscribe("exchange_connector/cockpit", this.onBusNotification);
            for (const event of BUS_BACK_EVENTS) {
                this.busService.removeEventListener(event, this.onBusBack);
            }
            this.busService.removeEventListener("BUS:DISCONNECT", this.onBusDown);
            this.busService.removeEventListener("BUS:WORKER_STATE_UPDATED", this.onWorkerState);
            clearTimeout(this.refreshTimer);
        });
    }

    async loadSummary() {
        clearTimeout(this.refreshTimer);
        try {
            this.state.summary = await this.orm.silent.call("exchange.mailbox", "exchange_cockpit");
        } catch (error) {
            if (status(this) === "destroyed") {
                return; // Discuss was left meanwhile
            }
            // The connector must never keep Discuss from opening.
            console.warn("Office 365 / Exchange: mailbox summary unavailable", error);
            this.state.summary = { configured: false };
        }
        if (status(this) === "destroyed") {
            return;
        }
        if (this.state.summary.first_sync_pending && !this.state.preview) {
            // Not awaited: the dry run asks Microsoft, Discuss does not wait for it.
            this.loadPreview();
        }
        clearTimeout(this.refreshTimer); // another read may have ended meanwhile
        if (this.isBusy && !this.isLive) {
            this.refreshTimer = setTimeout(() => this.loadSummary(), BUSY_REFRESH_MS);
        }
    }

    async loadPreview() {
        this.state.preview = { loading: true };
        try {
            this.state.preview = await this.orm.silent.call("exchange.mailbox", "exchange_cockpit_preview");
        } catch (error) {
            this.state.preview = { error: error.data?.message || String(error) };
        }
    }

    async onClickStartFirstSync() {
        this.state.requesting = true;
        try {
            this.state.summary = await this.orm.call("exchange.mailbox", "exchange_cockpit_start_first_sync");
            this.state.preview = null;
        } finally {
            this.state.requesting = false;
            await this.loadSummary();
        }
    }

    get isBusy() {
        const summary = this.state.summary;
        return Boolean(
            summary.sync_requested || (summary.kinds || []).some((kind) => kind.requested || kind.running)
        );
    }

    get isLive() {
        return this.state.live;
    }

    get canSync() {
        return this.state.summary.state === "connected" && !this.state.requesting;
    }

    get kinds() {
        return (this.state.summary.kinds || []).filter((kind) => kind.enabled);
    }

    get lastSyncText() {
        const lastSync = this.state.summary.last_sync;
        if (!lastSync) {
            return _t("Not synced yet");
        }
        return _t("Last sync: %(date)s", { date: formatDateTime(deserializeDateTime(lastSync)) });
    }

    /** The dry run's lines, whole sentences so that each language can order them its own way. */
    previewMailsText(folder) {
        const values = { count: folder.count, folder: folder.folder };
        return folder.exists
            ? _t("import %(count)s mails from %(folder)s", values)
            : _t("import %(count)s mails from %(folder)s (a folder it creates)", values);
    }

    get previewEventsText() {
        return _t("import %(count)s calendar entries of your window", { count: this.state.preview.events });
    }

    get previewContactsText() {
        return _t("push %(count)s contacts to Outlook", { count: this.state.preview.contacts });
    }

    kindLabel(kind) {
        return {
            mails: _t("Mails"),
            events: _t("Events"),
            contacts: _t("Contacts"),
        }[kind.kind];
    }

    buttonLabel(kind) {
        return {
            mails: _t("Fetch mails"),
            events: _t("Fetch events"),
            contacts: _t("Push contacts"),
        }[kind.kind];
    }

    kindStatus(kind) {
        if (kind.running) {
            return _t("Running…");
        }
        if (kind.requested) {
            return _t("Requested; it runs in the background.");
        }
        return kind.last_text || _t("Not run yet");
    }

    async request(kind) {
        this.state.requesting = true;
        try {
            this.state.summary = await this.orm.call("exchange.mailbox", "exchange_cockpit_request", [], {
                kind: kind || null,
            });
        } finally {
            this.state.requesting = false;
            await this.loadSummary();
        }
    }

    onClickKind(kind) {
        return this.request(kind.kind);
    }

    async onClickSyncNow() {
        this.state.requesting = true;
        try {
            const notification = await this.orm.call("res.users", "action_exchange_sync_now", [
                [user.userId],
            ]);
            if (notification) {
                await this.action.doAction(notification);
            }
        } finally {
            this.state.requesting = false;
            await this.loadSummary();
        }
    }

    async onClickWaiting() {
        const wizard = await this.orm.call("exchange.mailbox", "exchange_cockpit_open_waiting");
        return this.action.doAction(wizard, { onClose: () => this.loadSummary() });
    }

    async onClickConnect() {
        const action = await this.orm.call("res.users", "action_exchange_connect", [[user.userId]]);
        return this.action.doAction(action);
    }

    onClickSyncLog() {
        return this.action.doAction("exchange_connector.action_exchange_my_sync_run");
    }

    async onClickPreferences() {
        // "My Preferences" as the user menu opens them, on the Office 365 / Exchange tab (my
        // mailbox); the page reloads once they are saved.
        const preferences = await this.orm.call("exchange.mailbox", "exchange_cockpit_my_mailbox");
        return this.action.doAction(preferences, {
            onClose: () => {
                this.state.preview = null; // the settings may have changed what the first sync does
                return this.loadSummary();
            },
        });
    }
}

discussSidebarItemsRegistry.add("exchange_connector", DiscussSidebarExchange, { sequence: 25 });
