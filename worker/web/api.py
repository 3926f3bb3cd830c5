"""``POST /api/v1/renewal-links``: a Rinnova link on demand, for the provider's area clienti and webmail.

They show a Rinnova button at any time before deletion, not only from the
notices' three months: they ask here, server to server, for the link of one
mailbox's current cycle, the same link that ``pec-renewal links issue`` prints
(:func:`worker.services.desk.issue_link`).

- ``Authorization: Bearer <PEC_RENEWAL_API_TOKEN>``, compared in
  constant time; with no token set the route does not exist (404).
- Body ``{"address": "…"}`` (JSON); answers
  ``{"url": "{BASE_URL}/rinnova/{token}", "expires_on": "YYYY-MM-DD", "deletion_on": "YYYY-MM-DD"}``.
- 401 without a valid token, 400 for a bad body, 404 for an unknown address,
  409 for a mailbox on a customer domain (renewed with the domain), 410 from
  its deletion date.  Every error is ``{"error": CODE, "message": TEXT}``.

The only route exempt from the CSRF check (``create_app``): a bearer token,
not a cookie, authorises it, so another site cannot make a browser call it.
Nothing here logs the API token or the link it returns.  A request writes nothing.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from worker.services import desk
from worker.web.runtime import runtime_of

blueprint = Blueprint("api", __name__)
log = logging.getLogger(__name__)

#: An address as the mailboxes hold it: at most 254 characters (RFC 5321).
MAX_ADDRESS_LENGTH = 254


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response


def _authorised(token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def _address_from_body() -> str | Response:
    """The address the body asks about, or the 400 answer saying what is wrong with the body."""
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        return _error(400, "bad_request", 'the body must be a JSON object such as {"address": "name@pec.example.it"}')
    unknown = sorted(set(body) - {"address"})
    if unknown:
        return _error(400, "bad_request", f'unknown field {unknown[0]!r}: the body holds only "address"')
    address = body.get("address")
    if not isinstance(address, str) or not address.strip():
        return _error(400, "bad_request", '"address" must be a non-empty string')
    address = desk.normalise_address(address)
    if len(address) > MAX_ADDRESS_LENGTH or "@" not in address or any(not c.isprintable() for c in address):
        return _error(400, "bad_request", '"address" is not a mailbox address')
    return address


@blueprint.post("/api/v1/renewal-links")
def renewal_links() -> Response:
    runtime = runtime_of(current_app)
    token = runtime.settings.api_token
    if token is None:
        abort(404)
    if not _authorised(token):
        log.warning("renewal-links API: a request without a valid bearer token was refused")
        response = _error(401, "unauthorized", "a valid Authorization: Bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="renewal-links"'
        return response
    address = _address_from_body()
    if isinstance(address, Response):
        return address
    with runtime.session_factory() as session:
        try:
            issued = desk.issue_link(session, runtime.signer, address, today=runtime.today())
        except desk.NoSuchMailbox:
            return _error(404, "not_found", "no mailbox has this address")
        except desk.LinkRefused as refused:
            if refused.reason == "deleted":
                return _error(410, "deleted", "the mailbox was deleted and can no longer be renewed")
            return _error(409, refused.reason, "the mailbox is on a customer domain: it is renewed with the domain")
        finally:
            session.rollback()  # read-only
    # The address and dates only: the link is a bearer credential (as is the API token).
    log.info("renewal-links API: a link issued for %s (expiry %s)", issued.address, issued.cycle_expires_on)
    return jsonify(
        {
            "url": issued.url,
            "expires_on": issued.cycle_expires_on.isoformat(),
            "deletion_on": issued.deletion_on.isoformat(),
        }
    )
