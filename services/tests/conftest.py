"""Fixtures for the backend contract tests: one local tenant over HTTPS, backends of both kinds.

The tenant is started once per session; every test gets a mailbox of its
own (so the tests never see each other's mail) and reset knobs.
"""

import itertools

import pytest

from services.auth import GraphOAuth
from services.ews import EwsBackend
from services.graph import GraphBackend
from services.throttle import RetryPolicy
from simulator import Tenant

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "contract-test-secret"
REDIRECT_URI = "https://odoo.test/microsoft/callback"
PASSWORD = "Passw0rd!"

_mailbox_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def tenant():
    tenant = Tenant.start()
    tenant.register_app(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    yield tenant
    tenant.stop()


# The tenant's behaviour where Microsoft's documentation and real tenants (or other identity
# providers) differ: every contract test runs under both settings of these knobs.
TENANT_FLAVOURS = {
    "documented": {"refresh_token_single_use": False, "occurrence_ical_uid": "per_occurrence"},
    "alternative": {"refresh_token_single_use": True, "occurrence_ical_uid": "shared"},
}


@pytest.fixture(autouse=True, params=sorted(TENANT_FLAVOURS))
def fresh_knobs(request, tenant):
    """Reset knobs, then set the tenant-wide flavour under test (see TENANT_FLAVOURS)."""
    tenant.knobs.reset()
    tenant.knobs.set(None, **TENANT_FLAVOURS[request.param])
    tenant.request_log.clear()
    yield request.param
    tenant.knobs.reset()


@pytest.fixture
def mailbox(tenant):
    """A new, empty mailbox for this test."""
    number = next(_mailbox_numbers)
    return tenant.store.add_mailbox(f"user{number}@contoso.test", f"User {number}", password=PASSWORD)


def _oauth(tenant, cache_blob=None):
    return GraphOAuth(
        CLIENT_ID, CLIENT_SECRET, tenant.authority, cache_blob=cache_blob, verify=tenant.ca_path
    )


def _sign_in(tenant, email, password=PASSWORD):
    """Run the real authorization-code flow (PKCE, form_post) against the tenant; returns the SignedIn."""
    client = _oauth(tenant)
    flow = client.start_sign_in(REDIRECT_URI, login_hint=email)
    return client.finish_sign_in(flow, tenant.browser_sign_in(flow["auth_uri"], email, password))


def _test_retry_policy():
    # Storms answer Retry-After: 1 s; backoff without a hint stays short so tests stay fast.
    return RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=2.0, max_total_wait=60)


def _graph_backend(tenant, mailbox, **kwargs):
    signed_in = _sign_in(tenant, mailbox.email)
    provider = _oauth(tenant, signed_in.cache_blob).delegated_token_provider(signed_in.email)
    kwargs.setdefault("retry_policy", _test_retry_policy())
    return GraphBackend(mailbox.email, provider, graph_url=tenant.graph_url, verify=tenant.ca_path, **kwargs)


def _ews_backend(tenant, mailbox, password=None, **kwargs):
    kwargs.setdefault("retry_policy", _test_retry_policy())
    return EwsBackend(
        mailbox.email,
        mailbox.email,
        password or mailbox.password,
        tenant.ews_url,
        auth_type="ntlm",
        verify=tenant.ca_path,
        **kwargs,
    )


BACKEND_FACTORIES = {"graph": _graph_backend, "ews": _ews_backend}


@pytest.fixture
def oauth_client(tenant):
    """``oauth_client(cache_blob=None)`` → a GraphOAuth for the test app."""
    return lambda cache_blob=None: _oauth(tenant, cache_blob)


@pytest.fixture
def sign_in(tenant):
    """``sign_in(email, password=PASSWORD)`` → SignedIn, through the browser flow."""
    return lambda email, password=PASSWORD: _sign_in(tenant, email, password)


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
def kind(request):
    """The backend kind under test: "ews" or "graph"."""
    return request.param


def _closing_maker(tenant, factory):
    """Yield ``make(mailbox, **kwargs)`` building backends with ``factory``; close them all afterwards."""
    made = []

    def make(mailbox, **kwargs):
        backend = factory(tenant, mailbox, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def make_backend(tenant, kind):
    """``make_backend(mailbox, **kwargs)`` → a backend of the kind under test, closed after the test."""
    yield from _closing_maker(tenant, BACKEND_FACTORIES[kind])


@pytest.fixture
def make_graph_backend(tenant):
    yield from _closing_maker(tenant, _graph_backend)


@pytest.fixture
def make_ews_backend(tenant):
    yield from _closing_maker(tenant, _ews_backend)


@pytest.fixture
def backend(make_backend, mailbox):
    return make_backend(mailbox)
