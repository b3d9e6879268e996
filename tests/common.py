from odoo.tests import new_test_user


def create_mailbox_users(env):
    """Two internal users, each with a linked on-premises mailbox and a secret of their own."""
    anna = new_test_user(
        env, login="anna.test", password="anna.test.pw", name="Anna Test",
        exchange_account_type="ews", exchange_email="anna@example.com",
        exchange_ews_url="https://mail.example.com/EWS/Exchange.asmx",
        exchange_ews_username="EXAMPLE\\anna", exchange_ews_password="anna-secret",
    )
    marco = new_test_user(
        env, login="marco.test", password="marco.test.pw", name="Marco Test",
        exchange_account_type="graph", exchange_email="marco@example.com",
    )
    anna.sudo().exchange_token_cache = '{"RefreshToken": {"anna": "rt-secret"}}'
    marco.sudo().exchange_token_cache = '{"RefreshToken": {"marco": "rt-secret"}}'
    return anna, marco
