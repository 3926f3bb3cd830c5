"""The webhook settings: checked at start, one line naming the variable."""

from __future__ import annotations

import pytest

from config.settings import SettingsError
from tests.support.settings import make_settings


def test_the_webhook_settings_are_read(tmp_path):
    settings = make_settings(
        tmp_path,
        stripe_webhook_secret="whsec_abcdefgh12345678",
        paypal_client_id="id",
        paypal_client_secret="secret",
        paypal_webhook_id="8PT597110X687430LKGECATA",
    )
    assert settings.stripe_webhook_secret == "whsec_abcdefgh12345678"
    assert settings.paypal_webhook_id == "8PT597110X687430LKGECATA"
    assert "whsec_" not in repr(settings)
    assert make_settings(tmp_path).stripe_webhook_secret is None


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"stripe_webhook_secret": "sk_test_not_a_webhook_secret"}, "STRIPE_WEBHOOK_SECRET"),
        ({"paypal_webhook_id": "8PT597110X687430LKGECATA"}, "PAYPAL_WEBHOOK_ID"),
        (
            {"paypal_webhook_id": "not an id", "paypal_client_id": "id", "paypal_client_secret": "s"},
            "PAYPAL_WEBHOOK_ID",
        ),
    ],
)
def test_a_bad_webhook_setting_stops_the_start(tmp_path, overrides, name):
    with pytest.raises(SettingsError) as refused:
        make_settings(tmp_path, **overrides)
    assert name in str(refused.value)
