"""Run the local tenant standalone.

    cd /work/main && python -m simulator --port 8443 --scenario simulator/scenarios/demo.yaml


Prints the URLs, CA path, tenant id and app credentials, writes them to
``<state-dir>/tenant.json`` and serves until SIGTERM/SIGINT.
"""

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading

from .server import Tenant

DEFAULT_SCENARIO = os.path.join(os.path.dirname(__file__), "scenarios", "demo.yaml")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m simulator", description="Run the local Microsoft tenant standalone."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    parser.add_argument(
        "--scenario", default=DEFAULT_SCENARIO, help="YAML/JSON scenario ('' for an empty tenant)"
    )
    parser.add_argument(
        "--state-dir", default=None, help="where ca.pem and tenant.json go (default: a temp dir)"
    )
    parser.add_argument(
        "--redirect-uri",
        action="append",
        default=[],
        help="also accept this redirect URI for every app of the scenario (repeatable): the address "
        "the Odoo in front of this tenant really runs on",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Handlers first: whoever reads the printed URLs may signal us right away.
    stopped = threading.Event()

    def request_stop(signum, frame):
        stopped.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="exchange-tenant-")
    os.makedirs(state_dir, exist_ok=True)
    tenant = Tenant.start(scenario=args.scenario or None, host=args.host, port=args.port, state_dir=state_dir)
    for app in tenant.apps.values():
        app.redirect_uris.extend(uri for uri in args.redirect_uri if uri not in app.redirect_uris)
    info = tenant.info()
    with open(os.path.join(state_dir, "tenant.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    lines = [
        "Local Microsoft tenant running",
        f"  authority : {tenant.authority}",
        f"  graph     : {tenant.graph_url}",
        f"  ews       : {tenant.ews_url}",
        f"  CA (PEM)  : {tenant.ca_path}",
        f"  tenant id : {tenant.tenant_id}",
    ]
    for app in info["apps"]:
        lines.append(
            "  app       : {}  client_id={}  client_secret={}".format(
                app["name"], app["client_id"], app["client_secret"]
            )
        )
    for user in info["users"]:
        lines.append("  user      : {} / {}".format(user["email"], user["password"]))
    lines.append("  state     : {}".format(os.path.join(state_dir, "tenant.json")))
    print("\n".join(lines), flush=True)

    while not stopped.wait(3600):
        pass
    tenant.stop()
    print("tenant stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
