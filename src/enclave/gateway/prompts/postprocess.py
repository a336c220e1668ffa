"""Post-processing of model answers so the editor can insert them as they are.

Chat-style models decorate code: markdown fences, a restated line before the cursor, and
``<new_code>`` tags for generations. These helpers remove that, both for whole answers and
incrementally for streams (holding back only what they must).
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

NEW_CODE_OPEN: Final = "<new_code>"
NEW_CODE_CLOSE: Final = "</new_code>"


class TextFilterLike(Protocol):
    """An incremental post-processor: ``feed`` each delta, ``flush`` at the end."""

    def feed(self, delta: str) -> str: ...

    def flush(self) -> str: ...


_FENCE = "```"


def strip_fences(text: str) -> str:
    """Remove a markdown code fence around the answer, and anything after its closing line.

    A truncated answer may lack the closer. Same rules as :class:`FenceStripper`, which does
    this incrementally for streams.
    """
    stripper = FenceStripper()
    return stripper.feed(text) + stripper.flush()


def strip_echoed_prefix(text: str, prefix: str, max_lines: int = 20) -> str:
    """Drop code the model repeated from before the cursor.

    Chat models often restate the current line (or the last few lines) before continuing;
    inserting that at the cursor would duplicate it. We drop the longest run of trailing prefix
    lines the answer starts with, and indentation the cursor line already has.
    """
    if not text or not prefix:
        return text
    # Only the last max_lines lines can be echoed: split off no more (the text above the
    # cursor runs to 100,000 characters; a full split cost ~200 µs).
    lines = prefix.rsplit("\n", max_lines)
    for count in range(min(max_lines, len(lines)), 0, -1):
        tail = "\n".join(lines[-count:])
        if tail.strip() and text.startswith(tail):
            return text[len(tail) :]
    current = lines[-1]
    if current and not current.strip() and text.startswith(current):
        return text[len(current) :]
    return text


def postprocess_chat(text: str, prefix: str) -> str:
    """Clean a chat model's completion so it can be inserted at the cursor as is."""
    return strip_echoed_prefix(strip_fences(text), prefix)


class FenceStripper:
    """Incremental :func:`strip_fences` for streamed chat answers.

    Holds back only what it must: the first line until it is known whether it opens a fence,
    and, inside a fence, a line that might turn out to be the closing one.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._state: Literal["start", "plain", "fenced", "done"] = "start"
        self._mid_line = False  # inside a fence: part of the current line was already released

    def feed(self, delta: str) -> str:
        if self._state == "done":
            return ""
        if self._state == "plain":
            return delta
        self._pending += delta
        if self._state == "start":
            head = self._pending.lstrip()
            if not head:
                return ""
            if not head.startswith(_FENCE[: len(head)]):
                # Not a fence: release everything and pass the rest through untouched.
                self._state = "plain"
                out, self._pending = self._pending, ""
                return out
            newline = head.find("\n")
            if newline < 0:
                return ""  # "``" or "```py" so far; wait for the end of the line
            self._state = "fenced"
            self._pending = head[newline + 1 :]
        return self._drain_fenced()

    def _drain_fenced(self) -> str:
        text = self._pending
        start = 0
        # A line whose beginning was already released cannot be the closing fence.
        mid_line = self._mid_line
        while True:
            newline = text.find("\n", start)
            if newline < 0:
                break
            if not mid_line and text[start:newline].strip() == _FENCE:
                # Closing fence: the answer ends before its line (the newline belongs to it).
                self._state = "done"
                self._pending = ""
                return text[: max(0, start - 1)]
            start = newline + 1
            mid_line = False
        # ``text[start:]`` is an unfinished line; if it could still become the closing fence,
        # hold it back together with the newline before it.
        tail = text[start:]
        if not mid_line and _FENCE.startswith(tail.strip()):
            keep_from = max(0, start - 1)
            self._mid_line = False
        else:
            keep_from = len(text)
            self._mid_line = mid_line or bool(tail)
        out, self._pending = text[:keep_from], text[keep_from:]
        return out

    def flush(self) -> str:
        """The rest of the answer at end of stream (a trailing lone fence is dropped)."""
        rest, self._pending = self._pending, ""
        if self._state == "done":
            return ""
        if self._state == "start":
            # Only whitespace, or an opening fence line that never ended ("```py").
            return rest if not rest.strip() else ""
        if self._state == "fenced" and rest.strip() and _FENCE.startswith(rest.strip()):
            return ""  # an unfinished closing fence (with the newline before it)
        return rest


def postprocess_generation(text: str) -> str:
    """Unwrap the answer: drop ``<new_code>`` tags and a markdown fence around the code."""
    body = text
    stripped = body.lstrip()
    if stripped and NEW_CODE_OPEN.startswith(stripped):
        return ""  # cut off inside the opening tag
    if stripped.startswith(NEW_CODE_OPEN):
        body = stripped[len(NEW_CODE_OPEN) :]
        if body.startswith("\n"):
            body = body[1:]
    closer = body.find(NEW_CODE_CLOSE)
    if closer >= 0:
        body = body[:closer]
    return strip_fences(body)


class GenerationStreamFilter:
    """Incremental :func:`postprocess_generation` for streamed answers."""

    def __init__(self) -> None:
        self._head = ""
        self._started = False
        self._fences = FenceStripper()

    def _after_tag(self, final: bool) -> str | None:
        """The text after a leading ``<new_code>`` (or all of it); None while undecided."""
        stripped = self._head.lstrip()
        if stripped.startswith(NEW_CODE_OPEN):
            rest = stripped[len(NEW_CODE_OPEN) :]
            if not rest and not final:
                return None  # the newline after the tag may still come
            return rest[1:] if rest.startswith("\n") else rest
        if not final and (not stripped or NEW_CODE_OPEN.startswith(stripped)):
            return None
        if final and stripped and NEW_CODE_OPEN.startswith(stripped):
            return ""
        return self._head

    def feed(self, delta: str) -> str:
        if self._started:
            return self._fences.feed(delta)
        self._head += delta
        rest = self._after_tag(final=False)
        if rest is None:
            return ""
        self._started = True
        return self._fences.feed(rest)

    def flush(self) -> str:
        if self._started:
            return self._fences.flush()
        rest = self._after_tag(final=True) or ""
        self._started = True
        return self._fences.feed(rest) + self._fences.flush()


# -- the end of the block --------------------------------------------------------------------

# A line ending with one of these opens a block: what follows belongs deeper.
_BLOCK_OPENERS: Final = (":", "{", "(", "[", "=>", " do", " then")
# A line starting with one of these closes the block it is in (brace languages).
_BLOCK_CLOSERS: Final = ("}", ")", "]")


def _indent_width(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _block_indent(prefix: str) -> int:
    """The indentation a line of the answer needs to stay in the cursor's block.

    Found by searching back from the cursor, not by splitting ``prefix`` into lines: the text
    above the cursor runs to 100,000 characters, and a split cost ~200 µs per request.
    """
    newline = prefix.rfind("\n")
    cursor_line = prefix[newline + 1 :]
    if cursor_line.strip():
        return _indent_width(cursor_line)
    # The last line with code above the cursor (none: "").
    above = ""
    end = newline
    while end >= 0:
        start = prefix.rfind("\n", 0, end)
        line = prefix[start + 1 : end]
        if line.strip():
            above = line
            break
        end = start
    opens = above.rstrip().endswith(_BLOCK_OPENERS)
    return _indent_width(above) + (1 if opens else 0)


class BlockEndFilter:
    """Cut a completion where it leaves the block the cursor is in.

    Models asked to fill in a function body like to go on with the next function. The first
    line of the answer (the rest of the cursor's line) is always kept; after it, the first
    line indented less than the block the cursor is in ends the answer, unless it merely
    closes the block (``}``), which is kept when the code after the cursor does not already
    close it. Blank lines before a cut are dropped with it. The result is always a prefix of
    the answer.

    The block is the cursor's line when it has code on it, else the last line with code above
    the cursor (one level deeper when that line opens a block, e.g. ends with ``:`` or ``{``).
    Streamed text passes through as it comes, except the start of each line, which is held
    only until its first non-blank character shows whether the line stays in the block.
    """

    def __init__(self, prefix: str, suffix: str = "") -> None:
        self._min_indent = _block_indent(prefix)
        self._suffix_head = suffix.lstrip()[:1]
        self._state: Literal["first", "line_start", "in_line", "closing", "done"] = "first"
        self._held = ""  # blank lines and the start of the current line, not yet released

    def feed(self, delta: str) -> str:
        out: list[str] = []
        start = 0  # start of the run of ``delta`` passed through unchanged
        index = 0
        while index < len(delta):
            state = self._state
            if state == "done":
                out.append(delta[start:index])
                return "".join(out)
            if state != "line_start":
                # Inside a line everything up to its newline passes: one find, not a Python
                # step per character (answers run to hundreds of characters).
                newline = delta.find("\n", index)
                if newline < 0:
                    break
                out.append(delta[start : newline + 1])
                start = index = newline + 1
                if state == "closing":
                    self._state = "done"
                    return "".join(out)
                self._state = "line_start"
                continue
            # line_start: hold characters until the line shows its indentation.
            char = delta[index]
            index += 1
            self._held += char
            start = index
            if char.isspace():
                continue
            indent = _indent_width(self._held.rsplit("\n", 1)[-1])
            if indent >= self._min_indent:
                self._state = "in_line"
            elif char in _BLOCK_CLOSERS and char != self._suffix_head:
                self._state = "closing"
            else:
                self._state = "done"
                self._held = ""
                return "".join(out)
            out.append(self._held)
            self._held = ""
        if self._state != "line_start":
            out.append(delta[start:])
        return "".join(out)

    def flush(self) -> str:
        """The text held at the end of the answer (trailing blank lines are kept)."""
        held, self._held = self._held, ""
        return "" if self._state == "done" else held


def stop_at_block_end(text: str, prefix: str, suffix: str = "") -> str:
    """:class:`BlockEndFilter` applied to a whole answer."""
    block = BlockEndFilter(prefix, suffix)
    return block.feed(text) + block.flush()


class FilterChain:
    """Stream filters applied one after the other (each sees the previous one's output)."""

    def __init__(self, *filters: TextFilterLike) -> None:
        self._filters = filters

    def feed(self, delta: str) -> str:
        for text_filter in self._filters:
            delta = text_filter.feed(delta)
        return delta

    def flush(self) -> str:
        tail = ""
        for text_filter in self._filters:
            tail = text_filter.feed(tail) + text_filter.flush()
        return tail
