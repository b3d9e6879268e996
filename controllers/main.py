import logging
import re

from werkzeug.exceptions import Forbidden

from odoo import http
from odoo.exceptions import UserError
from odoo.http import request
from odoo.tools import consteq

from ..models.exchange_mailbox_connection import OAUTH_CALLBACK_PATH
from ..services import ExchangeError

_logger = logging.getLogger(__name__)

# msal's flow (PKCE verifier, nonce, state) stays server-side, in the user's HTTP session;
# the callback pops it, so an answer can be redeemed once only.
OAUTH_FLOW_SESSION_KEY = "exchange_connector_oauth_flow"
# What the sign-in answer carries that must not reach a log: the code is redeemable (with the PKCE
# verifier) until it expires, the others identify the sign-in.
SECRET_CALLBACK_PARAMETER = re.compile(r"(?<=[?&])(code|state|session_state|client_info|id_token)=[^&\s\"]*")
MAX_LOGGED_PARAMETER = 200


class OAuthCallbackLogFilter(logging.Filter):
    """Blank the sign-in answer's secrets in the HTTP access log line of the callback.

    The answer comes back as a GET (see ``exchange.mailbox._exchange_oauth_start``), and Odoo's server
    logs every request line, query included.
    """

    def filter(self, record):
        message = record.getMessage()
        if OAUTH_CALLBACK_PATH in message:
            record.msg, record.args = SECRET_CALLBACK_PARAMETER.sub(r"\1=…", message), ()
        return True


def loggable(text):
    """``text`` on one log line: line breaks and other control characters escaped, length bounded."""
    text = (text or "")[:MAX_LOGGED_PARAMETER]
    return text.encode("unicode_escape").decode("ascii")


if not any(isinstance(known, OAuthCallbackLogFilter) for known in logging.getLogger("werkzeug").filters):
    logging.getLogger("werkzeug").addFilter(OAuthCallbackLogFilter())


class ExchangeOAuthController(http.Controller):
    @http.route("/exchange_connector/oauth/start", type="http", auth="user", methods=["GET"])
    def exchange_oauth_start(self, token=None):
        """Start the current user's Office 365 sign-in and send the browser to Microsoft."""
        user = request.env.user
        if not user._exchange_connect_token_is_valid(token):
            _logger.warning("Office 365 sign-in start refused for %s: no valid Connect token", user.login)
            raise Forbidden()
        try:
            flow = user._exchange_oauth_start()
        except ExchangeError as exc:
            return self._error_page(user._exchange_describe_error(exc))
        except UserError as exc:
            return self._error_page(exc.args[0])
        request.session[OAUTH_FLOW_SESSION_KEY] = flow
        return request.redirect(flow["auth_uri"], local=False)

    @http.route(OAUTH_CALLBACK_PATH, type="http", auth="user", methods=["GET"])
    def exchange_oauth_callback(self, state=None, error=None, error_description=None, **kwargs):
        """Where Microsoft sends the browser back: check the state, redeem the code, store the tokens."""
        user = request.env.user
        if not user._exchange_oauth_state_is_valid(state):
            _logger.warning("Office 365 sign-in answer refused for %s: state forged or of another user",
                            user.login)
            raise Forbidden()
        flow = request.session.pop(OAUTH_FLOW_SESSION_KEY, None)
        if not flow or not consteq(flow.get("state") or "", state):
            _logger.warning("Office 365 sign-in answer refused for %s: no sign-in pending (replayed?)",
                            user.login)
            raise Forbidden()
        if error:
            # Both come from the browser's URL: anyone may put a line break in them.
            _logger.warning("Office 365 sign-in of %s failed at Microsoft: %s %s",
                            user.login, loggable(error), loggable(error_description))
            return self._error_page(request.env._(
                "Microsoft did not sign you in (%(error)s): click Connect to try again.",
                error=error[:MAX_LOGGED_PARAMETER]))
        try:
            user._exchange_oauth_finish(flow, dict(kwargs, state=state))
        except ExchangeError as exc:
            return self._error_page(user._exchange_describe_error(exc))
        except UserError as exc:
            return self._error_page(exc.args[0])
        return request.redirect(self._preferences_url())

    def _preferences_url(self):
        # Always a fixed internal page: nothing from the request decides where the browser goes. The
        # user's preferences, opened on the Office 365 / Exchange tab (action_exchange_my_mailbox).
        return f"/odoo/my-mailbox/{request.env.user.id}"

    def _error_page(self, message):
        return request.render("exchange_connector.oauth_error", {
            "error": message,
            "redirect_url": self._preferences_url(),
        }, status=400)
