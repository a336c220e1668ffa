"""Q4_1 -> Q8_0 requantisation, on a Q4_1 copy of the tiny model (fast, exact answers)."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from gguf.quants import quantize

from enclave.model import requant
from enclave.model.requant import ensure_q8_0, q8_0_name, requantize_q8_0
from enclave.model.server import EmbeddedModelServer
from enclave.model.tiny_gguf import TINY_ANSWER, write_tiny_gguf

from .helpers import TEST_API_KEY, call

Q = gguf.GGMLQuantizationType


def _tiny_q4_1(source: Path, target: Path) -> Path:
    """The tiny model with its 2-D weights in Q4_1 (its 0/1 and 0/m values survive exactly)."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        data = tensor.data
        if data.ndim == 2:
            data = quantize(data, Q.Q4_1)
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=Q.Q4_1)
        else:
            writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q8_0.gguf"),
        ("model.gguf", "model.Q8_0.gguf"),
        ("my.model.gguf", "my.model.Q8_0.gguf"),
        ("x.f16.gguf", "x.Q8_0.gguf"),
    ],
)
def test_q8_0_name(name: str, expected: str) -> None:
    assert q8_0_name(Path(name)) == expected


def test_requantized_model_keeps_answering(tiny_gguf: Path, tmp_path: Path) -> None:
    q4 = _tiny_q4_1(tiny_gguf, tmp_path / "tiny.Q4_1.gguf")
    q8 = requantize_q8_0(q4, tmp_path / "out" / "tiny.Q8_0.gguf")
    assert sorted(p.name for p in q8.parent.iterdir()) == [
        "tiny.Q8_0.gguf",
        "tiny.Q8_0.gguf.source",
    ]

    reader = gguf.GGUFReader(q8)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == Q.Q8_0
    assert types["output.weight"] == Q.Q8_0
    assert types["output_norm.weight"] == Q.F32  # norms stay exact
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    source_id = f"tiny.Q4_1.gguf:{q4.stat().st_size}"
    assert reader.fields["enclave.requantized_from"].contents() == source_id
    assert reader.fields["tokenizer.chat_template"].contents()

    for path in (q4, q8):
        with EmbeddedModelServer(path, api_key=TEST_API_KEY, ctx_size=256) as server:
            reply = call(f"{server.base_url}/completions", {"prompt": "hi", "max_tokens": 64})
            assert reply.json()["choices"][0]["text"] == TINY_ANSWER
            chat = {"messages": [{"role": "user", "content": "hi"}]}
            reply = call(f"{server.base_url}/chat/completions", chat)
            assert reply.json()["choices"][0]["message"]["content"] == TINY_ANSWER


def test_ensure_q8_0_converts_once(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q4 = _tiny_q4_1(tiny_gguf, tmp_path / "tiny.Q4_1.gguf")
    target = ensure_q8_0(q4, tmp_path / "model")
    assert target == tmp_path / "model" / "tiny.Q8_0.gguf"
    assert target.is_file()

    def must_not_run(source: Path, target: Path, on_progress: object = None) -> Path:
        raise AssertionError("converted twice")

    with monkeypatch.context() as patch:
        patch.setattr(requant, "requantize_q8_0", must_not_run)
        assert ensure_q8_0(q4, tmp_path / "model") == target


def test_ensure_q8_0_redoes_a_stale_or_corrupt_copy(tiny_gguf: Path, tmp_path: Path) -> None:
    q4 = _tiny_q4_1(tiny_gguf, tmp_path / "tiny.Q4_1.gguf")
    target = tmp_path / "model" / "tiny.Q8_0.gguf"
    target.parent.mkdir()
    target.write_bytes(b"GGUF but truncated")
    assert ensure_q8_0(q4, target.parent) == target
    first = target.read_bytes()
    assert gguf.GGUFReader(target).tensors
    # A different source (a new bundled model) is converted again.
    q4_new = _tiny_q4_1(write_tiny_gguf(tmp_path / "new.gguf", "other answer"), q4)
    assert ensure_q8_0(q4_new, target.parent) == target
    assert target.read_bytes() != first


def test_ensure_q8_0_falls_back_to_the_source(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(source: Path, target: Path, on_progress: object = None) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(requant, "requantize_q8_0", broken)
    assert ensure_q8_0(tiny_gguf, tmp_path / "model") == tiny_gguf


def test_interrupted_conversion_leaves_nothing(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(KeyboardInterrupt):
        requantize_q8_0(tiny_gguf, tmp_path / "out" / "x.Q8_0.gguf")
    assert list((tmp_path / "out").iterdir()) == []


def test_conversion_reports_progress_for_enclave_up(tiny_gguf: Path, tmp_path: Path) -> None:
    """Finding 5: the first start converts the bundled model; `enclave up` shows how far."""
    q4 = _tiny_q4_1(tiny_gguf, tmp_path / "tiny.Q4_1.gguf")
    seen: list[int] = []
    requantize_q8_0(q4, tmp_path / "out" / "tiny.Q8_0.gguf", seen.append)
    assert seen[0] == 0 and seen[-1] == 90 and seen == sorted(seen)

    model_dir = tmp_path / "model"
    said: list[str] = []
    shown = requant.PreparationProgress(model_dir, said.append)
    assert not shown.poll() and said == []
    model_dir.mkdir()
    progress_file = model_dir / requant.PROGRESS_FILE
    progress_file.write_text("0\n")
    assert shown.poll()
    progress_file.write_text("55\n")
    assert shown.poll() and shown.percent == 55
    progress_file.unlink()
    assert not shown.poll()
    assert said[0].startswith("Preparing the bundled model")
    assert "  preparing the bundled model: 55 %" in said
    assert said[-1].startswith("The bundled model is prepared")


def test_ensure_q8_0_leaves_no_progress_file(tiny_gguf: Path, tmp_path: Path) -> None:
    q4 = _tiny_q4_1(tiny_gguf, tmp_path / "tiny.Q4_1.gguf")
    ensure_q8_0(q4, tmp_path / "model")
    assert not (tmp_path / "model" / requant.PROGRESS_FILE).exists()
