"""Secrets in URLs, masked wherever a URL is printed or logged.

:func:`mask_url` is the one place that knows what a secret in a URL looks like: the
password of ``user:password@`` (and, for object stores, the access key in the user part:
``s3://KEY:SECRET@bucket``), and the values of query parameters that carry tokens
(``?token=``, ``X-Amz-Signature=``, ...). It takes any text and masks every URL in it,
so an error line, a log record or a header can go through it whole.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>[^\s'\"<>()\[\]{}]+)")
_SECRET_PARAMS = re.compile(
    r"(?i)^(?:.*token.*|.*secret.*|.*password.*|passwd|pwd|key|api[-_]?key|apikey|access[-_]?key.*|"
    r"sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|auth.*|credential.*|session.*)$")
_ONLY_PASSWORD = {"http", "https", "postgresql", "postgres", "mysql", "mssql", "sqlite", "ray", "tcp",
                  "redis", "mongodb", "ftp", "sftp", "ssh", "databricks"}


def _mask_one(m: re.Match) -> str:
    scheme, rest = m.group("scheme"), m.group("rest")
    head, sep, query = rest.partition("?")
    netloc, slash, path = head.partition("/")
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if scheme.lower() in _ONLY_PASSWORD and colon:
            userinfo = f"{user}:{MASK}"
        elif scheme.lower() in _ONLY_PASSWORD:
            userinfo = user            # a user name alone is not a secret there
        else:                          # s3://KEY:SECRET@bucket: the key is a credential too
            userinfo = MASK + (f":{MASK}" if colon else "")
        netloc = f"{userinfo}@{host}"
    if sep:
        fragment = ""
        if "#" in query:
            query, fragment = query.split("#", 1)
            fragment = "#" + fragment
        parts = []
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            parts.append(f"{name}={MASK}" if eq and value and _SECRET_PARAMS.match(name) else item)
        query = "&".join(parts) + fragment
    return f"{scheme}://{netloc}{slash}{path}{sep}{query}"


def mask_url(text: str) -> str:
    """``text`` with the secrets of every URL in it replaced by ``***``:
    ``http://alice:pw@host`` → ``http://alice:***@host``; ``s3://KEY:SECRET@b/x`` →
    ``s3://***:***@b/x``; ``https://h/x?token=abc&n=1`` → ``https://h/x?token=***&n=1``.
    Text without a URL comes back unchanged."""
    if "://" not in text:
        return text
    return _URL.sub(_mask_one, text)


class MaskingFilter(logging.Filter):
    """A logging filter that masks URL secrets in every record's message (installed on
    the handlers of the ``kma`` command line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem
            return True
        masked = mask_url(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True
