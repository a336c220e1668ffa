"""Signing key rotation: publish first, activate on schedule, retire after the last token."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from enclave.instance.db import make_engine, make_session_factory
from enclave.instance.db.models import AuditEvent
from enclave.instance.keys import (
    RELOAD_INTERVAL_S,
    RETIRE_LEEWAY_S,
    KeyStore,
    KeyStoreError,
    remove_retired,
    rotate,
)
from enclave.instance.tokens import TokenMinter
from tests.unit.instance.test_admin_cli import Cli, cli  # noqa: F401 - the fixture

LIFETIME = 3600
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store_at(keys_dir: Path, clock: Clock, monotonic: Clock) -> KeyStore:
    store = KeyStore.load(keys_dir)
    store._clock = clock
    store._monotonic = monotonic
    store._next_check = monotonic() + RELOAD_INTERVAL_S
    return store


@pytest.fixture()
def keys_dir(tmp_path: Path) -> Path:
    KeyStore.load_or_create(tmp_path / "keys")
    return tmp_path / "keys"


def test_rotation_publishes_at_once_and_signs_from_activation(keys_dir: Path) -> None:
    clock, monotonic = Clock(T0), Clock(0.0)
    store = store_at(keys_dir, clock, monotonic)
    old = store.active.kid

    rotation = rotate(keys_dir, activate_after_s=300, token_lifetime_s=LIFETIME, now=T0)
    assert rotation.old_kid == old
    assert rotation.activate_at == int(T0) + 300
    assert rotation.old_retire_at == int(T0) + 300 + LIFETIME + RETIRE_LEEWAY_S
    schedule = json.loads((keys_dir / "signing" / "schedule.json").read_text())["keys"]
    assert schedule[rotation.new_kid] == {"activate_at": int(T0) + 300, "retire_at": None}

    # A running store does not look at the directory on every call ...
    assert [k["kid"] for k in store.jwks()["keys"]] == [old]
    # ... but within the reload interval: the new key is published, the old one still signs.
    monotonic.now += RELOAD_INTERVAL_S
    assert [k["kid"] for k in store.jwks()["keys"]] == [old, rotation.new_kid]
    assert store.active.kid == old
    assert (keys_dir / "signing" / "active").read_text().strip() == old

    clock.now = T0 + 300  # activation: the new key signs, the pointer follows
    assert store.active.kid == rotation.new_kid
    assert [k["kid"] for k in store.jwks()["keys"]] == [rotation.new_kid, old]
    assert (keys_dir / "signing" / "active").read_text().strip() == rotation.new_kid

    clock.now = rotation.old_retire_at - 1  # the old key's last token may still be valid
    assert store.kids == sorted([old, rotation.new_kid])
    clock.now = rotation.old_retire_at  # retired: the JWKS stops publishing it by itself
    assert [k["kid"] for k in store.jwks()["keys"]] == [rotation.new_kid]
    assert store.all_kids == sorted([old, rotation.new_kid])
    assert {row["kid"]: row["state"] for row in store.describe()} == {
        old: "retired",
        rotation.new_kid: "active",
    }


def test_a_fresh_load_agrees(keys_dir: Path) -> None:
    rotation = rotate(keys_dir, activate_after_s=0, token_lifetime_s=LIFETIME, now=T0)
    store = store_at(keys_dir, Clock(T0), Clock(0.0))
    assert store.active.kid == rotation.new_kid
    assert [k["kid"] for k in store.jwks()["keys"]] == [rotation.new_kid, rotation.old_kid]
    assert (keys_dir / "signing" / "active").read_text().strip() == rotation.new_kid


def test_minter_switches_keys_at_activation(keys_dir: Path) -> None:
    clock, monotonic = Clock(T0), Clock(0.0)
    store = store_at(keys_dir, clock, monotonic)
    minter = TokenMinter(
        store,
        issuer="http://x",
        instance_id=uuid.uuid4(),
        lifetime_s=LIFETIME,
        clock=clock,
    )
    first = minter.token(["complete_code"])
    rotation = rotate(keys_dir, activate_after_s=60, token_lifetime_s=LIFETIME, now=T0)
    monotonic.now += RELOAD_INTERVAL_S
    assert minter.token(["complete_code"]) == first  # cached, old key still active
    clock.now = T0 + 60
    second = minter.token(["complete_code"])
    assert second.kid == rotation.new_kid != first.kid


def test_a_pending_rotation_blocks_another(keys_dir: Path) -> None:
    rotate(keys_dir, activate_after_s=300, token_lifetime_s=LIFETIME, now=T0)
    with pytest.raises(KeyStoreError, match="waiting to become active"):
        rotate(keys_dir, activate_after_s=0, token_lifetime_s=LIFETIME, now=T0 + 299)
    again = rotate(keys_dir, activate_after_s=0, token_lifetime_s=LIFETIME, now=T0 + 300)
    # The first key activated in this very second: the next one activates a second later, so
    # "the latest activated key signs" is never a tie.
    assert again.activate_at == int(T0) + 301
    clock = Clock(T0 + 300)
    store = store_at(keys_dir, clock, Clock(0.0))
    assert store.active.kid == again.old_kid
    clock.now += 1
    assert store.active.kid == again.new_kid
    assert len(store.kids) == 3


def test_remove_retired_deletes_only_expired_keys(keys_dir: Path) -> None:
    rotation = rotate(keys_dir, activate_after_s=0, token_lifetime_s=LIFETIME, now=T0)
    assert remove_retired(keys_dir, now=rotation.old_retire_at - 1) == []
    assert remove_retired(keys_dir, now=rotation.old_retire_at) == [rotation.old_kid]
    assert not (keys_dir / "signing" / f"{rotation.old_kid}.pem").exists()
    store = store_at(keys_dir, Clock(rotation.old_retire_at), Clock(0.0))
    assert store.all_kids == [rotation.new_kid]
    schedule = json.loads((keys_dir / "signing" / "schedule.json").read_text())["keys"]
    assert list(schedule) == [rotation.new_kid]


def test_remove_retired_moves_a_stale_pointer_first(keys_dir: Path) -> None:
    # Activation scheduled, no process ran in between: the pointer still names the old key.
    rotation = rotate(keys_dir, activate_after_s=10, token_lifetime_s=LIFETIME, now=T0)
    assert remove_retired(keys_dir, now=rotation.old_retire_at) == [rotation.old_kid]
    assert (keys_dir / "signing" / "active").read_text().strip() == rotation.new_kid
    assert KeyStore.load(keys_dir).active.kid == rotation.new_kid


def test_a_broken_schedule_keeps_the_loaded_keys(keys_dir: Path) -> None:
    monotonic = Clock(0.0)
    store = store_at(keys_dir, Clock(T0), monotonic)
    kid = store.active.kid
    (keys_dir / "signing" / "schedule.json").write_text("{not json")
    monotonic.now += RELOAD_INTERVAL_S
    assert store.active.kid == kid
    with pytest.raises(KeyStoreError, match=r"schedule\.json"):
        KeyStore.load(keys_dir)


def test_negative_delay_is_refused(keys_dir: Path) -> None:
    with pytest.raises(KeyStoreError):
        rotate(keys_dir, activate_after_s=-1, token_lifetime_s=LIFETIME)


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_rotate_list_and_remove(cli: Cli) -> None:  # noqa: F811 - the fixture
    [before] = cli.json("keys", "list")
    assert before["state"] == "active"
    rotation = cli.json("keys", "rotate", "--activate-after", "120")
    assert rotation["old_kid"] == before["kid"]
    states = {row["kid"]: row["state"] for row in cli.json("keys", "list")}
    assert states == {before["kid"]: "active", rotation["new_kid"]: "pending"}
    result = cli("keys", "rotate")
    assert result.exit_code == 1
    assert "waiting to become active" in result.output
    assert cli.json("keys", "remove-retired") == {"removed": []}
    table = cli("keys", "list")
    assert table.exit_code == 0 and rotation["new_kid"] in table.stdout

    engine = make_engine(cli.settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "signing_key_rotated")
            ).all()
    finally:
        engine.dispose()
    [event] = events
    assert event.target == rotation["new_kid"]
    assert event.details["old_kid"] == before["kid"]
    assert "(enclave CLI)" in event.author_name


def test_cli_rotate_human_output(cli: Cli) -> None:  # noqa: F811 - the fixture
    result = cli("keys", "rotate", "--activate-after", "0")
    assert result.exit_code == 0, result.output
    assert "is published; it signs from" in result.stdout
