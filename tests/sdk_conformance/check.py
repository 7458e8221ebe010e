#!/usr/bin/env python3
"""Drives `batch mock` with the official OpenAI and Anthropic Python SDKs, the way their docs
show, and checks that every call behaves as it would against the real API: the right objects
come back (parsed by the SDK's own types and helpers), and errors raise the right exception
classes. Started by run.sh, which makes the virtualenv and builds the binary.

Each check prints PASS or FAIL with its name; the last line is "N passed, N failed". The exit
status is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, List

import anthropic
import openai
from pydantic import BaseModel

KEY = "sk-mock-conformance"
OPENAI_MODEL = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"


def expected(prompt: str) -> str:
    """The mock's deterministic answer to a short prompt."""
    return 'mock answer to "' + " ".join(prompt.split()) + '"'


class Mock:
    """A `batch mock` process on a free 127.0.0.1 port, stopped by stop()."""

    def __init__(self, binary: str, *args: str) -> None:
        cmd = [binary, "mock", "--port", "0", "--latency-ms", "0", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if not line.startswith("http://127.0.0.1:"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            raise RuntimeError(f"`{' '.join(cmd)}` did not start: {line!r} {err!r}")
        self.url = line  # http://127.0.0.1:PORT/v1
        self.root = line[: -len("/v1")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def openai(self, **kw) -> openai.OpenAI:
        kw.setdefault("api_key", KEY)
        return openai.OpenAI(base_url=self.url, max_retries=0, **kw)

    def anthropic(self, **kw) -> anthropic.Anthropic:
        kw.setdefault("api_key", KEY)
        return anthropic.Anthropic(base_url=self.root, max_retries=0, **kw)


CHECKS: List[tuple] = []


def check(name: str) -> Callable:
    def register(f: Callable) -> Callable:
        CHECKS.append((name, f))
        return f

    return register


def raises(exc_type, f: Callable, status: int | None = None):
    """Runs f, which must raise exc_type (with HTTP `status` when given); returns the error."""
    try:
        f()
    except exc_type as e:
        if status is not None:
            assert e.status_code == status, f"status {e.status_code}, expected {status}"
        return e
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"raised {type(e).__name__}: {e}, expected {exc_type.__name__}")
    raise AssertionError(f"did not raise {exc_type.__name__}")


def wait_for(f: Callable, done: Callable, timeout: float = 30.0):
    """Calls f until done(result) holds; returns the result."""
    deadline = time.monotonic() + timeout
    while True:
        r = f()
        if done(r):
            return r
        assert time.monotonic() < deadline, f"still not done after {timeout}s: {r}"
        time.sleep(0.2)


class Verdict(BaseModel):
    title: str
    score: int
    approved: bool
    tags: List[str]


class Weather(BaseModel):
    city: str
    days: int


WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
CHAT_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_PARAMS},
}
USER = [{"role": "user", "content": "Say hello"}]


# ---------------------------------------------------------------- OpenAI


@check("openai: models.list and models.retrieve")
def _(m: Mock, _o: dict):
    c = m.openai()
    ids = [model.id for model in c.models.list()]
    assert OPENAI_MODEL in ids, ids
    model = c.models.retrieve(OPENAI_MODEL)
    assert model.id == OPENAI_MODEL and model.object == "model", model


@check("openai: chat.completions.create")
def _(m: Mock, _o: dict):
    raw = m.openai().chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=USER)
    assert raw.headers.get("x-request-id"), dict(raw.headers)
    r = raw.parse()
    assert r.object == "chat.completion", r
    assert r.choices[0].message.content == expected("Say hello"), r
    assert r.choices[0].finish_reason == "stop", r
    u = r.usage
    assert u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens, u


@check("openai: chat n=3 gives 3 choices")
def _(m: Mock, _o: dict):
    c = m.openai()
    one = c.chat.completions.create(model=OPENAI_MODEL, messages=USER)
    r = c.chat.completions.create(model=OPENAI_MODEL, messages=USER, n=3)
    assert [ch.index for ch in r.choices] == [0, 1, 2], r.choices
    assert all(ch.message.content == expected("Say hello") for ch in r.choices), r.choices
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens, r.usage
    raises(openai.BadRequestError, lambda: c.chat.completions.create(
        model=OPENAI_MODEL, messages=USER, n=0), 400)


@check("openai: chat structured output (parse with a Pydantic model, json_schema)")
def _(m: Mock, _o: dict):
    r = m.openai().chat.completions.parse(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "Rate this"}],
        response_format=Verdict)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Verdict), r
    assert isinstance(parsed.tags, list), parsed


@check("openai: chat response_format json_object")
def _(m: Mock, _o: dict):
    c = m.openai()
    r = c.chat.completions.create(
        model=OPENAI_MODEL, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Answer in JSON: hello"}])
    v = json.loads(r.choices[0].message.content)
    assert isinstance(v, dict) and v, v
    e = raises(openai.BadRequestError, lambda: c.chat.completions.create(
        model=OPENAI_MODEL, response_format={"type": "json_object"}, messages=USER), 400)
    assert "json" in str(e.message).lower(), e.message


@check("openai: chat stream=True yields chunks, with include_usage")
def _(m: Mock, _o: dict):
    c = m.openai()
    plain = c.chat.completions.create(model=OPENAI_MODEL, messages=USER)
    chunks = list(c.chat.completions.create(
        model=OPENAI_MODEL, messages=USER, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) > 2, chunks
    assert all(ch.object == "chat.completion.chunk" for ch in chunks), chunks
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content, text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop", finishes
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    raises(openai.BadRequestError, lambda: c.chat.completions.create(
        model=OPENAI_MODEL, messages=USER, stream_options={"include_usage": True}), 400)


@check("openai: chat.completions.stream helper")
def _(m: Mock, _o: dict):
    with m.openai().chat.completions.stream(model=OPENAI_MODEL, messages=USER) as s:
        deltas = [e.delta for e in s if e.type == "content.delta"]
        final = s.get_final_completion()
    assert "".join(deltas) == expected("Say hello"), deltas
    assert final.choices[0].message.content == expected("Say hello"), final


@check("openai: chat tools and tool_choice")
def _(m: Mock, _o: dict):
    c = m.openai()
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        r = c.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[CHAT_TOOL], tool_choice=choice)
        call = r.choices[0].message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather", r
        args = json.loads(call.function.arguments)
        assert isinstance(args["city"], str) and isinstance(args["days"], int), args
        assert r.choices[0].finish_reason == "tool_calls", r
    r = c.chat.completions.create(model=OPENAI_MODEL, messages=USER, tools=[CHAT_TOOL])
    assert r.choices[0].message.content == expected("Say hello"), r  # auto: it may answer
    raises(openai.BadRequestError, lambda: c.chat.completions.create(
        model=OPENAI_MODEL, messages=USER, tools=[CHAT_TOOL],
        tool_choice={"type": "function", "function": {"name": "nope"}}), 400)
    # The SDK's own tool helper: strict schema from a Pydantic model, parsed arguments.
    r = c.chat.completions.parse(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "Weather?"}],
        tools=[openai.pydantic_function_tool(Weather)], tool_choice="required")
    parsed = r.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed, Weather), r
    # Streamed: the arguments arrive in pieces.
    chunks = list(c.chat.completions.create(
        model=OPENAI_MODEL, messages=USER, tools=[CHAT_TOOL], tool_choice="required",
        stream=True))
    args = "".join(
        tc.function.arguments or ""
        for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls
        for tc in ch.choices[0].delta.tool_calls)
    assert set(json.loads(args)) == {"city", "days"}, args


@check("openai: responses.create")
def _(m: Mock, _o: dict):
    r = m.openai().responses.create(model=OPENAI_MODEL, input="Say hello",
                                    instructions="Be brief.")
    assert r.object == "response" and r.status == "completed", r
    assert r.output_text == expected("Say hello"), r.output_text
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r.usage


@check("openai: responses structured output (parse, json_schema) and json_object")
def _(m: Mock, _o: dict):
    c = m.openai()
    r = c.responses.parse(model=OPENAI_MODEL, input="Rate this", text_format=Verdict)
    assert isinstance(r.output_parsed, Verdict), r
    r = c.responses.create(model=OPENAI_MODEL, input="Reply in json: hi",
                           text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(r.output_text), dict), r.output_text


@check("openai: responses stream=True events and responses.stream helper")
def _(m: Mock, _o: dict):
    c = m.openai()
    events = list(c.responses.create(model=OPENAI_MODEL, input="Say hello", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected("Say hello"), text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == expected("Say hello")
    with c.responses.stream(model=OPENAI_MODEL, input="Say hello") as s:
        for _event in s:
            pass
        final = s.get_final_response()
    assert final.output_text == expected("Say hello"), final


@check("openai: responses function tools")
def _(m: Mock, _o: dict):
    c = m.openai()
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMS,
            "strict": True}
    r = c.responses.create(model=OPENAI_MODEL, input="Weather in Paris?", tools=[tool],
                           tool_choice={"type": "function", "name": "get_weather"})
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather", r.output
    assert set(json.loads(call.arguments)) == {"city", "days"}, call
    with c.responses.stream(model=OPENAI_MODEL, input="Weather?", tools=[tool],
                            tool_choice="required") as s:
        final = s.get_final_response()
    assert final.output[0].type == "function_call", final.output
    raises(openai.BadRequestError, lambda: c.responses.create(
        model=OPENAI_MODEL, input="x", tools=[{"type": "web_search"}]), 400)


@check("openai: errors raise the SDK's exception classes")
def _(m: Mock, _o: dict):
    # No key (the SDK insists on one, so the header is left out of the request on purpose).
    c = m.openai()
    no_key = {"Authorization": openai.Omit()}
    e = raises(openai.AuthenticationError, lambda: c.chat.completions.create(
        model=OPENAI_MODEL, messages=USER, extra_headers=no_key), 401)
    assert "API key" in e.message and e.body["type"] == "invalid_request_error", e.body
    raises(openai.AuthenticationError, lambda: c.models.list(extra_headers=no_key), 401)
    raises(openai.AuthenticationError, lambda: c.files.list(extra_headers=no_key), 401)
    e = raises(openai.BadRequestError, lambda: c.chat.completions.create(
        model=OPENAI_MODEL, messages=[]), 400)
    assert e.body and "message" in e.body, e.body
    e = raises(openai.BadRequestError, lambda: c.responses.create(
        model=OPENAI_MODEL, input="x", max_output_tokens=5), 400)
    assert e.param == "max_output_tokens", e.body
    # A base URL without /v1: the paths are not there, as on the real server.
    no_v1 = openai.OpenAI(base_url=m.root, api_key=KEY, max_retries=0)
    raises(openai.NotFoundError, lambda: no_v1.chat.completions.create(
        model=OPENAI_MODEL, messages=USER), 404)


def batch_lines(prompts: List[str], url: str = "/v1/chat/completions") -> bytes:
    lines = []
    for i, p in enumerate(prompts):
        if url == "/v1/responses":
            body = {"model": OPENAI_MODEL, "input": p}
        else:
            body = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": p}]}
        lines.append(json.dumps({"custom_id": f"row-{i}", "method": "POST", "url": url,
                                 "body": body}))
    return ("\n".join(lines) + "\n").encode()


@check("openai: Batch API (files, batches, content, list, delete, cancel)")
def _(m: Mock, _o: dict):
    c = m.openai()
    prompts = ["first prompt", "second prompt", "third prompt"]
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
        f.write(batch_lines(prompts))
        path = f.name
    try:
        with open(path, "rb") as fh:
            upload = c.files.create(file=fh, purpose="batch")
    finally:
        os.unlink(path)
    assert upload.object == "file" and upload.purpose == "batch", upload
    assert upload.bytes == len(batch_lines(prompts)), upload
    b = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                         completion_window="24h", metadata={"job": "conformance"})
    assert b.object == "batch" and b.status == "validating", b
    b = wait_for(lambda: c.batches.retrieve(b.id), lambda x: x.status == "completed")
    assert b.request_counts.total == 3 and b.request_counts.completed == 3, b.request_counts
    assert b.in_progress_at and b.finalizing_at and b.completed_at, b
    assert b.cancelled_at is None and b.failed_at is None, b
    assert b.usage and b.usage.total_tokens > 0, b.usage
    assert b.metadata == {"job": "conformance"}, b.metadata
    out = c.files.content(b.output_file_id).text
    answers = {}
    for line in out.splitlines():
        v = json.loads(line)
        assert v["response"]["status_code"] == 200, v
        answers[v["custom_id"]] = v["response"]["body"]["choices"][0]["message"]["content"]
    assert answers == {f"row-{i}": expected(p) for i, p in enumerate(prompts)}, answers
    got = c.files.retrieve(b.output_file_id)
    assert got.id == b.output_file_id and got.purpose == "batch_output", got
    listed = [f.id for f in c.files.list()]
    assert upload.id in listed and b.output_file_id in listed, listed
    batch_only = [f.purpose for f in c.files.list(purpose="batch")]
    assert batch_only and set(batch_only) == {"batch"}, batch_only
    assert b.id in [x.id for x in c.batches.list()]
    deleted = c.files.delete(upload.id)
    assert deleted.deleted is True and deleted.id == upload.id, deleted
    raises(openai.NotFoundError, lambda: c.files.retrieve(upload.id), 404)
    raises(openai.NotFoundError, lambda: c.batches.retrieve("batch_nope"), 404)

    # A Responses batch.
    upload = c.files.create(file=("r.jsonl", batch_lines(["x y"], "/v1/responses")),
                            purpose="batch")
    b = c.batches.create(input_file_id=upload.id, endpoint="/v1/responses",
                         completion_window="24h")
    b = wait_for(lambda: c.batches.retrieve(b.id), lambda x: x.status == "completed")
    line = json.loads(c.files.content(b.output_file_id).text.splitlines()[0])
    assert line["response"]["body"]["object"] == "response", line

    # Cancelled at once: cancelling, then cancelled.
    upload = c.files.create(file=("c.jsonl", batch_lines(prompts)), purpose="batch")
    b = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    cancelling = c.batches.cancel(b.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at, cancelling
    b = wait_for(lambda: c.batches.retrieve(b.id), lambda x: x.status == "cancelled")
    assert b.cancelled_at and b.completed_at is None, b


# ---------------------------------------------------------------- Anthropic


@check("anthropic: messages.create (Bearer auth, the SDK's anthropic-version)")
def _(m: Mock, _o: dict):
    raw = m.anthropic().messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, system="Be brief.", messages=USER)
    assert raw.headers.get("request-id"), dict(raw.headers)
    r = raw.parse()
    assert r.type == "message" and r.role == "assistant", r
    assert r.content[0].type == "text" and r.content[0].text == expected("Say hello"), r
    assert r.stop_reason == "end_turn" and r.usage.input_tokens > 0, r
    capped = m.anthropic().messages.create(model=CLAUDE, max_tokens=2, messages=USER)
    assert capped.stop_reason == "max_tokens" and capped.usage.output_tokens == 2, capped


@check("anthropic: x-api-key and anthropic-version 2023-06-01 (SDK 1.x style) still work")
def _(m: Mock, _o: dict):
    c = anthropic.Anthropic(base_url=m.root, api_key=None, auth_token=None, max_retries=0,
                            default_headers={"x-api-key": KEY,
                                             "anthropic-version": "2023-06-01"})
    r = c.messages.create(model=CLAUDE, max_tokens=64, messages=USER)
    assert r.content[0].text == expected("Say hello"), r


@check("anthropic: errors raise the SDK's exception classes")
def _(m: Mock, _o: dict):
    keyless = m.anthropic(default_headers={"Authorization": anthropic.Omit()})
    e = raises(anthropic.AuthenticationError, lambda: keyless.messages.create(
        model=CLAUDE, max_tokens=10, messages=USER), 401)
    assert e.body["error"]["type"] == "authentication_error", e.body
    c = m.anthropic()
    e = raises(anthropic.BadRequestError, lambda: c.messages.create(
        model=CLAUDE, max_tokens=10, messages=USER, extra_body={"temperature": 1.5}), 400)
    assert e.body["error"]["type"] == "invalid_request_error", e.body
    raises(anthropic.BadRequestError, lambda: c.messages.create(
        model=CLAUDE, max_tokens=10, messages=[{"role": "assistant", "content": "x"}]), 400)
    raises(anthropic.NotFoundError, lambda: c.messages.create(
        model="gpt-4o", max_tokens=10, messages=USER), 404)
    old = m.anthropic(default_headers={"anthropic-version": "1999-01-01"})
    raises(anthropic.BadRequestError, lambda: old.messages.create(
        model=CLAUDE, max_tokens=10, messages=USER), 400)


@check("anthropic: messages.count_tokens")
def _(m: Mock, _o: dict):
    c = m.anthropic()
    n = c.messages.count_tokens(model=CLAUDE, system="Be brief.", messages=USER)
    r = c.messages.create(model=CLAUDE, max_tokens=64, system="Be brief.", messages=USER)
    assert n.input_tokens > 0 and n.input_tokens == r.usage.input_tokens, (n, r.usage)
    keyless = m.anthropic(default_headers={"Authorization": anthropic.Omit()})
    raises(anthropic.AuthenticationError, lambda: keyless.messages.count_tokens(
        model=CLAUDE, messages=USER), 401)


@check("anthropic: stream=True events and messages.stream helper")
def _(m: Mock, _o: dict):
    c = m.anthropic()
    events = list(c.messages.create(model=CLAUDE, max_tokens=64, messages=USER, stream=True))
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop", types
    assert "message_delta" in types and "content_block_stop" in types, types
    text = "".join(e.delta.text for e in events
                   if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == expected("Say hello"), text
    with c.messages.stream(model=CLAUDE, max_tokens=64, messages=USER) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == expected("Say hello"), streamed
    assert final.content[0].text == expected("Say hello") and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 1, final.usage


@check("anthropic: tools (tool_choice tool and any), streamed too")
def _(m: Mock, _o: dict):
    c = m.anthropic()
    tool = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_PARAMS}
    for choice in ({"type": "tool", "name": "get_weather"}, {"type": "any"}):
        r = c.messages.create(model=CLAUDE, max_tokens=200, tools=[tool], tool_choice=choice,
                              messages=[{"role": "user", "content": "Weather in Paris?"}])
        block = r.content[0]
        assert block.type == "tool_use" and block.name == "get_weather", r
        assert isinstance(block.input["city"], str) and isinstance(block.input["days"], int)
        assert r.stop_reason == "tool_use", r
    with c.messages.stream(model=CLAUDE, max_tokens=200, tools=[tool],
                           tool_choice={"type": "any"}, messages=USER) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use" and set(final.content[0].input) == {"city", "days"}


@check("anthropic: structured output (messages.parse, output_config json_schema)")
def _(m: Mock, _o: dict):
    r = m.anthropic().messages.parse(model=CLAUDE, max_tokens=500, output_format=Verdict,
                                     messages=[{"role": "user", "content": "Rate this"}])
    assert isinstance(r.parsed_output, Verdict), r


@check("anthropic: models.list and models.retrieve")
def _(m: Mock, _o: dict):
    c = m.anthropic()
    models = list(c.models.list())
    assert CLAUDE in [x.id for x in models] and all(x.type == "model" for x in models), models
    assert c.models.retrieve(CLAUDE).display_name, "no display_name"


@check("anthropic: Message Batches (create, retrieve, results, cancel, delete)")
def _(m: Mock, _o: dict):
    c = m.anthropic()
    prompts = ["first prompt", "second prompt"]
    requests = [{"custom_id": f"row-{i}",
                 "params": {"model": CLAUDE, "max_tokens": 64,
                            "messages": [{"role": "user", "content": p}]}}
                for i, p in enumerate(prompts)]
    b = c.messages.batches.create(requests=requests)
    assert b.type == "message_batch" and b.processing_status == "in_progress", b
    assert b.request_counts.processing == 2, b
    raises(anthropic.BadRequestError, lambda: c.messages.batches.delete(b.id), 400)
    b = wait_for(lambda: c.messages.batches.retrieve(b.id),
                 lambda x: x.processing_status == "ended")
    assert b.request_counts.succeeded == 2 and b.ended_at and b.results_url, b
    results = {r.custom_id: r.result for r in c.messages.batches.results(b.id)}
    assert set(results) == {"row-0", "row-1"}, results
    for i, p in enumerate(prompts):
        res = results[f"row-{i}"]
        assert res.type == "succeeded" and res.message.content[0].text == expected(p), res
    assert b.id in [x.id for x in c.messages.batches.list()]
    gone = c.messages.batches.delete(b.id)
    assert gone.id == b.id and gone.type == "message_batch_deleted", gone
    raises(anthropic.NotFoundError, lambda: c.messages.batches.retrieve(b.id), 404)

    b = c.messages.batches.create(requests=requests)
    cancelling = c.messages.batches.cancel(b.id)
    assert cancelling.processing_status == "canceling" and cancelling.cancel_initiated_at
    b = wait_for(lambda: c.messages.batches.retrieve(b.id),
                 lambda x: x.processing_status == "ended")
    assert b.request_counts.canceled == 2, b.request_counts
    kinds = [r.result.type for r in c.messages.batches.results(b.id)]
    assert kinds == ["canceled", "canceled"], kinds


# ---------------------------------------------------------------- mock options


@check("mock option --not-found /v1/responses")
def _(m: Mock, o: dict):
    c = o["not_found"].openai()
    raises(openai.NotFoundError, lambda: c.responses.create(model=OPENAI_MODEL, input="x"), 404)
    r = c.chat.completions.create(model=OPENAI_MODEL, messages=USER)
    assert r.choices[0].message.content == expected("Say hello"), r


@check("mock options --rpm with --retry-after none / litellm")
def _(m: Mock, o: dict):
    for name, header in (("no_retry_after", None), ("litellm", "llm_provider-retry-after")):
        c = o[name].openai()
        c.chat.completions.create(model=OPENAI_MODEL, messages=USER)
        e = raises(openai.RateLimitError, lambda: c.chat.completions.create(
            model=OPENAI_MODEL, messages=USER), 429)
        h = e.response.headers
        assert "retry-after" not in h and "retry-after-ms" not in h, dict(h)
        if header:
            assert int(h[header]) >= 1, dict(h)
        assert e.code == "rate_limit_exceeded", e.body


@check("mock options --rpd (Groq-style) and --rate-window 1s")
def _(m: Mock, o: dict):
    raw = o["rpd"].openai().chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=USER)
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "14400", dict(h)
    assert h["x-ratelimit-remaining-requests"] == "14399", dict(h)
    assert h["x-ratelimit-reset-requests"] in ("6s", "5.99s"), dict(h)
    c = o["window"].openai()
    for i in range(3):
        h = c.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=USER).headers
        assert h["x-ratelimit-limit-requests"] == "3000", dict(h)
        remaining = int(h["x-ratelimit-remaining-requests"])
        assert remaining <= 50 - 1, dict(h)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the batch binary")
    args = parser.parse_args()
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}, "
          f"python {sys.version.split()[0]}")
    mocks = {}
    try:
        main_mock = Mock(args.bin, "--require-key", "--batch-latency-ms", "300")
        mocks["main"] = main_mock
        for name, opts in {
            "not_found": ["--not-found", "/v1/responses"],
            "no_retry_after": ["--rpm", "60", "--retry-after", "none"],
            "litellm": ["--rpm", "60", "--retry-after", "litellm"],
            "rpd": ["--rpd", "14400"],
            "window": ["--rpm", "3000", "--rate-window", "1s"],
        }.items():
            mocks[name] = Mock(args.bin, *opts)
    except Exception as e:  # noqa: BLE001
        for mock in mocks.values():
            mock.stop()
        print(f"FAIL starting the mock: {e}")
        print("0 passed, 1 failed")
        return 1
    passed = failed = 0
    try:
        for name, f in CHECKS:
            try:
                f(mocks["main"], mocks)
            except Exception as e:  # noqa: BLE001
                failed += 1
                where = traceback.extract_tb(e.__traceback__)[-1]
                print(f"FAIL {name}: {type(e).__name__}: {e} (check.py line {where.lineno})")
            else:
                passed += 1
                print(f"PASS {name}")
    finally:
        for mock in mocks.values():
            mock.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
