"""One-time conversion of the bundled Q4_1 SmolLM2 to Q8_0, in pure Python (``gguf`` + numpy).

Why: llama.cpp's CPU kernels process prompts much faster with Q8_0 weights than with Q4_1, and
code completion is mostly prompt processing (long prefix, short answer). Measured on the 2-core
development box (AVX2), ~510-token prompt, medians of repeated runs: 1 thread 96-122 -> 183-203
tokens/s (1.6-1.9x), 2 threads 177-199 -> 264-323 tokens/s (1.5-1.6x); generation speed is
unchanged (~30-45 / ~50-64 tokens/s). Quality is kept: Q8_0 re-encodes the Q4_1 weights with
0.6 % relative error (re-encoding them as Q4_0 instead would cost 9 %, which is why Q4_0,
faster still, is not used). The file grows from 98 MB to 145 MB; the conversion takes ~7 s,
once per data dir.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize, quantize

from enclave.common.logging import get_logger

log = get_logger(__name__)
# GGUFWriter narrates every file it writes at INFO; that is noise in our JSON log.
logging.getLogger("gguf").setLevel(logging.WARNING)

_Q = gguf.GGMLQuantizationType
_CONVERT_FROM = {_Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1}  # types Q8_0 represents almost exactly
_SKIP_KEYS = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE}
_SOURCE_KEY = "enclave.requantized_from"  # "<name>:<size>" of the source, for the record


def q8_0_name(source: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct.Q8_0.gguf``."""
    stem = source.name.removesuffix(".gguf")
    base, _, last = stem.rpartition(".")
    return f"{base if base and last.upper().startswith(('Q', 'F', 'BF')) else stem}.Q8_0.gguf"


PROGRESS_FILE = "prepare.progress"


def requantize_q8_0(
    source: Path, target: Path, on_progress: Callable[[int], None] | None = None
) -> Path:
    """Write ``source`` with its 4/5-bit weight tensors re-encoded as Q8_0 to ``target``.

    Other tensors (norms, the already-Q8_0 embeddings) are copied unchanged. The file appears
    atomically (temporary file + rename), so an interrupted run leaves nothing half-written;
    ``<target>.source`` then records which source it came from (name and size), so a new
    bundled model is converted again. ``on_progress`` gets the percentage done as it grows.
    """
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    writer = gguf.GGUFWriter(tmp, str(arch))
    try:
        for field in reader.fields.values():
            if field.name in _SKIP_KEYS or field.name.startswith("GGUF."):
                continue  # GGUF.* are the reader's virtual fields; the writer adds arch itself
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_string(_SOURCE_KEY, _source_id(source))
        total = max(1, len(reader.tensors))
        reported = -1
        for index, tensor in enumerate(reader.tensors):
            # Converting the tensors is nearly all the time; writing them is the last 10 %.
            percent = index * 90 // total
            if on_progress is not None and percent // 5 != reported // 5:
                on_progress(percent)
                reported = percent
            data: np.ndarray = tensor.data
            qtype = tensor.tensor_type
            if qtype in _CONVERT_FROM:
                data = quantize(dequantize(data, qtype), _Q.Q8_0)
                qtype = _Q.Q8_0
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        if on_progress is not None:
            on_progress(90)
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target)
        # The marker comes last: a crash before it means "convert again", never "half a file".
        marker_tmp = tmp.with_suffix(".source.tmp")
        marker_tmp.write_text(_source_id(source) + "\n")
        os.replace(marker_tmp, _marker(target))
    finally:
        writer.close()  # no-op when closed already; frees the file on errors
        tmp.unlink(missing_ok=True)
    return target


def ensure_q8_0(source: Path, target_dir: Path) -> Path:
    """The Q8_0 copy of ``source`` in ``target_dir``, converting on first use.

    Falls back to ``source`` (with a warning) when the conversion fails, for example on a full
    disk: a slower model is better than no model.
    """
    target = target_dir / q8_0_name(source)
    progress_file = target_dir / PROGRESS_FILE
    if _converted_from(target) == _source_id(source):
        progress_file.unlink(missing_ok=True)
        return target
    log.info("model_requantizing", source=str(source), target=str(target))
    started = time.monotonic()

    def report(percent: int) -> None:
        # For `enclave up`, which shows it while it waits (PreparationProgress), and the log.
        _write_progress(progress_file, percent)
        log.info("model_requantizing_progress", percent=percent)

    try:
        requantize_q8_0(source, target, report)
    except Exception as exc:  # any failure here must not stop the model from serving
        log.warning("model_requantize_failed", error=str(exc), serving=str(source))
        return source
    finally:
        progress_file.unlink(missing_ok=True)
    log.info(
        "model_requantized",
        target=str(target),
        seconds=round(time.monotonic() - started, 1),
        size_mb=round(target.stat().st_size / 1e6, 1),
    )
    return target


def _source_id(source: Path) -> str:
    return f"{source.name}:{source.stat().st_size}"


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".source")


def _converted_from(target: Path) -> str | None:
    """The source id of an earlier complete conversion (its marker), or None.

    A marker file and not the GGUF's own metadata: reading that costs ~4 s for SmolLM2 (the
    49k-token vocabulary is parsed in Python), the marker costs nothing."""
    try:
        with target.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                return None
        return _marker(target).read_text().strip()
    except OSError:
        return None


def _write_progress(path: Path, percent: int) -> None:
    # Progress is a courtesy: a file that cannot be written must not stop the conversion.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{percent}\n")
        os.replace(tmp, path)


class PreparationProgress:
    """What ``enclave up`` shows while the model role converts the bundled model (it reads
    the progress file the conversion writes; the role's own log has the same lines).

    A plain line when the preparation starts, at each further 25 % and when it ends, so that
    a terminal without a live status line (a log, CI) also sees it move.
    """

    def __init__(self, model_dir: Path, say: Callable[[str], None]) -> None:
        self.path = model_dir / PROGRESS_FILE
        self.path.unlink(missing_ok=True)  # left by a run that died: not this run's progress
        self._say = say
        self.percent = 0
        self._seen = False
        self._said = -1
        self._started = 0.0

    def poll(self) -> bool:
        """True while the preparation runs."""
        try:
            percent = int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            if self._seen:
                self._seen = False
                took = time.monotonic() - self._started
                self._say(f"The bundled model is prepared ({took:.0f} s; done once per data dir).")
            return False
        if not self._seen:
            self._seen, self._started = True, time.monotonic()
            self._say(
                "Preparing the bundled model: a one-time conversion to Q8_0 for faster "
                "prompts (about 10-20 s on 2 cores) ..."
            )
        self.percent = percent
        if percent // 25 > self._said // 25:
            self._said = percent
            if percent:
                self._say(f"  preparing the bundled model: {percent} %")
        return True
