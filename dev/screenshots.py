"""Take the Apps page's screenshots from the running demo (``./dev/run``), see dev/screenshots.

Drives the system Chromium over the Chrome DevTools Protocol (``websocket-client``, an Odoo
requirement), logged in as a demo user, and writes PNGs into ``static/description/``:

- ``discuss_first_sync.png``: the Discuss section of a newly connected mailbox, before its first sync;
- ``discuss.png``: the same section once "Start the first sync" ran in the background;
- ``assign_partner.png``: the assignment wizard on the mail waiting for a partner choice;
- ``preferences.png``: My Preferences on the Office 365 / Exchange tab;
- ``partner_chatter.png``: a partner's chatter with an imported mail.

Plain Python; it changes the demo only as the user would (the clicks above).
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

WIDTH, HEIGHT = 1280, 960
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "static", "description")

#: The section of the Discuss sidebar, and one kind's status line in it.
SECTION = ".o-exchange-DiscussSidebarSync"


class Browser:
    """One headless Chromium page, driven over the DevTools protocol."""

    def __init__(self, binary):
        self.profile = tempfile.mkdtemp(prefix="exchange-screenshots-")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._debugging_port()
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(target for target in pages if target["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.next_id = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def _debugging_port(self):
        """The port Chromium chose, from the file it writes into its profile once it listens."""
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        for _ in range(100):
            if os.path.exists(port_file):
                with open(port_file, encoding="ascii") as handle:
                    lines = handle.read().split("\n")
                if len(lines) > 1:
                    return lines[0]
            time.sleep(0.1)
        raise TimeoutError(f"Chromium did not start (no {port_file})")

    def call(self, method, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            answer = json.loads(self.socket.recv())
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}…: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url):
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'", f"{url} to load")

    def wait(self, condition, what, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({condition})"):
                return
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout}s for {what}")

    def wait_for(self, selector, text="", timeout=60):
        """Wait for an element matching ``selector`` whose text contains ``text``."""
        found = (f"[...document.querySelectorAll({json.dumps(selector)})].some("
                 f"(el) => el.offsetParent !== null && el.textContent.includes({json.dumps(text)}))")
        self.wait(found, f"{selector} with {text!r}", timeout)

    def click(self, selector, text=""):
        self.wait_for(selector, text)
        visible = f"(el) => el.offsetParent !== null && el.textContent.includes({json.dumps(text)})"
        self.evaluate(f"[...document.querySelectorAll({json.dumps(selector)})].find({visible}).click()")

    def settle(self, seconds=1.0):
        """Let animations, fonts and lazy images finish, and the mouse be away from everything."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=WIDTH - 1, y=HEIGHT - 1)
        self.evaluate("document.activeElement && document.activeElement.blur()")
        time.sleep(seconds)

    def screenshot(self, name):
        self.settle()
        data = self.call("Page.captureScreenshot", format="png",
                         clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT, "scale": 1})["data"]
        path = os.path.join(OUT, name)
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))
        print(f"  {os.path.relpath(path)}")

    def rpc(self, model, method, *args, **kwargs):
        """A JSON-RPC call in the page's session (what the web client does)."""
        body = json.dumps({"jsonrpc": "2.0", "method": "call", "params": {
            "model": model, "method": method, "args": list(args), "kwargs": kwargs}})
        headers = "{'Content-Type': 'application/json'}"
        answer = self.evaluate(
            f"fetch('/web/dataset/call_kw', {{method: 'POST', headers: {headers}, "
            f"body: {json.dumps(body)}}}).then((response) => response.json())")
        if answer.get("error"):
            raise RuntimeError(f"{model}.{method}: {answer['error']['data']['message']}")
        return answer["result"]

    def close(self):
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            self.process.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)


def log_in(browser, base_url, login, password):
    browser.goto(f"{base_url}/web/login")
    browser.evaluate(
        f"document.querySelector('input[name=login]').value = {json.dumps(login)};"
        f"document.querySelector('input[name=password]').value = {json.dumps(password)};"
        "document.querySelector('form.oe_login_form').submit()")
    time.sleep(1)
    browser.wait("document.readyState === 'complete' && !location.pathname.startsWith('/web/login')",
                 f"{login} to be logged in (wrong password?)")


def take(base_url, login, password, partner_name, binary):
    browser = Browser(binary)
    try:
        log_in(browser, base_url, login, password)
        print(f"Logged in as {login} on {base_url}; writing:")

        # Discuss, a newly connected mailbox: the dry run of its first sync.
        browser.goto(f"{base_url}/odoo/discuss")
        browser.wait_for(SECTION)
        mailbox = browser.rpc("exchange.mailbox", "exchange_cockpit")
        if mailbox.get("first_sync_pending"):
            browser.wait_for(f"{SECTION} .o-exchange-DiscussSidebarSync-preview", "The first sync would")
            browser.screenshot("discuss_first_sync.png")
            browser.click(f"{SECTION} button[name=exchange_start_first_sync]")
        elif not any(kind["last_text"] for kind in mailbox.get("kinds", [])):
            browser.click(f"{SECTION} button[name=exchange_sync_now]")
        # The scheduled job runs it in the background; the section follows over the bus.
        browser.wait_for(f"{SECTION} [data-kind=mails] .o-exchange-DiscussSidebarSync-kindStatus", "imported",
                         timeout=180)
        browser.wait(f"!document.querySelector('{SECTION} .fa-spin')", "the sync to end", timeout=180)
        browser.wait_for(f"{SECTION} a[name=exchange_waiting]")
        browser.screenshot("discuss.png")

        # The mail waiting for a partner choice, from the section's count.
        browser.click(f"{SECTION} a[name=exchange_waiting]")
        browser.wait_for(".modal .o_form_view")
        browser.settle()
        # The mail's header and preview above, the partners to choose from below.
        titles = "[...document.querySelectorAll('.modal .o_horizontal_separator, .modal .o_form_label')]"
        browser.evaluate(f"{titles}.find((el) => /candidates/i.test(el.textContent))"
                         ".scrollIntoView({block: 'center'})")
        browser.evaluate("document.querySelector('.modal .o_data_row .o_boolean_toggle input, "
                         ".modal .o_data_row .o-checkbox input').click()")  # the user's choice
        browser.screenshot("assign_partner.png")
        browser.click(".modal .btn-close")

        # My Preferences on the Office 365 / Exchange tab (my mailbox).
        uid = browser.rpc("res.users", "search_read", [("login", "=", login)], ["id"])[0]["id"]
        browser.goto(f"{base_url}/odoo/my-mailbox/{uid}")
        browser.wait_for("a[role=tab].active", "Office 365 / Exchange")
        browser.wait_for(".o_form_view .o_field_widget")
        browser.screenshot("preferences.png")

        # A partner's chatter after the import.
        partner = browser.rpc("res.partner", "search_read", [("name", "=", partner_name)], ["id"], limit=1)
        if not partner:
            raise RuntimeError(f"no partner named {partner_name!r} in the demo")
        browser.goto(f"{base_url}/odoo/action-base.action_partner_form/{partner[0]['id']}")
        browser.wait_for(".o-mail-Message", "")
        browser.settle()
        # The chatter is under the form at this width: show the imported mails, not the empty form.
        browser.evaluate("document.querySelector('.o-mail-Chatter').scrollIntoView({block: 'start'})")
        browser.screenshot("partner_chatter.png")
    finally:
        browser.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('HTTP_PORT', '8069')}")
    parser.add_argument("--login", default="marco", help="a demo user with an on-premises mailbox")
    parser.add_argument("--password", default=None, help="Odoo password (the demo's: the login)")
    parser.add_argument("--partner", default="Ferrari Imballaggi SpA",
                        help="the partner whose chatter is shown")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or shutil.which("google-chrome") or "/usr/bin/chromium")
    args = parser.parse_args()
    try:
        urllib.request.urlopen(f"{args.url}/web/login", timeout=5)
    except OSError:
        sys.exit(f"Odoo does not answer on {args.url}: start the demo with ./dev/run first.")
    take(args.url, args.login, args.password or args.login, args.partner, args.chromium)


if __name__ == "__main__":
    main()
