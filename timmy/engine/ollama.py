"""The Ollama executor: the winning runner's persona answers its task through an Ollama server
(``POST /api/chat``, streamed; the prompt and the server's address come from `timmy.llm`)."""

from __future__ import annotations

import time

from timmy.engine.outcome import Outcome
from timmy.engine.protocol import Usage
from timmy.errors import ExecutorUnavailable, require
from timmy.llm import (
    CLIP,
    DEFAULT_TIMEOUT,
    HOST_ENV,
    base_url,
    check_model,
    model_for,
    model_missing,
    ollama_command,
    one_line,
    serve_hint,
    system_prompt,
    unreachable,
)
from timmy.market.personas import Persona


class OllamaExecutor:
    """Sends a won task to an Ollama server as the persona, streams the answer back.

    Runs on the runner's worker thread (``instant`` is False), so the runner keeps
    bidding and answering pings while the model writes. Never raises for a server that
    fails: the `Outcome` says why, with the hint, and whether another attempt can help::

        server down, connection refused    re-auctioned (up to max_attempts)  hint: ollama serve
        no answer within the timeout       re-auctioned                       hint: the timeout
        HTTP 5xx, an error mid-stream      re-auctioned                       hint: server's log
        connection dropped mid-answer      re-auctioned                       hint: ollama serve
        model not pulled (HTTP 404)        fails now: every runner would too  hint: ollama pull
        any other refusal (HTTP 4xx)       fails now

    ``timeout`` is how long the server may stay silent: to connect, before its first byte,
    and between two pieces of a streamed answer; not a cap on a long answer that keeps
    coming.
    """

    instant = False

    def __init__(self, persona: Persona, *, model: str | None = None, host: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._ollama = require("ollama", "llm")   # MissingDependency: pip install "timmy[llm]"
        import httpx  # the client's transport, a dependency of ollama: its errors are ours

        self._httpx = httpx
        self.persona = persona
        self.model = check_model(model) if model else model_for(persona.id)
        self.host = base_url(host)
        self.timeout = timeout
        self._client = self._ollama.Client(host=self.host, timeout=timeout)

    def run(self, task_id: int, description: str, attempt: int, on_spec: bool) -> Outcome:
        messages = [{"role": "system", "content": system_prompt(self.persona, on_spec)},
                    {"role": "user", "content": description}]
        started = time.perf_counter()
        first_token = None
        parts: list[str] = []
        final = None
        try:
            for chunk in self._client.chat(model=self.model, messages=messages, stream=True):
                content = chunk.message.content if chunk.message is not None else None
                if content:
                    if first_token is None:
                        first_token = time.perf_counter() - started
                    parts.append(content)
                if chunk.done:
                    final = chunk
        except Exception as exc:
            explained = self.explain(exc)
            if explained is None:
                raise
            error, permanent = explained
            return Outcome(False, one_line(error), time.perf_counter() - started,
                           permanent=permanent)
        elapsed = time.perf_counter() - started
        if final is None:
            error = ExecutorUnavailable(
                f"the Ollama server at {self.host} ended the answer before it was done",
                hint=f"check that it still runs: {serve_hint(self.host)}")
            return Outcome(False, one_line(error), elapsed)
        usage = Usage(model=final.model or self.model,
                      prompt_tokens=final.prompt_eval_count or 0,
                      output_tokens=final.eval_count or 0,
                      first_token_s=first_token,
                      server_s=_seconds(final.total_duration),
                      load_s=_seconds(final.load_duration),
                      eval_s=_seconds(final.eval_duration))
        return Outcome(True, "".join(parts), elapsed, usage=usage)

    def explain(self, exc: BaseException) -> tuple[ExecutorUnavailable, bool] | None:
        """The error a failed request comes to, and whether it is permanent; None: a bug."""
        httpx, host = self._httpx, self.host
        if isinstance(exc, self._ollama.ResponseError):
            text = " ".join(str(exc.error).split())[:CLIP]
            status = exc.status_code
            if status == 404 and "not found" in text.lower():
                return model_missing(host, self.model), True
            if status == -1:  # an {"error": ...} line inside a streamed answer
                return ExecutorUnavailable(
                    f"the Ollama server at {host} failed mid-answer: {text}",
                    hint="see the server's log; the task is auctioned again"), False
            if status >= 500:
                return ExecutorUnavailable(
                    f"the Ollama server at {host} failed (HTTP {status}): {text}",
                    hint="see the server's log; the task is auctioned again"), False
            return ExecutorUnavailable(
                f"the Ollama server at {host} refused the request (HTTP {status}): {text}",
                hint=f"check the model name ({ollama_command(host, 'list')})"), True
        if isinstance(exc, httpx.ConnectTimeout):
            return unreachable(host, f"no connection within {self.timeout:g}s"), False
        if isinstance(exc, httpx.TimeoutException):
            return ExecutorUnavailable(
                f"the Ollama server at {host} sent nothing for {self.timeout:g}s",
                hint="a first request loads the model and can be slow: raise ollama_timeout, "
                     "or use a smaller model"), False
        if isinstance(exc, ConnectionError | httpx.ConnectError):
            # httpx says "[Errno 111] Connection refused"; the client replaces that with a
            # generic "Failed to connect to Ollama..." in some calls (not in streamed ones).
            text = " ".join(str(exc).split())
            refused = isinstance(exc, ConnectionRefusedError) or "refused" in text.lower()
            generic = "Failed to connect to Ollama" in text
            why = "connection refused" if refused else "no connection" if generic else text
            return unreachable(host, why[:CLIP]), False
        if isinstance(exc, httpx.TransportError):
            return ExecutorUnavailable(
                f"the connection to the Ollama server at {host} broke mid-answer "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:CLIP]})",
                hint=f"check that it still runs: {serve_hint(host)}"), False
        if isinstance(exc, ValueError):  # a line that is not JSON, or not an answer's shape
            return ExecutorUnavailable(
                f"the server at {host} sent something that is not an Ollama answer: "
                f"{' '.join(str(exc).split())[:CLIP]}",
                hint=f"check that {host} is an Ollama server ({HOST_ENV})"), False
        return None


def _seconds(nanoseconds: int | None) -> float | None:
    return None if nanoseconds is None else max(nanoseconds, 0) / 1e9
