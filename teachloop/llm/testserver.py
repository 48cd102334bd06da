"""A small OpenAI-compatible server on 127.0.0.1 for tests and benchmarks: strict about parameters, optionally faulty.

    with LocalServer(responder, strict=True, faults=0.3, seed=7) as srv:
        cfg = LLMConfig(backend="openai", model="m", base_url=srv.base_url, ...)

Strict: a request carrying any field outside the OpenAI API's documented set (read from the `openai` package's
request TypedDicts), or more log-probabilities than OpenAI allows, is answered HTTP 400 and recorded in `rejected`.
Faulty: a seeded fraction of requests meets one of `FAULTS` instead of an answer, tallied in `injected`. Answers
come from `responder(prompt)`, so replies, token log-probs and top log-probs are functions of the prompt alone.
`FaultProxy` puts the same faults in front of a real server (llama-cpp-python's, `python -m teachloop.llm.serve`) instead of a responder;
`llama_cpp_server(args)` runs such a server for a block.
Not a model and not for production: stdlib `http.server` in a thread.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

# Named after the `Stats` field each fault shows up in on the client's side.
FAULTS = ("rate_limited", "server_errors", "malformed", "connection_errors", "timeouts")
SERVED_MODEL = "-2024-01-01"  # appended to the requested name: the dated snapshot behind an alias


def openai_params(api: str) -> set[str]:
    """Every request field the OpenAI API documents for `api` (completions | chat), from the SDK's TypedDicts."""
    if api == "chat":
        from openai.types.chat import completion_create_params as mod
    else:
        from openai.types import completion_create_params as mod
    return set(mod.CompletionCreateParamsNonStreaming.__annotations__)


def _unit(text: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by `text`."""
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:8], 16) / 2 ** 32


def default_responder(prompt: str) -> str:
    return f"answer {hashlib.sha256(prompt.encode()).hexdigest()[:8]}"


def _tokens(text: str) -> list[tuple[int, str]]:
    """(offset, token) pieces of `text`: each run of non-space characters with the whitespace before it."""
    return [(m.start(), m.group()) for m in re.finditer(r"\s*\S+|\s+$", text)]


class LocalServer:
    def __init__(self, responder: Callable[[str], str] = default_responder, strict: bool = True,
                 faults: float = 0.0, seed: int = 0, latency_s: float = 0.0, timeout_delay_s: float = 2.0):
        self.responder = responder
        self.strict = strict
        self.faults = faults
        self.latency_s = latency_s
        self.timeout_delay_s = timeout_delay_s  # a "timeouts" fault sleeps this long (past the client's timeout)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every answered request body, with its path
        self.rejected: list[str] = []  # why each refused request was refused
        self.injected: Counter = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "LocalServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- answers ---------------------------------------------------------------------------------------------

    def check(self, api: str, body: dict) -> str:
        """Why the OpenAI API would refuse `body`, or "" if it would not."""
        unknown = sorted(set(body) - openai_params(api))
        if unknown:
            return f"Unrecognized request argument(s) supplied: {unknown}"
        if api == "completions" and (body.get("logprobs") or 0) > 5:
            return f"logprobs must be <= 5 on the completions API, got {body['logprobs']}"
        if api == "chat" and (body.get("top_logprobs") or 0) > 20:
            return f"top_logprobs must be <= 20, got {body['top_logprobs']}"
        if len(body.get("stop") or []) > 4:
            return "at most 4 stop sequences"
        return ""

    @staticmethod
    def _top(prompt: str, k: int) -> dict[str, float]:
        cands = [" A", " B", " C", " D", " yes", " no", " the", " 1", " 2", " 3"]
        return {t: -0.1 - 4 * _unit(prompt, t) for t in cands[:k]}

    def answer(self, api: str, body: dict) -> dict:
        model = body.get("model", "") + SERVED_MODEL
        if api == "chat":
            prompt = body["messages"][-1]["content"]
            text = self.responder(prompt)
            choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
            if body.get("logprobs"):
                top = [{"token": t.strip(), "logprob": v, "bytes": None}
                       for t, v in self._top(prompt, body.get("top_logprobs") or 1).items()]
                choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
            return {"id": "c", "object": "chat.completion", "created": 0, "model": model, "choices": [choice],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                              "total_tokens": len(prompt.split()) + len(text.split())}}
        prompt = body["prompt"]
        k = body.get("logprobs")
        text = "" if body.get("echo") else self.responder(prompt)
        logprobs = None
        if k is not None:
            if body.get("echo"):
                pieces = _tokens(prompt)
                logprobs = {"tokens": [t for _, t in pieces], "text_offset": [o for o, _ in pieces],
                            "token_logprobs": [None] + [-0.05 - 3 * _unit(prompt[:o + len(t)]) for o, t in pieces[1:]],
                            "top_logprobs": None}
            else:
                logprobs = {"tokens": [" A"], "text_offset": [len(prompt)], "token_logprobs": [-0.1],
                            "top_logprobs": [self._top(prompt, k)]}
        return {"id": "c", "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": logprobs}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                          "total_tokens": len(prompt.split()) + len(text.split())}}

    def reply(self, api: str, body: dict) -> tuple[int, bytes]:
        """(HTTP status, body) for a request that meets no fault."""
        return 200, json.dumps(self.answer(api, body)).encode()

    def _fault(self) -> str | None:
        with self.lock:
            if self.faults and self.rng.random() < self.faults:
                kind = self.rng.choice(FAULTS)
                self.injected[kind] += 1
                return kind
        return None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: tests read `requests` and `rejected`
                pass

            def _send(self, code: int, payload: bytes, ctype: str = "application/json", headers=()) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, code: int, message: str, headers=()) -> None:
                self._send(code, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode(),
                           headers=headers)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                api = "chat" if self.path.endswith("/chat/completions") else "completions"
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._serve(api, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a timeout fault): nothing to answer
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _serve(self, api: str, body: dict) -> None:
                if server.strict:
                    why = server.check(api, body)
                    if why:
                        with server.lock:
                            server.rejected.append(f"{api}: {why}")
                        return self._error(400, why)
                fault = server._fault()
                if fault == "rate_limited":
                    return self._error(429, "Rate limit reached; retry after 0 s", headers=[("Retry-After", "0")])
                if fault == "server_errors":
                    return self._error(500, "The server had an error while processing your request")
                if fault == "malformed":  # half of them a truncated body, half a proxy's HTML page
                    with server.lock:
                        truncated = server.rng.random() < 0.5
                    if truncated:
                        return self._send(200, server.reply(api, body)[1][:40])
                    return self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                if fault == "connection_errors":
                    self.close_connection = True
                    return  # no response at all: the client sees the connection dropped
                if fault == "timeouts":
                    time.sleep(server.timeout_delay_s)
                    return
                if server.latency_s:
                    time.sleep(server.latency_s)
                with server.lock:
                    server.requests.append({"path": self.path, **body})
                self._send(*server.reply(api, body))

        return Handler


class FaultProxy(LocalServer):
    """`LocalServer`'s seeded faults in front of a real OpenAI-compatible server at `upstream` (a /v1 URL).

    A request that meets no fault (or a truncated-200 fault) is forwarded and the server's status and body are
    passed back; the other faults never reach the server. Requests are forwarded one at a time, as a one-model
    llama.cpp server answers them anyway. `reset_prompt`: a llama.cpp server reuses the previous prompt's KV prefix,
    and a prefix computed in another prompt's batch can change a greedy reply; a one-token completion of this
    prompt (which shares only the BOS token with real prompts) sent before each forwarded request leaves the server
    in the same state before every request, so its reply is a function of the request alone.
    """

    def __init__(self, upstream: str, faults: float = 0.0, seed: int = 0, timeout_delay_s: float = 2.0,
                 reset_prompt: str | None = None, upstream_timeout_s: float = 600.0):
        super().__init__(strict=False, faults=faults, seed=seed, timeout_delay_s=timeout_delay_s)
        url = urlsplit(upstream)
        self.upstream_host, self.upstream_port, self.upstream_path = url.hostname, url.port, url.path.rstrip("/")
        self.reset_prompt = reset_prompt
        self.upstream_timeout_s = upstream_timeout_s
        self.forwarded = 0  # requests the server answered (resets not included)
        self._upstream_lock = threading.Lock()

    def _post(self, path: str, body: dict) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=self.upstream_timeout_s)
        try:
            conn.request("POST", self.upstream_path + path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def reply(self, api: str, body: dict) -> tuple[int, bytes]:
        path = "/chat/completions" if api == "chat" else "/completions"
        with self._upstream_lock:
            if self.reset_prompt is not None:
                self._post("/completions", {"prompt": self.reset_prompt, "max_tokens": 1, "temperature": 0.0})
            self.forwarded += 1
            return self._post(path, body)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_cpp_server(args: list[str], port: int | None = None, start_timeout_s: float = 60.0,
                     log: Path | None = None) -> Iterator[str]:
    """llama-cpp-python's server (`python -m teachloop.llm.serve ARGS`: models opened as in-process ones are) on
    127.0.0.1 for the block; yields its base URL (.../v1).

    `args` are the server's own (`--model ... --n_ctx ...`, or `--config_file F` whose host and port must be
    127.0.0.1 and `port`); `--host/--port` are added unless a config file is given. Its output goes to `log` if
    given. Stopped on exit.
    """
    port = port or free_port()
    if "--config_file" not in args:
        args = [*args, "--host", "127.0.0.1", "--port", str(port)]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "teachloop.llm.serve", *args], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:  # the model loads first: poll until /models answers
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the llama.cpp server exited during start-up (exit {proc.returncode}); "
                                       f"run `python -m teachloop.llm.serve {' '.join(args)}` to see why")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the llama.cpp server did not answer within {start_timeout_s:.0f} s")
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if log:
            out.close()
