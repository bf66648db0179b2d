"""A small loopback HTTP server that speaks the part of Ollama's API the ``ollama`` client uses.

No real Ollama server with a model can run in CI, so tests and the executors
benchmark start this one instead. It answers like Ollama does (status codes,
JSON bodies, NDJSON streamed with chunked transfer encoding):

    GET  /api/version   {"version": ...}
    GET  /api/tags      {"models": [{"name": ..., "model": ..., ...}]}
    POST /api/chat      streamed (the default) or not; 404 {"error": "model \\"x\\" not found,
                        try pulling it first"} for a model it does not hold

and it has switches, settable at any time, for what a real server does on a bad day:

    first_byte_delay    seconds before any answer starts (a model loading; timeouts)
    chunk_delay         seconds between two pieces of a streamed answer (the model's speed)
    fail_status         answer every chat with this HTTP status and {"error": fail_message}
    error_after         send that many pieces, then an {"error": ...} line (fails mid-stream)
    disconnect_after    send that many pieces, then drop the connection
    model_delays        {model: mean seconds}: a further wait before a chat with that model
                        answers, drawn from a gamma law with coefficient of variation
                        ``delay_cv`` (0: exactly the mean), seeded by ``delay_seed`` (each
                        model has a "speed" of its own, that a client cannot know in advance)

The answer is ``"<model> says: <the user's message>"``, one word a piece, so a test
can tell which model answered what. Every chat request body is kept in ``requests``.
Durations in the final piece are the server's own, measured (so a client can subtract
them: what is left is the client's overhead).

    with FakeOllama(models=["llama3.2:latest"]) as server:
        ollama.Client(host=server.url).chat(model="llama3.2", messages=[...])
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOllama:
    """An Ollama look-alike on 127.0.0.1 (a free port), served from a background thread."""

    def __init__(self, models=("llama3.2:latest",), *, version: str = "0.6.5",
                 first_byte_delay: float = 0.0, chunk_delay: float = 0.0,
                 fail_status: int | None = None, fail_message: str = "server overloaded",
                 error_after: int | None = None, disconnect_after: int | None = None,
                 model_delays: dict[str, float] | None = None, delay_cv: float = 0.0,
                 delay_seed: int = 0) -> None:
        self.models = list(models)
        self.version = version
        self.first_byte_delay = first_byte_delay
        self.chunk_delay = chunk_delay
        self.fail_status = fail_status
        self.fail_message = fail_message
        self.error_after = error_after
        self.disconnect_after = disconnect_after
        self.model_delays = dict(model_delays or {})
        self.delay_cv = delay_cv
        self._delay_rng = random.Random(delay_seed)
        self._delay_lock = threading.Lock()
        self.requests: list[dict] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._port = 0
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeOllama:
        handler = type("Handler", (_Handler,), {"fake": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False   # a handler asleep in a delay must not hold up stop()
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="fake-ollama")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop as a server that goes down does: new connections are refused and the open
        ones (a client's kept-alive connection, an answer being streamed) are cut."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._httpd = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on (still known after `stop`: it is where it was)."""
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- behaviour -----------------------------------------------------------------------
    def holds(self, name: str) -> bool:
        return name in self.models or (":" not in name and f"{name}:latest" in self.models)

    def reply(self, model: str, messages: list[dict]) -> list[str]:
        """The pieces of the answer: "<model> says: <last user message>", a word each."""
        said = next((m.get("content", "") for m in reversed(messages)
                     if m.get("role") == "user"), "")
        words = f"{model} says: {said}".split()
        return [w + " " for w in words[:-1]] + words[-1:]

    def model_delay(self, model: str) -> float:
        """This request's wait for ``model`` (`model_delays`; 0 for a model not in it)."""
        mean = self.model_delays.get(model, self.model_delays.get(model.split(":")[0], 0.0))
        if mean <= 0:
            return 0.0
        if self.delay_cv <= 0:
            return mean
        shape = 1.0 / self.delay_cv ** 2
        with self._delay_lock:
            return self._delay_rng.gammavariate(shape, mean / shape)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive and chunked streaming, as Ollama (Go) does
    disable_nagle_algorithm = True  # Go sets TCP_NODELAY too; without it every small piece
                                    # waits ~40 ms for the client's delayed ACK
    fake: FakeOllama

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def handle(self) -> None:
        self.fake._connections.add(self.connection)
        try:
            # The client gave up (its timeout) or dropped us: nothing left to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                super().handle()
        finally:
            self.fake._connections.discard(self.connection)

    # -- plumbing ----------------------------------------------------------------------
    def _send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, obj: object) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- endpoints -----------------------------------------------------------------------
    def do_GET(self) -> None:
        fake = self.fake
        fake.sleep(fake.first_byte_delay)
        if self.path == "/api/version":
            self._send_json(200, {"version": fake.version})
        elif self.path == "/api/tags":
            self._send_json(200, {"models": [
                {"name": m, "model": m, "modified_at": _now(), "size": 2_019_393_189,
                 "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                 "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B",
                             "quantization_level": "Q4_K_M"}}
                for m in list(fake.models)]})
        else:
            self._not_found()

    def do_POST(self) -> None:
        if self.path != "/api/chat":
            self._not_found()
            return
        fake = self.fake
        started = time.perf_counter_ns()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        fake.requests.append(body)
        model = body.get("model", "")
        fake.sleep(fake.first_byte_delay)
        if not fake.holds(model):
            self._send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        if fake.fail_status is not None:
            self._send_json(fake.fail_status, {"error": fake.fail_message})
            return
        fake.sleep(fake.model_delay(model))
        messages = body.get("messages") or []
        pieces = fake.reply(model, messages)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        if body.get("stream") is False:
            fake.sleep(fake.chunk_delay * len(pieces))
            self._send_json(200, self._final(model, "".join(pieces), started, len(pieces),
                                             prompt_tokens))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, piece in enumerate(pieces):
            if fake.disconnect_after is not None and i >= fake.disconnect_after:
                self._drop()
                return
            if fake.error_after is not None and i >= fake.error_after:
                self._chunk({"error": fake.fail_message})
                self._end_chunks()
                return
            if i:
                fake.sleep(fake.chunk_delay)
            self._chunk({"model": model, "created_at": _now(),
                         "message": {"role": "assistant", "content": piece}, "done": False})
        self._chunk(self._final(model, "", started, len(pieces), prompt_tokens))
        self._end_chunks()

    def _final(self, model: str, content: str, started_ns: int, pieces: int,
               prompt_tokens: int) -> dict:
        total = time.perf_counter_ns() - started_ns
        return {"model": model, "created_at": _now(),
                "message": {"role": "assistant", "content": content},
                "done": True, "done_reason": "stop",
                "total_duration": total, "load_duration": 1_000,
                "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 2_000,
                "eval_count": pieces, "eval_duration": max(total - 3_000, 0)}

    def _drop(self) -> None:
        """Close the connection in the middle of a chunked body, as a crashed server would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def _not_found(self) -> None:
        data = b"404 page not found"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    """``python tests/ollama_server.py [--delay S] [--model NAME ...]``: serve in a process of
    its own (the benchmark's way: the server then takes no CPU from the process it measures).
    Prints its URL on one line, serves until stdin closes."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    ap.add_argument("--delay", type=float, default=0.0, help="first_byte_delay, in seconds")
    ap.add_argument("--chunk-delay", type=float, default=0.0)
    ap.add_argument("--model", action="append", dest="models")
    ap.add_argument("--model-delay", action="append", default=[], metavar="MODEL=SECONDS",
                    help="a model's mean wait (model_delays); the model is served too")
    ap.add_argument("--delay-cv", type=float, default=0.0)
    ap.add_argument("--delay-seed", type=int, default=0)
    args = ap.parse_args()
    delays = {name: float(s) for name, s in (d.split("=", 1) for d in args.model_delay)}
    models = (args.models or ([] if delays else ["llama3.2:latest"])) + list(delays)
    with FakeOllama(models=models, first_byte_delay=args.delay, chunk_delay=args.chunk_delay,
                    model_delays=delays, delay_cv=args.delay_cv,
                    delay_seed=args.delay_seed) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
