"""Delegated tokens kept in a TokenStore: rotated refresh tokens stored at once, the newest one used."""

import contextlib
import json

from services.auth import TokenStore

from .conftest import _oauth


class MemoryStore(TokenStore):
    """The stored cache of one mailbox; ``seen_on_entry`` stands for a store read before another
    worker's save (its lock wait timed out): the refresh starts from an already redeemed token."""

    def __init__(self, blob, seen_on_entry=None):
        self.blob = blob
        self.seen_on_entry = seen_on_entry
        self.saves = 0

    @contextlib.contextmanager
    def refreshing(self):
        yield self.seen_on_entry or self.blob

    def newest(self):
        return self.blob

    def save(self, cache_blob, replaces):
        if self.blob != replaces:
            return False
        self.blob, self.saves = cache_blob, self.saves + 1
        return True


def refresh_tokens(blob):
    return {entry["secret"] for entry in json.loads(blob)["RefreshToken"].values()}


def expiring_sign_in(tenant, mailbox, sign_in):
    """A sign-in whose access tokens msal deems expired at once: every use refreshes."""
    tenant.knobs.set(mailbox.email, token_lifetime_seconds=60, refresh_token_single_use=True)
    return sign_in(mailbox.email).cache_blob


def test_a_rotated_token_is_stored_the_moment_it_is_received(tenant, mailbox, sign_in):
    first = expiring_sign_in(tenant, mailbox, sign_in)
    store = MemoryStore(first)
    provider = _oauth(tenant, first).delegated_token_provider(mailbox.email, token_store=store)
    assert provider()
    assert store.saves == 1
    assert refresh_tokens(store.blob).isdisjoint(refresh_tokens(first))
    assert not provider.cache_changed, "stored already: nothing left for the caller to save"
    # A second worker starting from the stored cache refreshes with the rotated token.
    again = _oauth(tenant, store.blob).delegated_token_provider(mailbox.email, token_store=store)
    assert again(force_refresh=True)
    assert store.saves == 2


def test_a_provider_behind_another_worker_uses_the_newest_stored_token(tenant, mailbox, sign_in):
    first = expiring_sign_in(tenant, mailbox, sign_in)
    store = MemoryStore(first)
    late = _oauth(tenant, first).delegated_token_provider(mailbox.email, token_store=store)
    early = _oauth(tenant, first).delegated_token_provider(mailbox.email, token_store=store)
    assert early()  # redeems the first refresh token, stores the second
    assert late(), "starts from the stored cache, not from its own redeemed token"
    assert store.saves == 2


def test_already_redeemed_after_a_race_is_retried_with_the_newest_token(tenant, mailbox, sign_in):
    first = expiring_sign_in(tenant, mailbox, sign_in)
    racing = _oauth(tenant, first).delegated_token_provider(mailbox.email)
    assert racing()  # another worker redeems the first refresh token, outside any lock
    store = MemoryStore(racing.cache_blob, seen_on_entry=first)
    provider = _oauth(tenant, first).delegated_token_provider(mailbox.email, token_store=store)
    assert provider(), "invalid_grant (already redeemed) is retried with the newest stored token"
    assert store.saves == 1
    assert tenant.request_log.count(protocol="identity", status=400) == 1
