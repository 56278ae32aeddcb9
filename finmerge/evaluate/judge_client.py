"""The LLM judge's HTTP client: an OpenAI-compatible ``POST {url}/chat/completions`` and ``[[rating]]`` parsing.

Secrets: the API key travels only in the ``Authorization: Bearer`` header. It is never put in
``repr(client)``, log lines or exception messages; error bodies are masked (:mod:`finmerge.core.redact`),
HTTP 401/403 bodies are dropped altogether, and the URL's userinfo, query and fragment are stripped before
any use.
"""

from __future__ import annotations

import logging
import re
import time
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from finmerge.core import redact
from finmerge.core.retry import Backoff, retry_call

log = logging.getLogger("finmerge.evaluate.judge")


class JudgeError(RuntimeError):
    """The judge endpoint failed (after retries where retrying makes sense). Never holds the API key."""


_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
_RETRY_STATUS = {429, 500, 502, 503, 504}


def parse_rating(text: str) -> float | None:
    """The first ``[[x]]`` rating, else the first ``[x]``, else None (FastChat's two patterns)."""
    m = _RATING.search(text) or _RATING_BACKUP.search(text)
    return float(m.group(1)) if m else None


def public_url(url: str) -> str:
    """``scheme://host[:port]/path`` without userinfo, query or fragment (safe to show and to log)."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        raise JudgeError("the judge URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise JudgeError("the judge URL must be an http(s) URL with a host")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class _Transient(Exception):
    """A failed request worth retrying; its text (already masked) is what the judge's messages show."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.retry_after = retry_after


def _retry_after_s(header: str | None) -> float | None:
    """A ``Retry-After`` header in seconds; None when absent or not a number (an HTTP date is ignored)."""
    try:
        return float(header) if header else None
    except ValueError:
        return None


class Rating(NamedTuple):
    score: float  # -1 when no reply parsed within max_tries
    judgment: str  # the last reply
    tries: int


class JudgeClient:
    """An OpenAI-compatible chat-completions judge (thread-safe; one pooled httpx client).

    HTTP: connection errors, timeouts, 429 and 5xx are retried ``http_tries`` times with exponential
    backoff (``Retry-After`` honoured, capped at ``max_backoff_s``); any other status fails at once.
    Parsing: up to ``max_tries`` calls at temperature 0.001·i (i = 0, 1, ...) until a rating parses.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None,
        *,
        timeout_s: float = 120.0,
        max_tries: int = 5,
        max_tokens: int = 2048,
        http_tries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        import httpx

        self.url = public_url(url)
        self.model = model
        self.max_tries = max(1, max_tries)
        self.max_tokens = max_tokens
        self.http_tries = max(1, http_tries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # Retry-After, when the server sends one, replaces the doubling pause (still capped)
        self._backoff = Backoff(
            attempts=self.http_tries,
            first_delay_s=backoff_s,
            max_delay_s=max_backoff_s,
            budget_s=float("inf"),
        )
        self.__key = api_key or None
        redact.install()  # a key handed over directly (not through resolve_secret) is masked in logs too
        redact.register(self.__key)
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)

    def __repr__(self) -> str:
        key = "set" if self.__key else "none"
        return f"JudgeClient(url={self.url!r}, model={self.model!r}, api_key=<{key}>)"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        return headers

    def complete(self, messages: list[dict], *, temperature: float) -> str:
        """One chat completion's text, retrying transient failures; raises :class:`JudgeError`."""
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": self.max_tokens,
        }
        endpoint = f"{self.url}/chat/completions"

        def log_retry(exc: BaseException, failures: int, pause: float) -> None:
            log.warning(
                "judge %s: %s; retry %d/%d in %.1fs", endpoint, exc, failures, self.http_tries - 1, pause
            )

        def give_up(exc: BaseException, failures: int, spent: float) -> JudgeError:
            return JudgeError(f"judge {endpoint}: {exc} (gave up after {self.http_tries} tries)")

        return retry_call(
            lambda: self._post_once(endpoint, body),
            self._backoff,
            what=f"judge {endpoint}",
            transient=(_Transient,),
            give_up=give_up,
            retry_after=lambda exc: exc.retry_after if isinstance(exc, _Transient) else None,
            on_retry=log_retry,
            logger=None,  # log_retry says it, in the words the judge has always used
            sleep=time.sleep,  # looked up per call, so a patched time.sleep applies
        )

    def _post_once(self, endpoint: str, body: dict) -> str:
        """One request: the reply's text, :class:`_Transient` for what is worth retrying, else JudgeError."""
        import httpx

        try:
            resp = self._http.post(endpoint, json=body, headers=self._headers())
        except httpx.TransportError as exc:  # connection refused/reset, timeouts
            raise _Transient(f"{type(exc).__name__}: {redact.mask(str(exc))[:200]}") from None
        if resp.status_code == 200:
            text = self._reply_text(resp)
            if text is None:
                raise _Transient("HTTP 200 with a malformed body")
            return text
        if resp.status_code in _RETRY_STATUS:
            raise _Transient(f"HTTP {resp.status_code}", _retry_after_s(resp.headers.get("retry-after")))
        raise JudgeError(self._status_message(resp)) from None

    @staticmethod
    def _reply_text(resp) -> str | None:
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else ""  # a null content is an unparsable reply

    def _status_message(self, resp) -> str:
        where = f"judge {self.url}/chat/completions: HTTP {resp.status_code}"
        if resp.status_code in (401, 403):  # the body may quote the key: keep none of it
            return f"{where}: the endpoint rejected the API key"
        return f"{where}: {redact.mask(resp.text)[:300]}"

    def rate(self, system: str, user: str) -> Rating:
        """Judge until a rating parses (temperature 0.001·i on the i-th try); -1 after ``max_tries``."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        reply = ""
        for i in range(self.max_tries):
            reply = self.complete(messages, temperature=0.001 * i)
            score = parse_rating(reply)
            if score is not None:
                return Rating(score, reply, i + 1)
        log.warning("judge reply unparsable after %d tries: scored -1", self.max_tries)
        return Rating(-1.0, reply, self.max_tries)
