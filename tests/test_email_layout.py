"""Every email kind, in both languages, read in a real headless Chromium on a phone and on a desktop.

Each kind's samples (tests/support/email_samples.py: the demo's emails and the widest cases) are
rendered by the project's renderer, and the HTML part is opened at 390 and at 1280 pixels wide
with JavaScript off.  At both widths the page never scrolls sideways, every button and link lies
wholly inside the viewport, and no amount wraps onto a second line.  A full-page screenshot of
each is kept under ``artifacts/emails/`` (``PEC_RENEWAL_TEST_ARTIFACTS`` moves the folder).
CI installs the browser with ``scripts/install-browser``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, needs_chromium
from tests.support.email_samples import RENDERED_AT, SAMPLES, Sample, demo_samples
from worker.mail.emails import EmailRenderer
from worker.mail.kinds import KINDS
from worker.rules.links import LinkSigner
from worker.rules.vocabulary import LANGUAGES

WIDTHS = (390, 1280)
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("PEC_RENEWAL_TEST_ARTIFACTS") or ROOT / "artifacts") / "emails"
#: The kinds whose email leads to an action: a Rinnova (or Pay, Manage, Update) button.
WITH_BUTTON = frozenset(
    (
        "expiry-notice",
        "expired-notice",
        "charge-notice",
        "card-expiring",
        "charge-failed",
        "order-confirmation",
        "charge-authentication-required",
    )
)

pytestmark = needs_chromium

#: What the page measures of itself: its scroll width, the boxes of its links (buttons marked),
#: and the amounts drawn on more than one line.
MEASURE = """() => ({
  scrollWidth: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
  links: Array.from(document.querySelectorAll('a')).map(a => {
    const box = a.getBoundingClientRect();
    return {text: a.textContent.trim(), button: a.classList.contains('button'), left: box.left, right: box.right};
  }),
  wrappedAmounts: Array.from(document.querySelectorAll('.amount'))
    .filter(node => node.getClientRects().length > 1).map(node => node.textContent),
})"""


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    return [*demo_samples(tmp_path_factory.mktemp("demo")), *SAMPLES]


@pytest.fixture(scope="module")
def renderer() -> EmailRenderer:
    signer = LinkSigner(["k" * 40], "https://rinnovi.provider-pec.example.it", max_age_days=200)
    return EmailRenderer(mail_from="Rinnovi PEC <rinnovi@pec-provider.example.it>", signer=signer)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def test_every_kind_has_samples():
    assert {sample.kind for sample in SAMPLES} == set(KINDS)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_email_fits_a_phone_and_a_desktop(browser, renderer, samples, kind, language):
    chosen = [sample for sample in samples if sample.kind == kind]
    assert chosen
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems = []
    for width in WIDTHS:
        context = browser.new_context(java_script_enabled=False, viewport={"width": width, "height": 900})
        try:
            page = context.new_page()
            for sample in chosen:
                html = renderer.render(
                    kind=sample.kind,
                    stage=sample.stage,
                    language=language,
                    to_address="ufficio@example.it",
                    message_id="0123456789abcdef0123456789abcdef@pec-provider.example.it",
                    context=sample.context,
                    now=RENDERED_AT,
                ).html
                page.set_content(html)
                page.screenshot(path=str(ARTIFACTS / f"{sample.name}.{language}.{width}.png"), full_page=True)
                seen = page.evaluate(MEASURE)
                where = f"{sample.name} ({language}) at {width}px"
                if seen["scrollWidth"] > width:
                    problems.append(f"{where}: scrolls sideways, {seen['scrollWidth']}px wide")
                for link in seen["links"]:
                    if link["left"] < 0 or link["right"] > width:
                        problems.append(f"{where}: {link['text']!r} spans {link['left']:.0f}-{link['right']:.0f}px")
                if kind in WITH_BUTTON and sample.context.get("order", {}).get("method") not in (
                    "bank_transfer",
                    "postal_slip",
                ):
                    if not any(link["button"] for link in seen["links"]):
                        problems.append(f"{where}: no button")
                if seen["wrappedAmounts"]:
                    problems.append(f"{where}: amounts wrap: {seen['wrappedAmounts']}")
        finally:
            context.close()
    assert not problems, "\n".join(problems)
