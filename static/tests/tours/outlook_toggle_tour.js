import { registry } from "@web/core/registry";

const TOGGLE = ".o-mail-Chatter button[name=exchange_outlook_toggle]";

/**
 * A user puts a partner in their Outlook from the chatter, next to the followers; the form then
 * lists them among the users who have it. Then they take it out again.
 */
registry.category("web_tour.tours").add("exchange_connector_outlook_toggle", {
    steps: () => [
        {
            content: "The chatter offers Outlook next to the followers",
            trigger: `${TOGGLE}:not(.active):contains('Outlook') + .o-mail-Followers`,
        },
        {
            content: "Add the partner to my Outlook",
            trigger: `${TOGGLE}:not(.active)`,
            run: "click",
        },
        {
            content: "It is in my Outlook",
            trigger: `${TOGGLE}.active:contains('In my Outlook')`,
        },
        {
            content: "One user has it",
            trigger: `${TOGGLE}[data-subscribers='1']`,
        },
        {
            content: "The form lists who has it in Outlook",
            trigger: ".o_notebook .nav-link:contains('Outlook')",
            run: "click",
        },
        {
            content: "I am among them",
            trigger: ".o_field_widget[name=exchange_subscriber_ids] .o_tag:contains('Outlook Toggle')",
        },
        {
            content: "Take it out again",
            trigger: `${TOGGLE}.active`,
            run: "click",
        },
        {
            content: "It is no longer in my Outlook",
            trigger: `${TOGGLE}:not(.active)[data-subscribers='0']`,
        },
    ],
});
