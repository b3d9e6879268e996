import { Component, onWillStart, useState } from "@odoo/owl";

import { discussSidebarItemsRegistry } from "@mail/core/public_web/discuss_sidebar";

import { deserializeDateTime, formatDateTime } from "@web/core/l10n/dates";
import { _t } from "@web/core/l10n/translation";
import { user } from "@web/core/user";
import { useService } from "@web/core/utils/hooks";

/**
 * "Office 365 / Exchange" entry of the Discuss sidebar: the user's mailbox state, a "Sync now"
 * button and a link to "My sync log".
 *
 * Sync now asks the server for a run (res.users.action_exchange_sync_now): the scheduled job
 * does the work in the background, never this request. The connector syncs all enabled kinds
 * of a mailbox in one run, so there is one button rather than one per kind.
 */
export class DiscussSidebarExchange extends Component {
    static template = "exchange_connector.DiscussSidebarExchange";
    static props = {};

    setup() {
        super.setup();
        this.orm = useService("orm");
        this.action = useService("action");
        this.store = useService("mail.store");
        this.state = useState({ summary: { configured: false }, requesting: false });
        // Awaited, so that the sidebar appears with the entry (or without it) at once, not
        // with an entry popping in later.
        onWillStart(() => this.loadSummary());
    }

    async loadSummary() {
        try {
            this.state.summary = await this.orm.silent.call("res.users", "exchange_sync_summary");
        } catch (error) {
            // The connector must never keep Discuss from opening.
            console.warn("Office 365 / Exchange: mailbox summary unavailable", error);
            this.state.summary = { configured: false };
        }
    }

    get canSync() {
        return this.state.summary.state === "connected" && !this.state.requesting;
    }

    get lastSyncText() {
        const lastSync = this.state.summary.last_sync;
        if (!lastSync) {
            return _t("Not synced yet");
        }
        return _t("Last sync: %(date)s", { date: formatDateTime(deserializeDateTime(lastSync)) });
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

    onClickSyncLog() {
        return this.action.doAction("exchange_connector.action_exchange_my_sync_run");
    }

    async onClickPreferences() {
        // As the user menu opens "My Preferences"; the page reloads once they are saved.
        const preferences = await this.orm.call("res.users", "action_get");
        preferences.res_id = user.userId;
        return this.action.doAction(preferences, { onClose: () => this.loadSummary() });
    }
}

discussSidebarItemsRegistry.add("exchange_connector", DiscussSidebarExchange, { sequence: 25 });
