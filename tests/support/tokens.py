"""A signed token with its signature changed, so that it can never verify again."""

from __future__ import annotations


def tampered(token: str) -> str:
    """The token with the third character from its end replaced.

    itsdangerous ends every token with an unpadded base64 signature. Only the last character of
    unpadded base64 can carry bits that decoding ignores, so a change there can leave the
    signature's bytes as they were (a test that replaced the last two characters passed such
    a token once in a few hundred runs). A change two characters earlier always changes them.
    """
    index = len(token) - 3
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]
