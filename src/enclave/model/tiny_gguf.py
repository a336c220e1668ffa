"""A tiny, deterministic llama-architecture GGUF for tests.

``write_tiny_gguf`` writes a few-hundred-kB model that llama.cpp loads in milliseconds and that
answers one fixed text for *any* prompt, through completions and chat, streamed or not, and
then stops with EOS. Tests of the real serving path (llama.cpp's HTTP server, the gateway, the
instance) can then assert exact strings without loading a real model or depending on its
speed.

How it works: one transformer layer whose attention and feed-forward weights are all zero, so
the residual stream at every position is just the current token's embedding and the next token
depends on the current token alone. Embeddings are one-hot "state" vectors: every prompt token
(bytes, control tokens, anything the tokenizer can produce) is state 0, answer piece ``k`` is
state ``k``. The output matrix maps state 0 to piece 1, piece ``k`` to piece ``k + 1`` and the
last piece to EOS, with a logit margin so large that even hot sampling cannot pick anything
else.

The tokenizer is SentencePiece-style ("llama"): ``<unk>``, ``<s>``, ``</s>``, the 256 byte
fallback tokens, chatml control tokens and one token per answer piece. A prompt must never
tokenize to a piece token, or a prompt ending with, say, ``" b"`` would skip half the answer.
llama.cpp's SPM tokenizer writes every space of the input as U+2581 and only forms multi-char
tokens by merging pairs that are themselves in the vocabulary; so a piece is unreachable when it
holds a literal ASCII space, or when it is at least 3 characters long (the vocabulary has no
2-character tokens to merge through). Pieces also have to differ from each other and from the
fixed tokens (llama.cpp aborts the whole process on a duplicate token text). ``split_answer``
merges word-ish pieces until these rules hold.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from pathlib import Path

import gguf
import numpy as np

# GGUFWriter narrates every file it writes at INFO; that is noise in test logs.
logging.getLogger("gguf").setLevel(logging.WARNING)

TINY_ANSWER = "return a + b\n"
"""What the default tiny model answers, whatever it is asked."""

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""chatml, the simplest template llama.cpp recognises; the model ignores the prompt anyway."""

# Fixed vocabulary layout; answer tokens follow.
_UNK, _BOS, _EOS = 0, 1, 2
_FIRST_BYTE = 3
_CONTROL_TEXTS = ("<|im_start|>", "<|im_end|>")
_FIRST_PIECE = _FIRST_BYTE + 256 + len(_CONTROL_TEXTS)
_BYTE_TEXTS = tuple(f"<0x{b:02X}>" for b in range(256))
_RESERVED = frozenset(("<unk>", "<s>", "</s>", *_BYTE_TEXTS, *_CONTROL_TEXTS))

# Logit of the one allowed next token; every other logit is 0. exp(-50) * vocab stays far below
# any sampling threshold even at temperature 2, so sampling is as deterministic as greedy.
_MARGIN = 50.0
_HEAD_DIM = 16  # llama.cpp's CPU kernels are happy with it; rope uses the whole head.
_N_FF = 64
_CONTEXT_LENGTH = 32768  # larger than any n_ctx a test asks for, so llama.cpp never warns.
_SPM_SPACE = "\u2581"  # SentencePiece writes spaces as U+2581; llama.cpp prints it as " ".


def split_answer(answer: str) -> list[str]:
    """The pieces (one token each) the tiny model answers with; they concatenate to ``answer``.

    Word-ish first (leading spaces + a word, or a run of whitespace), then a piece that the
    tokenizer could produce from a prompt (shorter than 3 characters without a space), that
    repeats an earlier piece or that is the text of a fixed token (``</s>``, ``<0x0A>``...) is
    merged into its neighbour:
    ``"return a + b\\n"`` -> ``["return", " a", " +", " b\\n"]``.
    """
    if not answer:
        raise ValueError("the tiny model needs a non-empty answer")
    if _SPM_SPACE in answer:
        raise ValueError("the tiny model cannot answer U+2581: llama.cpp renders it as a space")
    pieces: list[str] = re.findall(r"[ \t]*[^\s]+|\s+", answer)
    while len(pieces) > 1:
        bad = next((i for i, p in enumerate(pieces) if not _usable(p) or p in pieces[:i]), None)
        if bad is None:
            break
        at = bad - 1 if bad > 0 else 0  # merge into the previous piece, the first into the next
        pieces[at : at + 2] = [pieces[at] + pieces[at + 1]]
    if not _usable(pieces[0]):
        raise ValueError(
            "the tiny model's answer must be at least 3 characters long or contain a space, "
            "and must not be a special token such as </s>"
        )
    return pieces


def _usable(piece: str) -> bool:
    """A piece can be a token: llama.cpp's SPM tokenizer can never produce it from a prompt
    (see above) and no fixed token has the same text (llama.cpp aborts on duplicates)."""
    return (" " in piece or len(piece) >= 3) and piece not in _RESERVED


def write_tiny_gguf(path: Path, answer: str = TINY_ANSWER) -> Path:
    """Write the tiny model that always answers ``answer`` to ``path`` (atomically) and return
    ``path``. ``max_tokens=n`` yields the first ``n`` pieces of ``split_answer(answer)``."""
    pieces = split_answer(answer)
    n_pieces = len(pieces)

    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += _BYTE_TEXTS
    types += [gguf.TokenType.BYTE] * 256
    tokens += list(_CONTROL_TEXTS)
    types += [gguf.TokenType.CONTROL] * len(_CONTROL_TEXTS)
    # Spaces stay literal ASCII (not U+2581): llama.cpp prints them the same, and literal spaces
    # make a piece unreachable from prompts.
    tokens += pieces  # piece k (1-based) has id _FIRST_PIECE + k - 1
    types += [gguf.TokenType.NORMAL] * n_pieces
    n_vocab = len(tokens)

    # One-hot states need n_pieces + 1 dimensions; round up to whole heads of 64.
    n_embd = 64 * math.ceil((n_pieces + 1) / 64)
    n_head = n_embd // _HEAD_DIM

    state = np.zeros(n_vocab, dtype=np.int64)  # state 0 for every token a prompt can hold
    state[_FIRST_PIECE : _FIRST_PIECE + n_pieces] = np.arange(1, n_pieces + 1)
    token_embd = np.zeros((n_vocab, n_embd), dtype=np.float32)
    token_embd[np.arange(n_vocab), state] = 1.0

    # After the final RMS norm a one-hot state has value sqrt(n_embd); scale to hit _MARGIN.
    output = np.zeros((n_vocab, n_embd), dtype=np.float32)
    scale = _MARGIN / math.sqrt(n_embd)
    for s in range(n_pieces + 1):
        target = _FIRST_PIECE + s if s < n_pieces else _EOS
        output[target, s] = scale

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a reader never sees half a file.
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, "llama")
        writer.add_name("enclave-tiny")
        writer.add_description(f"Deterministic test model; always answers {answer!r}")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(_CONTEXT_LENGTH)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(1)
        writer.add_feed_forward_length(_N_FF)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_rope_dimension_count(_HEAD_DIM)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(n_vocab)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * n_vocab)
        writer.add_token_types(types)
        writer.add_bos_token_id(_BOS)
        writer.add_eos_token_id(_EOS)
        writer.add_unk_token_id(_UNK)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
        writer.add_chat_template(TINY_CHAT_TEMPLATE)

        zeros = np.zeros
        f32 = np.float32
        writer.add_tensor("token_embd.weight", token_embd)
        writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=f32))
        writer.add_tensor("output.weight", output)
        writer.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=f32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.0.{name}.weight", zeros((n_embd, n_embd), dtype=f32))
        writer.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=f32))
        writer.add_tensor("blk.0.ffn_gate.weight", zeros((_N_FF, n_embd), dtype=f32))
        writer.add_tensor("blk.0.ffn_up.weight", zeros((_N_FF, n_embd), dtype=f32))
        writer.add_tensor("blk.0.ffn_down.weight", zeros((n_embd, _N_FF), dtype=f32))

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
