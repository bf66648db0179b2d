"""The Ollama executor, against a loopback server that speaks Ollama's API (tests/ollama_server.py).

The executor is the real one with the real ``ollama`` client; swarms are real
runner processes on a SQLite file; the server is a real HTTP server on
127.0.0.1 whose switches make it slow, silent, failing or cut off mid-answer.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from ollama_server import FakeOllama

from timmy import ConfigError, Swarm
from timmy.engine import protocol as p
from timmy.engine.ollama import OllamaExecutor
from timmy.llm import (
    DEFAULT_HOST,
    DEFAULT_MODEL,
    base_url,
    choose_executor,
    model_for,
    probe,
    system_prompt,
    unreachable,
)
from timmy.market.personas import PERSONAS, Persona

FORGE, QUILL = PERSONAS["forge"], PERSONAS["quill"]
FIX = "fix the bug in the api client"          # forge's speciality
BLOG = "write a blog article about the release"  # quill's
CODER = "qwen2.5-coder:7b"
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(autouse=True)
def no_ollama_environment(monkeypatch):
    """The machine's own OLLAMA_HOST / TIMMY_OLLAMA_MODEL must not leak into a test."""
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("TIMMY_OLLAMA_MODEL", raising=False)


@pytest.fixture
def server():
    with FakeOllama(models=["llama3.2:latest", CODER]) as fake:
        yield fake


@pytest.fixture
def dead_url() -> str:
    """An address where nothing listens (a port just released): connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def pieces(model: str, description: str) -> int:
    """How many streamed pieces the fake server's answer has."""
    return len(f"{model} says: {description}".split())


# -- the executor against the server ---------------------------------------------------------


def test_a_won_task_is_answered_by_the_model_with_tokens_and_timing(server):
    server.chunk_delay = 0.02
    executor = OllamaExecutor(FORGE, host=server.url, timeout=5)

    outcome = executor.run(1, FIX, 1, on_spec=True)

    n = pieces("llama3.2", FIX)
    assert outcome.ok and outcome.output == f"llama3.2 says: {FIX}"
    assert not outcome.permanent
    usage = outcome.usage
    assert usage.model == "llama3.2"
    assert usage.output_tokens == n
    assert usage.prompt_tokens == sum(len(m["content"].split())
                                      for m in server.requests[-1]["messages"])
    streaming = 0.02 * (n - 1)        # the server paused between pieces: the answer streamed
    assert usage.first_token_s < streaming <= usage.server_s <= outcome.elapsed_s
    assert usage.load_s == pytest.approx(1e-6) and 0 < usage.eval_s <= usage.server_s


def test_the_persona_speaks_through_a_system_prompt_of_its_role_and_description(server):
    executor = OllamaExecutor(FORGE, host=server.url, timeout=5)

    executor.run(1, FIX, 1, on_spec=True)
    executor.run(2, BLOG, 1, on_spec=False)

    on, off = server.requests
    assert on["stream"] is True and on["model"] == "llama3.2"
    system, user = on["messages"]
    assert (system["role"], user["role"], user["content"]) == ("system", "user", FIX)
    for part in (FORGE.name, FORGE.role, FORGE.description, "coding"):
        assert part in system["content"]
    assert "outside your speciality" not in system["content"]
    assert "outside your speciality" in off["messages"][0]["content"]


def test_system_prompt_of_a_persona_from_a_file():
    scout = Persona(id="scout", name="Scout", role="Trail Finder", description="Finds the way.",
                    capabilities=("maps",), rate_sats=10, bid_base=10, bid_jitter=0,
                    preferred_keywords=("trail",))

    prompt = system_prompt(scout)

    assert prompt.startswith("You are Scout, the Trail Finder")
    assert "Finds the way." in prompt and "Your strengths: maps." in prompt


def test_the_model_is_the_personas_then_the_swarms_then_the_environments(monkeypatch):
    per_persona = {"forge": CODER}
    assert model_for("forge", per_persona) == CODER
    assert model_for("quill", per_persona) == DEFAULT_MODEL
    assert model_for("quill", "mistral") == "mistral"
    monkeypatch.setenv("TIMMY_OLLAMA_MODEL", "phi3")
    assert model_for("quill", per_persona) == "phi3"
    assert model_for("quill", "mistral") == "mistral"
    assert model_for("forge", per_persona) == CODER


def test_the_executor_reads_ollama_host_and_timmy_ollama_model(server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{server.port}")   # no scheme, as ollama allows
    monkeypatch.setenv("TIMMY_OLLAMA_MODEL", CODER)

    outcome = OllamaExecutor(QUILL).run(1, BLOG, 1, on_spec=True)

    assert outcome.ok, outcome.output
    assert server.requests[-1]["model"] == CODER
    assert outcome.output == f"{CODER} says: {BLOG}"


@pytest.mark.parametrize(("given", "url"), [
    (None, DEFAULT_HOST),
    ("example.com", "http://example.com:11434"),
    (":11435", "http://127.0.0.1:11435"),
    ("10.0.0.5:8080", "http://10.0.0.5:8080"),
    ("https://example.com/ollama/", "https://example.com:443/ollama"),
    ("http://[::1]:9000", "http://[::1]:9000"),
])
def test_a_host_is_read_as_the_ollama_client_reads_it(given, url):
    assert base_url(given) == url


def test_a_silent_server_fails_the_attempt_after_the_timeout(server):
    server.first_byte_delay = 5.0
    executor = OllamaExecutor(FORGE, host=server.url, timeout=0.3)

    started = time.monotonic()
    outcome = executor.run(1, FIX, 1, on_spec=True)

    assert time.monotonic() - started < 2.5
    assert not outcome.ok and not outcome.permanent
    assert "sent nothing for 0.3s" in outcome.output and "hint: " in outcome.output


def test_a_server_that_is_down_fails_the_attempt_with_ollama_serve_as_hint(dead_url):
    outcome = OllamaExecutor(FORGE, host=dead_url, timeout=2).run(1, FIX, 1, on_spec=True)

    assert not outcome.ok and not outcome.permanent   # it may be up by the next attempt
    assert f"cannot reach the Ollama server at {dead_url} (connection refused)" in outcome.output
    assert outcome.output.endswith(f"hint: OLLAMA_HOST={dead_url} ollama serve")
    assert unreachable(DEFAULT_HOST, "connection refused").hint == "ollama serve"
    assert "ollama serve" in unreachable("http://10.1.2.3:11434", "timeout").hint


def test_a_model_not_pulled_fails_for_good_with_ollama_pull_as_hint(server):
    outcome = OllamaExecutor(FORGE, model="mistral", host=server.url).run(1, FIX, 1, True)

    assert not outcome.ok
    assert outcome.permanent        # every runner would get the same 404
    assert f'model "mistral" is not on the Ollama server at {server.url}' in outcome.output
    assert outcome.output.endswith(f"hint: OLLAMA_HOST={server.url} ollama pull mistral")


def test_an_error_in_the_middle_of_the_stream_fails_the_attempt(server):
    server.error_after, server.fail_message = 2, "llama runner process has terminated"

    outcome = OllamaExecutor(FORGE, host=server.url, timeout=5).run(1, FIX, 1, True)

    assert not outcome.ok and not outcome.permanent
    assert "failed mid-answer: llama runner process has terminated" in outcome.output


def test_a_connection_dropped_in_the_middle_of_the_answer_fails_the_attempt(server):
    server.disconnect_after = 2

    outcome = OllamaExecutor(FORGE, host=server.url, timeout=5).run(1, FIX, 1, True)

    assert not outcome.ok and not outcome.permanent
    assert "broke mid-answer" in outcome.output and "ollama serve" in outcome.output


@pytest.mark.parametrize(("status", "permanent"), [(500, False), (503, False), (400, True)])
def test_an_error_status_fails_the_attempt_and_only_a_5xx_is_worth_retrying(
        server, status, permanent):
    server.fail_status, server.fail_message = status, "something is wrong"

    outcome = OllamaExecutor(FORGE, host=server.url, timeout=5).run(1, FIX, 1, True)

    assert not outcome.ok and outcome.permanent is permanent
    assert f"(HTTP {status}): something is wrong" in outcome.output


def test_the_test_server_answers_the_client_without_streaming_too(server):
    import ollama

    answer = ollama.Client(host=server.url).chat(
        model="llama3.2", messages=[{"role": "user", "content": "hello there"}], stream=False)

    assert answer.message.content == "llama3.2 says: hello there"
    assert answer.done and answer.eval_count == 4


# -- probe and auto ------------------------------------------------------------------------


def test_probe_reports_the_servers_version_and_models(server):
    found = probe(server.url, "llama3.2")

    assert found.ok and found.reachable and found.has_model and found.client_installed
    assert (found.version, found.models) == ("0.6.5", ("llama3.2:latest", CODER))
    assert found.missing(["llama3.2", CODER, "mistral", "mistral"]) == ["mistral"]

    missing = probe(server.url, "mistral")
    assert missing.reachable and not missing.has_model and not missing.ok
    assert missing.hint == f"OLLAMA_HOST={server.url} ollama pull mistral"


def test_probe_of_a_server_that_is_down_says_what_to_start(dead_url):
    found = probe(dead_url, "llama3.2")

    assert not found.reachable and not found.ok
    assert "connection refused" in found.problem
    assert found.hint == f"OLLAMA_HOST={dead_url} ollama serve"


def test_probe_of_a_silent_server_gives_up_after_its_timeout(server):
    server.first_byte_delay = 5.0

    started = time.monotonic()
    found = probe(server.url, timeout=0.2)

    assert time.monotonic() - started < 2
    assert not found.reachable and "no answer within 0.2s" in found.problem


def test_auto_chooses_ollama_only_when_the_server_holds_every_model(server, dead_url):
    assert choose_executor(server.url, ["llama3.2", CODER])[0] == "ollama"
    name, why = choose_executor(server.url, ["llama3.2", "mistral", "phi3"])
    assert name == "simulated"
    assert why.endswith(f"hint: OLLAMA_HOST={server.url} ollama pull mistral && "
                        f"OLLAMA_HOST={server.url} ollama pull phi3")
    name, why = choose_executor(dead_url, ["llama3.2"])
    assert name == "simulated" and "ollama serve" in why


# -- swarms: real runners, a real SQLite file ---------------------------------------------


def test_a_swarm_with_the_ollama_executor_completes_tasks_through_the_server(
        server, make_swarm, db_path):
    swarm = make_swarm(executor="ollama", ollama_host=server.url, model={"forge": CODER})
    swarm.spawn_all(["forge", "quill"])

    done = swarm.run([FIX, BLOG], timeout=30)

    assert swarm.executor == "ollama"
    assert [(t.status, t.assigned_agent, t.result) for t in done] == [
        ("completed", "forge-1", f"{CODER} says: {FIX}"),
        ("completed", "quill-1", f"llama3.2 says: {BLOG}"),
    ]
    by_model = {r["model"]: r["messages"][0]["content"] for r in server.requests}
    assert FORGE.role in by_model[CODER] and QUILL.role in by_model["llama3.2"]
    completed = {e.task_id: e.data for e in swarm.events() if e.kind == "task_completed"}
    for task in done:
        usage = completed[task.task_id]["usage"]
        assert usage["output_tokens"] == pieces(usage["model"], task.description)
        assert usage["prompt_tokens"] > 0
        assert 0 < usage["server_s"] <= completed[task.task_id]["elapsed_s"]
    swarm.close()
    with sqlite3.connect(db_path) as conn:   # what was stored, read back without timmy
        rows = conn.execute("select status, result from tasks order by task_id").fetchall()
        stored = conn.execute("select data from events where kind = 'task_completed'").fetchall()
    assert rows == [("completed", f"{CODER} says: {FIX}"), ("completed", f"llama3.2 says: {BLOG}")]
    assert {json.loads(d)["usage"]["model"] for (d,) in stored} == {CODER, "llama3.2"}


def test_a_missing_model_fails_at_once_and_a_server_down_is_auctioned_again(
        server, make_swarm):
    swarm = make_swarm(executor="ollama", ollama_host=server.url, max_attempts=2)
    swarm.spawn_all(["forge", "quill"])

    server.models = [CODER]           # llama3.2 not pulled: no runner could do it
    missing = swarm.run([FIX], timeout=20)[0]
    server.stop()                     # the server goes away: another attempt may find it back
    down = swarm.run([BLOG], timeout=20)[0]

    assert (missing.status, missing.attempts) == ("failed", 1)
    assert f"OLLAMA_HOST={server.url} ollama pull llama3.2" in missing.reason
    assert "not auctioned again" in missing.reason
    assert (down.status, down.attempts) == ("failed", 2)
    assert f"OLLAMA_HOST={server.url} ollama serve" in down.reason
    assert down.reason.endswith("gave up after 2 attempts")
    requeued = [e for e in swarm.events() if e.kind == "task_requeued"]
    assert [e.task_id for e in requeued] == [down.task_id]


def test_auto_uses_ollama_when_the_server_answers_with_the_model(server, make_swarm):
    swarm = make_swarm(executor="auto", ollama_host=server.url)
    swarm.spawn("forge")

    task = swarm.run([FIX], timeout=20)[0]

    assert swarm.executor == "ollama" and "version 0.6.5" in swarm.executor_reason
    assert task.result == f"llama3.2 says: {FIX}"
    [chosen] = [e for e in swarm.events() if e.kind == "executor_chosen"]
    assert chosen.data == {"asked": "auto", "executor": "ollama", "why": swarm.executor_reason}
    assert swarm.status()["executor"] == "ollama"


@pytest.mark.parametrize("trouble", ["model not pulled", "server down"])
def test_auto_falls_back_to_simulated_and_says_why(server, make_swarm, trouble):
    if trouble == "model not pulled":
        server.models = [CODER]
        fix = f"OLLAMA_HOST={server.url} ollama pull llama3.2"
    else:
        server.stop()
        fix = f"OLLAMA_HOST={server.url} ollama serve"
    swarm = make_swarm(executor="auto", ollama_host=server.url)
    swarm.spawn("forge")

    task = swarm.run([FIX], timeout=20)[0]

    assert swarm.executor == "simulated" and swarm.executor_reason.endswith(f"hint: {fix}")
    assert task.result == f"forge-1 did: {FIX}"     # the simulated executor's result
    assert swarm.status()["executor"] == "simulated"


@pytest.mark.parametrize(("options", "needle"), [
    ({"model": "not a model!"}, "not an Ollama model name"),
    ({"model": {"nobody": "llama3.2"}}, "'nobody'"),
    ({"ollama_timeout": 0}, "ollama_timeout"),
    ({"ollama_host": "ftp://example.com"}, "not an http(s) address"),
])
def test_a_bad_ollama_setting_is_refused_before_anything_starts(db_url, db_path, options,
                                                                 needle):
    with pytest.raises(ConfigError) as caught:
        Swarm(db=db_url, executor="ollama", **options)

    assert needle in caught.value.message and caught.value.hint
    assert not db_path.exists()


def test_a_bad_timmy_ollama_model_is_refused_too(db_url, monkeypatch):
    monkeypatch.setenv("TIMMY_OLLAMA_MODEL", "two words")
    with pytest.raises(ConfigError, match="TIMMY_OLLAMA_MODEL"):
        Swarm(db=db_url, executor="auto")


# -- the wire, the import, the command line ------------------------------------------------


def test_a_result_carries_usage_and_a_version_1_result_still_decodes():
    usage = p.Usage(model="llama3.2", prompt_tokens=12, output_tokens=5, first_token_s=0.01,
                    server_s=0.2, load_s=0.0, eval_s=0.15)
    line = p.encode(p.Result(task_id=7, ok=False, output="x", usage=usage, permanent=True))

    assert p.decode_runner(line) == p.Result(task_id=7, ok=False, output="x", usage=usage,
                                             permanent=True)
    old = p.decode_runner(b'{"v":1,"type":"result","task_id":7,"ok":true,"output":"done",'
                          b'"elapsed_s":0.5}')
    assert (old.usage, old.permanent) == (None, False)
    with pytest.raises(p.ProtocolError):
        p.decode_runner(msgspec.json.encode({"v": 1, "type": "result", "task_id": 7, "ok": True,
                                             "usage": {"model": "m", "output_tokens": -1}}))


def test_import_timmy_does_not_import_the_ollama_client():
    code = ("import sys, timmy, timmy.llm, timmy.engine.runner, timmy.engine.coordinator; "
            "timmy.Swarm; print('ollama' in sys.modules, 'httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout.split() == ["False", "False"]


def _timmy(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "timmy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200", **env})


def test_timmy_run_with_model_options_answers_through_the_server(server, tmp_path):
    (tmp_path / "tasks.txt").write_text(f"{FIX}\n{BLOG}\n")
    personas = tmp_path / "two.json"
    personas.write_text(json.dumps([{"id": p_.id, "role": p_.role, "description": p_.description,
                                     "bid_base": p_.bid_base, "bid_jitter": p_.bid_jitter,
                                     "preferred_keywords": list(p_.preferred_keywords)}
                                    for p_ in (FORGE, QUILL)]))

    proc = _timmy("run", "tasks.txt", "--personas", str(personas), "--executor", "auto",
                  "--model", "mistral", "--model", f"forge={CODER}", "--model", "quill=llama3.2",
                  cwd=tmp_path, OLLAMA_HOST=server.url)

    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "executor auto: ollama" in proc.stderr   # mistral is nobody's model: not needed
    assert f"{CODER} says: {FIX}" in proc.stdout and f"llama3.2 says: {BLOG}" in proc.stdout
    assert sorted(r["model"] for r in server.requests) == sorted([CODER, "llama3.2"])


def test_timmy_run_refuses_a_model_for_a_persona_it_does_not_have(tmp_path):
    (tmp_path / "tasks.txt").write_text(f"{FIX}\n")

    proc = _timmy("run", "tasks.txt", "--executor", "ollama", "--model", "nobody=llama3.2",
                  cwd=tmp_path)

    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no persona 'nobody'" in proc.stderr and "hint: personas: echo" in proc.stderr


@pytest.mark.timeout(60)
def test_the_executors_benchmark_prints_its_figures():
    out = subprocess.run([sys.executable, str(BENCH / "executors.py"), "--tasks", "6",
                          "--delay", "0.01", "--long-words", "20", "--swarm-tasks", "6",
                          "--runners", "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "overhead per task" in out.stdout and "tasks/s" in out.stdout


def test_timmy_serve_passes_the_model_on_and_says_what_auto_chose(server, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "timmy", "serve", "--db", str(tmp_path / "s.db"), "--port", "0",
         "--executor", "auto", "--model", f"forge={CODER}", "--no-spawn"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OLLAMA_HOST": server.url, "TIMMY_OLLAMA_MODEL": "mistral"})
    try:
        lines = []                      # the tokens, then "listening"
        while len(lines) < 5 and not any("listening on" in line for line in lines):
            lines.append(proc.stdout.readline())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)

    assert "listening on" in lines[-1] and "executor simulated" in lines[-1], (lines, err)
    # every other persona would ask TIMMY_OLLAMA_MODEL, which the server does not hold
    assert f"OLLAMA_HOST={server.url} ollama pull mistral" in err
