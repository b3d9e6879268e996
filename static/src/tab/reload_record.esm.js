import { registry } from "@web/core/registry";

/**
 * The "next" of the notifications of the Office 365 / Exchange tab's buttons (Test connection,
 * Create transfer folders): the form reloads its record, so that the tab shows the state the
 * button left at once, in the preferences dialog as on the user form.
 */
function reloadRecord(env, action, options) {
    return options.onClose?.();
}

registry.category("actions").add("exchange_connector_reload_record", reloadRecord);
