"""The session cookie's signature and the CSRF token, with itsdangerous' formats and less work.

Every visitor of a link page gets a new session cookie and a new CSRF token:
two signatures, on the link handler's hot path (bench/link_handler.sh).
itsdangerous builds a new signer for every ``dumps``, derives its key again
(one or two SHA-1 runs), runs HMAC through Python's ``hmac.HMAC`` class, and
tries zlib on every payload.  The classes here keep the same formats, keys,
salts and key derivations, so Flask reads the cookies and Flask-WTF's
``validate_csrf`` (which checks every POST, through ``CSRFProtect``) verifies
the tokens, unchanged.  What they skip:

- a signer per call: one per salt, kept by its serializer;
- the key derivation per call: each derived key is computed once per signer;
- ``hmac.new``: OpenSSL's one-shot HMAC (:func:`hmac.digest`), same bytes;
- zlib: a random token or a short session never compresses to anything worth
  having.  Reading still accepts a compressed payload.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from flask import Flask, current_app, g, has_app_context, session
from flask.json.provider import DefaultJSONProvider
from flask.json.tag import TaggedJSONSerializer
from itsdangerous import Serializer, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes, want_bytes
from itsdangerous.signer import HMACAlgorithm

#: Flask-WTF's salt for the signed CSRF token (``flask_wtf.csrf.generate_csrf``).
CSRF_SALT = "wtf-csrf-token"
#: itsdangerous' compact JSON (``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))``), built once.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class _SHA1HMAC(HMACAlgorithm):
    """HMAC-SHA1 in one call into OpenSSL: the bytes of ``hmac.new(key, value, sha1).digest()``."""

    def __init__(self) -> None:
        super().__init__(hashlib.sha1)

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, "sha1")


class FastTimestampSigner(TimestampSigner):
    """itsdangerous' ``TimestampSigner``, its derived keys computed once (SHA-1 only).

    Safe to share between threads: its state is its keys, and the cache of
    their derivations only ever gains the same values.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.digest_method().name != "sha1":
            raise ValueError("FastTimestampSigner signs with HMAC-SHA1 only")
        self.algorithm = _SHA1HMAC()
        self._derived: dict[bytes, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        key = self.secret_keys[-1] if secret_key is None else want_bytes(secret_key)
        derived = self._derived.get(key)
        if derived is None:
            derived = self._derived[key] = super().derive_key(key)
        return derived

    def sign(self, value: str | bytes) -> bytes:
        # TimestampSigner.sign and Signer.get_signature in one: value.timestamp.signature
        value = want_bytes(value) + self.sep + base64_encode(int_to_bytes(self.get_timestamp()))
        return value + self.sep + base64_encode(self.algorithm.get_signature(self.derive_key(), value))


class FastURLSafeTimedSerializer(URLSafeTimedSerializer):
    """``URLSafeTimedSerializer`` with one :class:`FastTimestampSigner` per salt, and no zlib on the way out."""

    default_signer = FastTimestampSigner

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signers: dict[bytes | str | None, TimestampSigner] = {}

    def make_signer(self, salt: str | bytes | None = None) -> TimestampSigner:
        signer = self._signers.get(salt)
        if signer is None:
            signer = self._signers[salt] = super().make_signer(salt)
        return signer

    def dump_payload(self, obj: Any) -> bytes:
        if type(obj) is str and self.serializer is self.default_serializer and not self.serializer_kwargs:
            return base64_encode(_COMPACT_JSON.encode(obj))  # a CSRF token: the same JSON, one encoder for all
        return base64_encode(Serializer.dump_payload(self, obj))


#: Flask's JSON for a session that holds only strings: compact, keys sorted, ASCII only.
_PLAIN_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, sort_keys=True)


class SessionJSONSerializer(TaggedJSONSerializer):
    """Flask's session serializer (tagged JSON), with a short way for a session of plain strings.

    A new visitor's session is ``{"csrf_token": "<40 hex digits>"}``: nothing
    to tag, so Flask writes the same compact JSON its default provider writes,
    after walking the tags and building a JSON encoder for the call.  This
    writes those bytes directly when the app's JSON provider has Flask's
    defaults; anything else (lists, dates, markup, a key that looks like a
    tag, another provider) goes through Flask's own code.
    """

    __slots__ = ()

    def dumps(self, value: Any) -> str:
        if (
            type(value) is dict
            and not (len(value) == 1 and next(iter(value)) in self.tags)  # Flask would tag such a dict
            and all(type(key) is str and type(item) is str for key, item in value.items())
            and _default_json_provider()
        ):
            return _PLAIN_JSON.encode(value)
        return super().dumps(value)


def _default_json_provider() -> bool:
    if not has_app_context():
        return False  # flask.json.dumps then writes other JSON (no sorted keys): leave it to Flask
    provider = current_app.json
    return type(provider) is DefaultJSONProvider and provider.ensure_ascii is True and provider.sort_keys is True


def add_vary_cookie(response) -> None:
    """``response.vary.add("Cookie")``, without parsing and writing the header back when it is there already."""
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers.add("Vary", "Cookie")
    elif "cookie" not in {item.strip().lower() for item in vary.split(",")}:
        response.vary.add("Cookie")


_csrf_serializers: dict[Any, FastURLSafeTimedSerializer] = {}


def csrf_enabled(app: Flask) -> bool:
    """Whether forms carry a CSRF token (Flask-WTF's ``WTF_CSRF_ENABLED``; tests may turn it off)."""
    return bool(app.config.get("WTF_CSRF_ENABLED", True))


def csrf_token(app: Flask) -> str:
    """The signed CSRF token of this request: what ``flask_wtf.csrf.generate_csrf()`` returns.

    The same steps, keys, salt and format: the raw token (40 hex digits of
    ``os.urandom``) is kept in the session under ``WTF_CSRF_FIELD_NAME``, made
    once per browser session; the form carries it signed and timestamped with
    ``WTF_CSRF_SECRET_KEY`` (default ``SECRET_KEY``; the link handler sets it to
    its key list, and the newest signs), which ``validate_csrf`` checks, with any
    key of the list, on every POST.  Kept in ``g`` like Flask-WTF does, so a WTForms form
    built later in the same request carries the same token.
    """
    field_name = app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    token = g.get(field_name)
    if token is not None:
        return token
    if not field_name:
        raise RuntimeError("a secret key and a field name are required to use CSRF")
    serializer = csrf_serializer(app)
    raw = session.get(field_name)
    if not isinstance(raw, str):  # none yet (or not a token at all: Flask-WTF replaces it too)
        raw = session[field_name] = new_raw_csrf_token()
    token = serializer.dumps(raw)
    setattr(g, field_name, token)
    return token


def new_raw_csrf_token() -> str:
    """The secret a browser session keeps for its forms: Flask-WTF's 40 hex digits of ``os.urandom``."""
    return hashlib.sha1(os.urandom(64)).hexdigest()


def csrf_serializer(app: Flask) -> FastURLSafeTimedSerializer:
    """What signs the forms' CSRF tokens: ``WTF_CSRF_SECRET_KEY`` (default ``SECRET_KEY``), Flask-WTF's salt."""
    secret_key = app.config.get("WTF_CSRF_SECRET_KEY", app.secret_key)
    if not secret_key:
        raise RuntimeError("a secret key and a field name are required to use CSRF")
    serializer = _csrf_serializers.get(secret_key)
    if serializer is None:
        serializer = _csrf_serializers[secret_key] = FastURLSafeTimedSerializer(secret_key, salt=CSRF_SALT)
    return serializer
