import re
from collections import Counter
from pathlib import Path

from odoo.modules import get_module_path
from odoo.tests import HttpCase, TransactionCase, new_test_user, tagged
from odoo.tools.translate import PoFileReader, TranslationModuleReader

from odoo.addons.exchange_connector.services import FolderNotFound

from .common import ConfiguredTenantMixin, no_commit_progress

MODULE = "exchange_connector"
LANGUAGES = {"de": "de_DE", "it": "it_IT"}
# What a translation must carry over: %(name)s / %(size).1f and {name} placeholders (each at least
# once, in any order), and as many %s placeholders and HTML / view tags (with their attributes).
NAMED = re.compile(r"%\(\w+\)[-+ #0]*\d*(?:\.\d+)?[sdfr]|\{\w+\}")
COUNTED = re.compile(r"%[sdfr]|<[^>]+>")


def placeholders(text):
    return Counter(dict.fromkeys(NAMED.findall(text), 1)) + Counter(COUNTED.findall(text))


def read_po(lang):
    """``{source: translation}`` of ``i18n/<lang>.po``, and the sources marked fuzzy, as Odoo reads them."""
    reader = PoFileReader(str(Path(get_module_path(MODULE), "i18n", f"{lang}.po")))
    fuzzy = {entry.msgid for entry in reader.pofile if entry.fuzzy and not entry.obsolete}
    return {row["src"]: row["value"] for row in reader}, fuzzy


def module_terms(cr):
    """Every translatable source of the installed addon, as Odoo exports it: {source: where}."""
    terms = {}
    reader = TranslationModuleReader(cr, modules=[MODULE])
    for module, ttype, name, res_id, source, _value, _comments in reader:
        if module == MODULE:
            terms.setdefault(source, f"{ttype}:{name}" + (f":{res_id}" if res_id else ""))
    return terms


def untranslated(terms, translations, fuzzy):
    return sorted(f"{where}: {source!r}" for source, where in terms.items()
                  if source in fuzzy or not translations.get(source))


def placeholder_mismatches(terms, translations):
    return sorted(f"{source!r} -> {translations[source]!r}" for source in terms
                  if translations.get(source) and placeholders(source) != placeholders(translations[source]))


@tagged("post_install", "-at_install")
class TestTranslations(TransactionCase):
    """Every string of the addon has a German and an Italian translation that keeps its placeholders."""

    def test_every_term_translated_in_german_and_italian(self):
        terms = module_terms(self.env.cr)
        # The reader sees the addon's Python, JS, OWL, view, field, menu and data terms: a few of
        # each, so that an empty reading cannot pass for a complete translation.
        kinds = Counter(where.split(":", 1)[0] for where in terms.values())
        self.assertGreater(len(terms), 400)
        self.assertTrue({"code", "model", "model_terms"} <= set(kinds), kinds)
        self.assertTrue(any("static/src" in where for where in terms.values()), "no JS / OWL term read")
        for lang in LANGUAGES:
            with self.subTest(lang=lang):
                translations, fuzzy = read_po(lang)
                missing = untranslated(terms, translations, fuzzy)
                self.assertFalse(missing, f"{len(missing)} term(s) without a translation in i18n/{lang}.po "
                                 f"(run ./dev/i18n, then translate):\n" + "\n".join(missing))
                broken = placeholder_mismatches(terms, translations)
                self.assertFalse(broken, f"placeholders or tags changed in i18n/{lang}.po:\n"
                                 + "\n".join(broken))
                # Loaded as a language install loads them, Odoo keeps every one (a view term whose
                # markup does not fit would be dropped).
                code = LANGUAGES[lang]
                self.env["res.lang"]._activate_lang(code)
                self.env["ir.module.module"]._load_module_terms([MODULE], [code], overwrite=True)
                loaded = TranslationModuleReader(self.env.cr, modules=[MODULE], lang=code)
                dropped = sorted(
                    f"{ttype}:{name}: {source!r}"
                    for module, ttype, name, _res_id, source, value, _comments in loaded
                    if module == MODULE and translations.get(source, source) != source
                    and value in (None, "", source))
                self.assertFalse(dropped, f"Odoo did not load these terms of i18n/{lang}.po:\n"
                                 + "\n".join(dropped))

    def test_the_check_fails_on_a_new_string_and_on_a_lost_placeholder(self):
        """The check itself: a term nobody translated, or a translation that lost its placeholder."""
        terms = {"Fetch mails": "code:x.js", "%(count)s mails imported": "code:y.py",
                 "<b>Bold</b> %s": "model_terms:ir.ui.view,arch_db"}
        translations = {"Fetch mails": "E-Mails abrufen", "%(count)s mails imported": "E-Mails importiert",
                        "<b>Bold</b> %s": "<b>Fett</b> %s"}
        self.assertEqual(untranslated(terms, translations, set()), [])
        self.assertEqual(untranslated(dict(terms, **{"A new string": "code:z.py"}), translations, set()),
                         ["code:z.py: 'A new string'"])
        self.assertEqual(untranslated(terms, translations, {"Fetch mails"}), ["code:x.js: 'Fetch mails'"])
        self.assertEqual(placeholder_mismatches(terms, translations),
                         ["'%(count)s mails imported' -> 'E-Mails importiert'"])
        self.assertEqual(placeholders('<span invisible="a">x</span> %(size).1f {name} %s'),
                         Counter({'<span invisible="a">': 1, "</span>": 1, "%(size).1f": 1, "{name}": 1,
                                  "%s": 1}))


@tagged("post_install", "-at_install")
class TestGermanTabTour(ConfiguredTenantMixin, HttpCase):
    """The Office 365 / Exchange tab and the Discuss section in German, in a browser."""

    def setUp(self):
        super().setUp()
        self.env["res.lang"]._activate_lang("de_DE")
        self.env["ir.module.module"]._load_module_terms([MODULE], ["de_DE"], overwrite=True)

    def test_tab_in_german(self):
        user, remote = self.ews_user(self.env, "greta", lang="de_DE")
        user._exchange_mark_connected(remote.email)
        user.exchange_ews_password = "not the password"
        self.start_tour(f"/odoo/my-mailbox/{user.id}", "exchange_connector_german_tab", login=user.login)
        self.env.invalidate_all()
        self.assertEqual(user.exchange_health, "failing")
        mailbox = user._exchange_mailbox()
        self.assertIn("Exchange hat den Benutzernamen oder das Passwort abgelehnt", mailbox.last_error,
                      "the error recorded for the user is the sentence they read, in their language")
        self.assertIn("Exchange refused the user name or password",
                      user.with_context(lang="en_US").exchange_last_error,
                      "a reader in another language reads it in theirs")
        self.assertIn("Exchange hat den Benutzernamen oder das Passwort abgelehnt",
                      user.with_context(lang="de_DE").exchange_last_error)

    def test_discuss_section_in_german(self):
        user, _remote = self.connected_user("ews", "gustav", lang="de_DE")
        self.start_tour("/odoo/discuss", "exchange_connector_german_discuss", login=user.login)


@tagged("post_install", "-at_install")
class TestNoticeLanguage(ConfiguredTenantMixin, TransactionCase):
    """A notice is written in the language of the user who reads it, whoever's run met the error."""

    def test_lockout_notice_in_the_users_language(self):
        self.env["res.lang"]._activate_lang("de_DE")
        self.env["ir.config_parameter"].sudo().set_param("exchange_connector.max_auth_failures", 2)
        user, remote = self.ews_user(self.env, "hilde", password="wrong-password", lang="de_DE")
        user._exchange_mark_connected(remote.email)
        for _attempt in range(2):
            # The administrator's environment, in English, meets the refusals.
            self.refused_sign_in(user.with_context(lang="en_US"))
        notice = self.env["mail.message"].search(
            [("partner_ids", "in", user.partner_id.ids), ("model", "=", "res.users")])
        self.assertEqual(len(notice), 1)
        self.assertEqual(notice.subject,
                         "Exchange: Ihr Postfach wird nicht synchronisiert, prüfen Sie Ihr Passwort")
        body = str(notice.body)
        self.assertIn("Die Synchronisierung Ihres Postfachs ist nach 2 fehlgeschlagenen Anmeldungen "
                      "pausiert.", body)
        self.assertIn("Der Connector verwendet Ihr Exchange-Passwort", body)
        self.assertIn("<summary>Details</summary>", body)

    def test_sync_log_in_the_users_language(self):
        self.env["res.lang"]._activate_lang("it_IT")
        user, remote = self.ews_user(self.env, "ilaria", password="wrong-password", lang="it_IT")
        user._exchange_mark_connected(remote.email)
        mailbox = user._exchange_mailbox().with_context(lang=None)  # as the scheduled job runs it
        with no_commit_progress(self.env):
            errors = mailbox._exchange_sync(trigger="manual")
        self.assertEqual(len(errors), 1)
        run = self.env["exchange.sync.run"].search([("user_id", "=", user.id)], order="id desc", limit=1)
        self.assertEqual(run.state, "failed")
        self.assertTrue(run.error_summary.startswith("Exchange ha rifiutato il nome utente o la password"),
                        run.error_summary)
        self.assertTrue(mailbox.last_error.startswith("Exchange ha rifiutato"), mailbox.last_error)

    def test_a_missing_folder_is_a_sentence_not_microsofts_words(self):
        self.env["res.lang"]._activate_lang("de_DE")
        user = new_test_user(self.env, login="gerd.test", name="Gerd", lang="de_DE")
        error = FolderNotFound("Inbox/Transfer In", code="ErrorFolderNotFound")
        self.assertEqual(
            user.with_context(lang="de_DE")._exchange_describe_error(error),
            "Ein Ordner, den der Connector verwendet, fehlt im Postfach: Klicken Sie auf „Verbindung testen“ "
            "und dann, falls angeboten, auf „Transferordner anlegen“ (Inbox/Transfer In).")
