"""The price catalogue: prices in euro cents, VAT excluded, per year.

The limits of each plan (docs/domain.md, "Plans and limits") live here too, so that the
order rules in ``worker.rules.pricing`` and the pages read one source.  Change a
price here; nothing else holds one.
"""

from __future__ import annotations

from types import MappingProxyType

#: Italian VAT on the services, in percent.
VAT_PERCENT = 22

#: The yearly price of each plan, in euro cents, VAT excluded.
PLAN_PRICES_CENTS = MappingProxyType(
    {
        "standard": 500,
        "pro": 2500,
        "premium": 4000,
    }
)

#: The yearly price of one extra GB of mailbox space, in euro cents, VAT excluded.
EXTRA_SPACE_GB_CENTS = 200
#: The yearly price of one extra GB of archive (Pro and Premium only), in euro cents, VAT excluded.
EXTRA_ARCHIVE_GB_CENTS = 100

#: Mailbox space included in each plan, in GB.
PLAN_MAILBOX_GB = MappingProxyType({"standard": 1, "pro": 2, "premium": 2})
#: Archive included in each plan, in GB (Standard has none).
PLAN_ARCHIVE_GB = MappingProxyType({"standard": 0, "pro": 3, "premium": 8})
#: The most extra mailbox space that can be bought, in GB (Standard: 1 GB, so 2 GB in all).
PLAN_MAX_EXTRA_SPACE_GB = MappingProxyType({"standard": 1, "pro": 50, "premium": 50})
#: The most extra archive that can be bought, in GB (none on Standard).
PLAN_MAX_EXTRA_ARCHIVE_GB = MappingProxyType({"standard": 0, "pro": 100, "premium": 100})

#: The renewal frequency: 1 to 5 years, or 1 to 2 for promotional products.
MAX_YEARS = 5
MAX_PROMO_YEARS = 2

PLANS = tuple(PLAN_PRICES_CENTS)
