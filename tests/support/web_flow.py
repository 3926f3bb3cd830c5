"""Walking the order steps with the test client, as a browser would (CSRF tokens taken from each form)."""

from __future__ import annotations

from tests.support.link_handler import csrf_token


def post_form(client, path: str, data: dict | None = None, *, follow: bool = False):
    page = client.get(path)
    assert page.status_code == 200, (path, page.status_code)
    fields = {"csrf_token": csrf_token(page.get_data(as_text=True))}
    fields.update(data or {})
    return client.post(path, data=fields, follow_redirects=follow)


def start(client, link: str) -> str:
    """POST the link page's button; returns the order's base path /ordine/<public_id>."""
    response = post_form(client, link)
    assert response.status_code == 303, response.get_data(as_text=True)[:2000]
    location = response.headers["Location"]
    assert location.startswith("/ordine/")
    parts = location.split("/")
    return "/".join(parts[:3])


PRIVATE_HOLDER = {
    "name": "Mario Rossi",
    "kind": "private",
    "reference_email": "mario.rossi@example.it",
    "tax_code": "RSSMRA80A01H501U",
    "vat_number": "",
    "postal_address": "Via Roma 1, 00100 Roma",
    "einvoice_code": "",
    "cig": "",
    "cup": "",
}


def walk_to_confirm(
    client, order: str, mailbox_id: int, *, plan="standard", method="bank_transfer", years="1", holder=None
):
    response = post_form(
        client,
        f"{order}/caselle",
        {f"plan-{mailbox_id}": plan, f"extra_space_gb-{mailbox_id}": "0", f"extra_archive_gb-{mailbox_id}": "0"},
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    assert response.headers["Location"].endswith("/intestatario")
    response = post_form(client, f"{order}/intestatario", holder or PRIVATE_HOLDER)
    assert response.status_code == 303, response.get_data(as_text=True)
    response = post_form(client, f"{order}/modulo", {"method": method, "years": years})
    assert response.status_code == 303, response.get_data(as_text=True)
    response = post_form(client, f"{order}/condizioni", {"accept": "y", "approve_clauses": "y"})
    assert response.status_code == 303, response.get_data(as_text=True)
    assert response.headers["Location"].endswith("/conferma")
