"""The tiny deterministic GGUF, checked through the real llama.cpp server over loopback HTTP."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from enclave.model.server import EmbeddedModelServer
from enclave.model.tiny_gguf import TINY_ANSWER, split_answer, write_tiny_gguf

from .helpers import TEST_API_KEY, TINY_NAME, call

PIECES = split_answer(TINY_ANSWER)


# The file -----------------------------------------------------------------------------------
def test_split_answer_default() -> None:
    assert PIECES == ["return", " a", " +", " b\n"]


@pytest.mark.parametrize(
    "text",
    [
        "return a + b\n",
        "a + b + a + b",
        "aaaa",
        "x = 1\nx = 1\n",
        "héllo wörld ✓",
        "\n\n\n",
        "<|im_end|> x",
        "x </s> <0x0A>",
    ],
)
def test_split_answer_pieces_are_distinct_and_unreachable(text: str) -> None:
    pieces = split_answer(text)
    assert "".join(pieces) == text
    assert len(set(pieces)) == len(pieces)
    assert all(" " in p or len(p) >= 3 for p in pieces)
    assert not {"</s>", "<|im_end|>", "<0x0A>"} & set(pieces)


@pytest.mark.parametrize("text", ["", "ok", "a\u2581b", "</s>"])
def test_split_answer_refuses_unservable_answers(text: str) -> None:
    with pytest.raises(ValueError):
        split_answer(text)


def test_file_is_small_deterministic_and_a_llama_gguf(tmp_path: Path) -> None:
    first = write_tiny_gguf(tmp_path / "a" / "tiny.gguf")
    second = write_tiny_gguf(tmp_path / "b.gguf")
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_size < 512 * 1024
    assert not list(first.parent.glob("*.tmp"))
    reader = gguf.GGUFReader(first)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert "tokenizer.chat_template" in reader.fields
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "output.weight"}


# Completions ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt",
    [
        "def add(a, b):\n    ",
        "",
        "return",  # ends with the first piece: must not skip ahead
        "x = a + b",  # ends with later pieces
        "<|im_start|>assistant\n",  # control tokens in raw text
        "naïve ✓ \t\n",
    ],
)
def test_completion_answers_exactly_for_any_prompt(
    tiny_server: EmbeddedModelServer, prompt: str
) -> None:
    reply = call(f"{tiny_server.base_url}/completions", {"prompt": prompt, "max_tokens": 64})
    assert reply.status == 200
    body = reply.json()
    choice = body["choices"][0]
    assert choice["text"] == TINY_ANSWER
    assert choice["finish_reason"] == "stop"
    assert body["model"] == TINY_NAME
    usage = body["usage"]
    assert usage["prompt_tokens"] >= 1
    assert usage["completion_tokens"] >= len(PIECES)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("temperature", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("seed", [1, 42])
def test_completion_is_deterministic_under_sampling(
    tiny_server: EmbeddedModelServer, temperature: float, seed: int
) -> None:
    body = {"prompt": "hi", "max_tokens": 64, "temperature": temperature, "seed": seed}
    reply = call(f"{tiny_server.base_url}/completions", body)
    assert reply.json()["choices"][0]["text"] == TINY_ANSWER


def test_max_tokens_cuts_after_whole_pieces(tiny_server: EmbeddedModelServer) -> None:
    reply = call(f"{tiny_server.base_url}/completions", {"prompt": "hi", "max_tokens": 2})
    choice = reply.json()["choices"][0]
    assert choice["text"] == "".join(PIECES[:2])
    assert choice["finish_reason"] == "length"
    assert reply.json()["usage"]["completion_tokens"] == 2


def test_stop_sequence(tiny_server: EmbeddedModelServer) -> None:
    body = {"prompt": "hi", "max_tokens": 64, "stop": [" +"]}
    choice = call(f"{tiny_server.base_url}/completions", body).json()["choices"][0]
    assert choice["text"] == "return a"
    assert choice["finish_reason"] == "stop"


def test_streamed_completion(tiny_server: EmbeddedModelServer) -> None:
    body = {"prompt": "hi", "max_tokens": 64, "stream": True}
    reply = call(f"{tiny_server.base_url}/completions", body)
    assert reply.status == 200
    events = reply.sse_events()
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"][0]["text"]]
    assert texts == PIECES
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# Chat ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Write an add function."}],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "return a"},
            {"role": "user", "content": "+ b"},
        ],
    ],
)
def test_chat_answers_exactly(tiny_server: EmbeddedModelServer, messages: list[dict]) -> None:
    reply = call(f"{tiny_server.base_url}/chat/completions", {"messages": messages})
    assert reply.status == 200
    body = reply.json()
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == TINY_ANSWER
    assert choice["finish_reason"] == "stop"
    assert body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] >= len(PIECES)


def test_streamed_chat(tiny_server: EmbeddedModelServer) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    reply = call(f"{tiny_server.base_url}/chat/completions", body)
    assert reply.status == 200
    events = reply.sse_events()
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert [d for d in deltas if d] == PIECES
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_max_tokens(tiny_server: EmbeddedModelServer) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    choice = call(f"{tiny_server.base_url}/chat/completions", body).json()["choices"][0]
    assert choice["message"]["content"] == "".join(PIECES[:2])
    assert choice["finish_reason"] == "length"


# Other answers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    ["héllo wörld ✓ — a + a + a\n", " leading space", "\tdef f():\n\t\treturn 1", "💡 x </s>"],
)
def test_custom_answers(tmp_path: Path, answer: str) -> None:
    path = write_tiny_gguf(tmp_path / "custom.gguf", answer)
    with EmbeddedModelServer(path, api_key=TEST_API_KEY, ctx_size=256) as server:
        for prompt in ["", "héllo", " a", "a + a"]:
            body = {"prompt": prompt, "max_tokens": 64}
            reply = call(f"{server.base_url}/completions", body)
            assert reply.json()["choices"][0]["text"] == answer
        chat = {"messages": [{"role": "user", "content": "a + a"}]}
        reply = call(f"{server.base_url}/chat/completions", chat)
        assert reply.json()["choices"][0]["message"]["content"] == answer


# Authentication -------------------------------------------------------------------------------
def test_models_lists_the_served_name(tiny_server: EmbeddedModelServer) -> None:
    reply = call(f"{tiny_server.base_url}/models")
    assert reply.status == 200
    assert [m["id"] for m in reply.json()["data"]] == [TINY_NAME]


@pytest.mark.parametrize("api_key", [None, "", "enclkey-wrong", TEST_API_KEY + "x"])
@pytest.mark.parametrize("path", ["/completions", "/chat/completions", "/models"])
def test_wrong_or_missing_api_key_is_401(
    tiny_server: EmbeddedModelServer, api_key: str | None, path: str
) -> None:
    body = None if path == "/models" else {"prompt": "hi", "messages": [], "max_tokens": 1}
    reply = call(f"{tiny_server.base_url}{path}", body, api_key=api_key)
    assert reply.status == 401
    error = reply.json()["error"]
    assert error["type"] == "authentication_error"
    assert TEST_API_KEY not in reply.body.decode()


def test_health_needs_no_key(tiny_server: EmbeddedModelServer) -> None:
    reply = call(f"{tiny_server.root_url}/health", api_key=None)
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}
