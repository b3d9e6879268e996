"""The tenant's TLS: a client that connects and never shakes hands holds only its own connection."""

import socket

from simulator import Tenant


def test_a_client_that_never_starts_tls_does_not_stop_the_tenant(tenant, session):
    silent = socket.create_connection(("127.0.0.1", tenant.port))
    try:
        # Before: the accept thread waited for this connection's handshake, and nobody got an answer.
        answer = session.get(tenant.base_url + "/_admin/info", timeout=10)
        assert answer.status_code == 200
        assert answer.json()["tenant_id"] == tenant.tenant_id
    finally:
        silent.close()


def test_a_silent_connection_is_closed_after_the_handshake_timeout():
    tenant = Tenant()
    tenant.tls_handshake_timeout = 0.2
    tenant.serve()
    try:
        silent = socket.create_connection(("127.0.0.1", tenant.port))
        silent.settimeout(30)  # a bound for a failing test, far above the handshake timeout
        try:
            assert silent.recv(1) == b"", "the tenant closes the connection"
        finally:
            silent.close()
    finally:
        tenant.stop()
