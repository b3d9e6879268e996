"""Local Microsoft tenant: identity platform, Graph v1.0 and EWS over one mailbox store.

Used by the tests, the benchmarks and the demo of exchange_connector; plain
Python, never imports odoo.  Start with ``Tenant.start(scenario=...)``.
"""

from .identity import TokenError, TokenInfo
from .knobs import Knobs, Refused
from .server import Tenant
from .store import Store

__all__ = ["Knobs", "Refused", "Store", "Tenant", "TokenError", "TokenInfo"]
