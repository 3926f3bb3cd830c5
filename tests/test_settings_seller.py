"""The seller settings of the electronic invoices: all or none, each checked at start.  No database."""

from __future__ import annotations

import pytest

from config.settings import Settings, SettingsError
from worker.rules.einvoice import Address, Seller

SELLER = {
    "SELLER_NAME": "Provider PEC S.p.A.",
    "SELLER_VAT_NUMBER": "IT 01234560017",
    "SELLER_ADDRESS": "Via Roma 1",
    "SELLER_POSTCODE": "00184",
    "SELLER_CITY": "Roma",
    "SELLER_PROVINCE": "rm",
}


def read(tmp_path, **values: str) -> Settings:
    environ = {"PEC_RENEWAL_VAR_DIR": str(tmp_path / "var")}
    environ.update({f"PEC_RENEWAL_{name}": value for name, value in values.items()})
    return Settings.from_env(environ)


def test_no_seller_settings_no_seller(tmp_path):
    assert read(tmp_path).seller is None


def test_the_seller_with_the_default_regime(tmp_path):
    assert read(tmp_path, **SELLER).seller == Seller(
        "Provider PEC S.p.A.", "01234560017", Address("Via Roma 1", "00184", "Roma", "RM"), "RF01"
    )
    assert read(tmp_path, **SELLER, SELLER_FISCAL_REGIME="rf19").seller.fiscal_regime == "RF19"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"SELLER_CITY": ""}, "PEC_RENEWAL_SELLER_CITY: is required with the other SELLER_* settings"),
        ({"SELLER_VAT_NUMBER": "01234560018"}, "PEC_RENEWAL_SELLER_VAT_NUMBER: '01234560018' fails"),
        ({"SELLER_POSTCODE": "0018"}, "PEC_RENEWAL_SELLER_POSTCODE: must be an Italian postcode"),
        ({"SELLER_PROVINCE": "Roma"}, "PEC_RENEWAL_SELLER_PROVINCE: must be a province's 2-letter code"),
        ({"SELLER_NAME": "x" * 81}, "PEC_RENEWAL_SELLER_NAME: must be at most 80 Latin-1 characters"),
        ({"SELLER_ADDRESS": "Ulica Długa 5"}, "PEC_RENEWAL_SELLER_ADDRESS: must be at most 60 Latin-1 characters"),
        ({"SELLER_FISCAL_REGIME": "RF03"}, "PEC_RENEWAL_SELLER_FISCAL_REGIME: must be one of RF01, RF02, RF04"),
    ],
)
def test_a_bad_or_missing_seller_setting_stops_the_start_naming_it(tmp_path, changes, message):
    with pytest.raises(SettingsError) as refused:
        read(tmp_path, **{**SELLER, **changes})
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_a_regime_alone_is_refused_too(tmp_path):
    with pytest.raises(SettingsError, match="PEC_RENEWAL_SELLER_NAME: is required"):
        read(tmp_path, SELLER_FISCAL_REGIME="RF01")
