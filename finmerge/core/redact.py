"""Known secret values are masked in every log record, whichever library logs them.

Libraries log credentials we never hand them as text: botocore at DEBUG writes the access key id
(``Credential=AKIA…``) and the session token (``X-Amz-Security-Token``) of every request. A filter on one
logger misses records of its children and of loggers that do not propagate, so :func:`install` wraps the
log record factory instead: every record created anywhere in the process masks, lazily when it is formatted,
its message, its formatted traceback and its stack with ``***``.

Masked are the values :func:`register` was given (``finmerge.core.secrets.resolve_secret`` registers what it
resolves) and the current values of the credential variables in :data:`CREDENTIAL_ENV` (read at each use, so
credentials set after install are covered too), each raw and URL-encoded. Values shorter than
:data:`MIN_LENGTH` are ignored: masking ``"test"`` everywhere would garble logs and protect nothing.

Masked too, whatever their value (one never registered: a key a proxy or a test put in a URL), are the
credentials a URL carries in its userinfo (``s3://KEY:SECRET@host`` → ``s3://***@host``) and the values of
the query parameters in :data:`SECRET_PARAMS` (EDINET's ``Subscription-Key=…``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from functools import lru_cache
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_LENGTH = 8
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "FSSPEC_S3_KEY",
    "FSSPEC_S3_SECRET",
    "FSSPEC_S3_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "HF_TOKEN",
    "EDINET_API_KEY",
    "FINMERGE_JUDGE_API_KEY",
)

# Query parameters whose value is a credential (case-insensitive).
SECRET_PARAMS = ("Subscription-Key", "api_key", "apikey", "access_token", "X-Amz-Security-Token")
_SECRET_PARAM = re.compile(
    r"(?P<name>\b(?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)[^&\s\"'#<>]*", re.I
)
_PARAM_NAMES = tuple(p.lower() for p in SECRET_PARAMS)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)

_registered: set[str] = set()
_lock = threading.Lock()


def register(value: str | None) -> None:
    """Mask ``value`` in every log record from now on (it is kept in memory only)."""
    if value and len(value.strip()) >= MIN_LENGTH:
        with _lock:
            _registered.add(value.strip())


def secret_values() -> set[str]:
    env = {os.environ.get(name, "").strip() for name in CREDENTIAL_ENV}
    return {v for v in env if len(v) >= MIN_LENGTH} | _registered


def _forms(value: str) -> set[str]:
    return {value, quote(value, safe=""), quote(value), quote_plus(value)}


@lru_cache(maxsize=16)
def _masked_forms(values: frozenset[str]) -> tuple[str, ...]:
    """Every form of ``values`` to mask, longest first (so a value that contains another is masked whole).
    Cached by the values themselves, which are read at each use: URL-encoding them for every log record
    cost ~75 µs a record (a debug-level pipeline run logs ~10⁵ records through botocore)."""
    return tuple(sorted({f for v in values for f in _forms(v)}, key=len, reverse=True))


def mask(text: object) -> str:
    """``text`` with every known secret value (raw or URL-encoded), URL userinfo and secret query parameter
    value replaced by ``***``."""
    out = mask_urls(str(text))
    for form in _masked_forms(frozenset(secret_values())):
        if form in out:
            out = out.replace(form, MASK)
    return out


def mask_urls(text: str) -> str:
    """``text`` with the userinfo of every URL and the value of every :data:`SECRET_PARAMS` parameter masked."""
    if "://" in text and "@" in text:
        text = _URL_USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    if "=" in text:
        low = text.lower()  # the regex scan costs ~10 µs a record; most records name none of the parameters
        if any(p in low for p in _PARAM_NAMES):
            text = _SECRET_PARAM.sub(rf"\g<name>{MASK}", text)
    return text


class _Masking:
    """Mixin for LogRecord: what formatters read (message, traceback text, stack) comes out masked."""

    def getMessage(self) -> str:  # noqa: N802 (logging's name)
        return mask(super().getMessage())

    @property
    def exc_text(self) -> str | None:  # Formatter caches the formatted traceback here
        text = self.__dict__.get("exc_text")
        return None if text is None else mask(text)

    @exc_text.setter
    def exc_text(self, value: str | None) -> None:
        self.__dict__["exc_text"] = value

    @property
    def stack_info(self) -> str | None:
        text = self.__dict__.get("stack_info")
        return None if text is None else mask(text)

    @stack_info.setter
    def stack_info(self, value: str | None) -> None:
        self.__dict__["stack_info"] = value


class MaskedLogRecord(_Masking, logging.LogRecord):
    pass


_masked_classes: dict[type, type] = {logging.LogRecord: MaskedLogRecord}


def _masked_class(cls: type) -> type:
    if issubclass(cls, _Masking):
        return cls
    if cls not in _masked_classes:
        _masked_classes[cls] = type(f"Masked{cls.__name__}", (_Masking, cls), {})
    return _masked_classes[cls]


def installed() -> bool:
    return getattr(logging.getLogRecordFactory(), "finmerge_redact", False)


def install() -> None:
    """Wrap the current log record factory unless it is ours already (idempotent, thread-safe).

    The check is on the current factory, not a flag: whoever restores an older factory (a test fixture) drops
    ours, and the next install puts it back. Wrapping twice is harmless.
    """
    with _lock:
        if installed():
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            record.__class__ = _masked_class(type(record))
            return record

        factory.finmerge_redact = True
        logging.setLogRecordFactory(factory)
