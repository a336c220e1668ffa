"""Request ids: random hex from the operating system, never repeated by a forked child."""

from __future__ import annotations

import os
import re
import threading

from enclave.common.request_id import new_request_id, new_short_id


def test_ids_have_their_lengths_in_lowercase_hex_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    short = [new_short_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids) and len(set(short)) == len(short)
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert all(re.fullmatch(r"[0-9a-f]{24}", value) for value in short)


def test_ids_do_not_count_requests() -> None:
    # A prefix + counter would share its leading characters; random ids almost never do.
    ids = [new_request_id() for _ in range(1_000)]
    assert len({value[:8] for value in ids}) > 990
    assert len({value[-8:] for value in ids}) > 990


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    """Workers forked from one parent must not share the parent's sequence."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave without running pytest's exit
        try:
            os.write(write_end, (new_request_id() + new_short_id()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = new_request_id() + new_short_id()
    assert len(child) == 56
    assert child[:32] != parent[:32] and child[32:] != parent[32:]


def test_threads_drawing_ids_at_once_never_get_the_same_one() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        for _ in range(5_000):  # many read-ahead blocks each
            into.append(new_request_id())

    threads = [threading.Thread(target=draw, args=(ids,)) for ids in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for ids in drawn for value in ids]
    assert len(every) == 20_000 and len(set(every)) == 20_000
