"""A fake OpenAI-compatible chat-completions server for tests (stdlib only, loopback, free port).

``with FakeOpenAI(reply=...) as fake:`` serves ``POST /v1/chat/completions`` at ``fake.url``
(``http://127.0.0.1:PORT/v1``). Behaviour:

- ``reply(body) -> str``: the assistant content for a request body (default ``"評価：[[5]]"``);
- ``fail_first`` / ``fail_status``: the first N requests get that status (500, 429, ...), ``retry_after``
  optionally sent with them; ``disconnect_first``: the first N requests have their connection dropped;
- ``require_key``: requests without ``Authorization: Bearer <key>`` get ``auth_status`` (401) with an
  OpenAI-style error body that quotes the key they sent (as real providers partly do), to test that
  clients redact it;
- every request is recorded in ``fake.requests`` as ``{"path", "headers", "body", "status"}``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_reply(body: dict) -> str:
    return "評価：[[5]]"


class FakeOpenAI:
    def __init__(
        self,
        reply: Callable[[dict], str] = default_reply,
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        retry_after: str | None = None,
        disconnect_first: int = 0,
        require_key: str | None = None,
        auth_status: int = 401,
    ) -> None:
        self.reply = reply
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.disconnect_first = disconnect_first
        self.require_key = require_key
        self.auth_status = auth_status
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._url: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (still answered after :meth:`stop`, for assertions)."""
        assert self._url is not None, "server not started"
        return self._url

    def bodies(self, status: int | None = 200) -> list[dict]:
        """Recorded request bodies (those answered with ``status``; None: all)."""
        with self._lock:
            return [r["body"] for r in self.requests if status is None or r["status"] == status]

    # -- lifecycle

    def start(self) -> FakeOpenAI:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- behaviour

    def _decide(self, headers: dict, body: dict | None, path: str) -> tuple[int, dict | None]:
        """(status, JSON response or None to drop the connection), recording the request."""
        with self._lock:
            n = len(self.requests)
            rec = {"path": path, "headers": headers, "body": body, "status": 0}
            self.requests.append(rec)
        if path != "/v1/chat/completions":
            status, payload = 404, _error("not found", "invalid_request_error")
        elif body is None:
            status, payload = 400, _error("invalid JSON body", "invalid_request_error")
        elif n < self.disconnect_first:
            status, payload = 0, None
        elif self.require_key is not None and headers.get("authorization") != f"Bearer {self.require_key}":
            sent = headers.get("authorization", "").removeprefix("Bearer ")
            status, payload = (
                self.auth_status,
                _error(f"Incorrect API key provided: {sent}.", "invalid_api_key"),
            )
        elif n < self.disconnect_first + self.fail_first:
            status, payload = self.fail_status, _error("try again later", "server_error")
        else:
            status, payload = 200, _completion(body, self.reply(body), n)
        with self._lock:
            rec["status"] = status
        return status, payload

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = fake._decide(headers, body, self.path)
                if payload is None:  # drop the connection without an answer
                    self.close_connection = True
                    self.connection.close()
                    return
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429 and fake.retry_after is not None:
                    self.send_header("Retry-After", fake.retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        return Handler


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": code, "code": code}}


def _completion(body: dict, content: str, n: int) -> dict:
    return {
        "id": f"chatcmpl-fake-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
