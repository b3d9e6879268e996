import { Component, onWillStart, onWillUpdateProps, useState } from "@odoo/owl";

import { Chatter } from "@mail/chatter/web_portal/chatter";

import { _t } from "@web/core/l10n/translation";
import { useService } from "@web/core/utils/hooks";

/**
 * "In my Outlook" toggle in the chatter of a partner, next to the followers: subscribing to a
 * partner is like following it. The counter is the number of users who have it in Outlook.
 *
 * A click only records the (un)subscription (res.partner.action_exchange_subscribe /
 * action_exchange_unsubscribe); the next sync of the user's mailbox pushes the contact.
 */
export class ExchangeOutlookToggle extends Component {
    static template = "exchange_connector.ExchangeOutlookToggle";
    static props = {
        partnerId: Number,
        compact: { type: Boolean, optional: true },
        onChanged: { type: Function, optional: true },
    };

    setup() {
        super.setup();
        this.orm = useService("orm");
        this.state = useState({ loaded: false, inMyOutlook: false, count: 0, busy: false });
        onWillStart(() => this.load(this.props.partnerId));
        onWillUpdateProps((nextProps) => {
            if (nextProps.partnerId !== this.props.partnerId) {
                return this.load(nextProps.partnerId);
            }
        });
    }

    async load(partnerId) {
        try {
            const [values] = await this.orm.silent.read(
                "res.partner",
                [partnerId],
                ["exchange_in_my_outlook", "exchange_subscriber_count"]
            );
            this.state.inMyOutlook = values.exchange_in_my_outlook;
            this.state.count = values.exchange_subscriber_count;
            this.state.loaded = true;
        } catch (error) {
            // The connector must never keep a partner's chatter from opening.
            console.warn("Office 365 / Exchange: Outlook subscription unavailable", error);
            this.state.loaded = false;
        }
    }

    get label() {
        return this.state.inMyOutlook ? _t("In my Outlook") : _t("Outlook");
    }

    get title() {
        return this.state.inMyOutlook
            ? _t("In my Outlook contacts: click to take it out")
            : _t("Add to my Outlook contacts (and my phone)");
    }

    async onClick() {
        this.state.busy = true;
        try {
            const method = this.state.inMyOutlook
                ? "action_exchange_unsubscribe"
                : "action_exchange_subscribe";
            await this.orm.call("res.partner", method, [[this.props.partnerId]]);
            await this.load(this.props.partnerId);
            await this.props.onChanged?.();
        } finally {
            this.state.busy = false;
        }
    }
}

Object.assign(Chatter.components, { ExchangeOutlookToggle });
