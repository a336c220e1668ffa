"""Signing keys and the public JWKS.

Layout under ``settings.keys_dir``::

    signing/<kid>.pem   one PKCS#8 PEM per key (0600, directory 0700)
    signing/active      the kid that signs new tokens
    signing/schedule.json  written by rotation: per kid ``activate_at`` / ``retire_at`` (Unix s)

One file per key plus an "active" pointer is what rotation needs (DESIGN.md §3). The first
start creates one RSA-2048 key. ``enclave keys rotate`` (:func:`rotate`) adds a key file, which
publishes it in the JWKS at once, and schedules its activation (``activate_at``) and the old
key's retirement (``retire_at`` = activation + token lifetime + :data:`RETIRE_LEEWAY_S`). When
the schedule has activated keys, the latest activated one signs (the pointer is moved to it by
the first process that notices); otherwise the pointer decides. A key past its ``retire_at``
is no longer published; ``enclave keys remove-retired`` (:func:`remove_retired`) deletes it.

Why a wait before activation is safe and useful: a gateway learns keys only when it refreshes
its JWKS cache; a token with an unknown kid triggers a refresh (rate-limited by the gateway's
cooldown), so even ``activate_after 0`` works with Enclave's gateway, but a delay of a few
minutes (default 300 s, the JWKS ``max-age``) lets HTTP caches and other gateways see the key
before anything is signed with it.

The kid is the RFC 7638 JWK thumbprint, so it is derived from the key itself: a renamed file
cannot make the published kid and the signing key disagree.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave.common.logging import get_logger
from enclave.instance.files import ensure_private_dir, read_private_file, write_private_file

log = get_logger(__name__)

RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
ALG_RS256 = "RS256"
SIGNING_SUBDIR = "signing"
ACTIVE_FILE = "active"
SCHEDULE_FILE = "schedule.json"
LOCK_FILE = ".rotation.lock"
# How often a running instance looks at the key directory for a rotation (three stat calls).
RELOAD_INTERVAL_S = 2.0
# Added to the token lifetime before an old key leaves the JWKS: tokens minted by instances
# that saw the new schedule late, clock skew between hosts, the gateway's leeway.
RETIRE_LEEWAY_S = 300
# Default wait between publishing a new key and signing with it (enclave keys rotate).
DEFAULT_ACTIVATE_AFTER_S = 300


class KeyStoreError(RuntimeError):
    """The key directory is unusable; the message says what to fix."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public JWK."""
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class SigningKey:
    """One private key with its public JWK; ``alg`` leaves room for ES256/EdDSA keys later."""

    kid: str
    alg: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    path: Path | None = None

    @classmethod
    def from_rsa(cls, private_key: rsa.RSAPrivateKey, path: Path | None = None) -> SigningKey:
        return cls(jwk_thumbprint(_rsa_public_members(private_key)), ALG_RS256, private_key, path)

    def public_jwk(self) -> dict[str, str]:
        return {
            "kty": "RSA",
            "kid": self.kid,
            **{k: v for k, v in _rsa_public_members(self.private_key).items() if k != "kty"},
            "use": "sig",
            "alg": self.alg,
        }

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _rsa_public_members(private_key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = private_key.public_key().public_numbers()
    return {"kty": "RSA", "e": _int_b64url(numbers.e), "n": _int_b64url(numbers.n)}


def generate_rsa_key() -> SigningKey:
    return SigningKey.from_rsa(
        rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)
    )


@dataclass(frozen=True)
class ScheduleEntry:
    """When a key starts signing and when it stops being published (Unix seconds)."""

    activate_at: int | None = None
    retire_at: int | None = None

    def view(self) -> dict[str, int | None]:
        return {"activate_at": self.activate_at, "retire_at": self.retire_at}


@dataclass(frozen=True)
class _State:
    """One consistent snapshot of the key directory."""

    keys: dict[str, SigningKey]
    pointer: str | None
    schedule: dict[str, ScheduleEntry]

    def active_kid(self, now: float) -> str:
        activated = [
            (entry.activate_at, kid)
            for kid, entry in self.schedule.items()
            if entry.activate_at is not None and entry.activate_at <= now and kid in self.keys
        ]
        if activated:
            return max(activated)[1]
        if self.pointer is not None and self.pointer in self.keys:
            return self.pointer
        raise KeyStoreError("no signing key is active")  # pragma: no cover - checked at load

    def published(self, now: float) -> list[str]:
        active = self.active_kid(now)
        return sorted(
            kid
            for kid in self.keys
            if kid == active
            or (retire := self.schedule.get(kid, ScheduleEntry()).retire_at) is None
            or now < retire
        )


class KeyStore:
    """The instance's signing keys: the published ones are in the JWKS, one key signs.

    A store loaded from a directory follows it: at most every :data:`RELOAD_INTERVAL_S` it
    compares the directory's and files' modification times (three ``stat`` calls) and reloads
    when something changed, so a rotation done by ``enclave keys rotate`` reaches running
    instances without a restart and without a file read per request. Which key signs is
    decided by the clock against the schedule, so a key activates on time on every instance.
    """

    def __init__(
        self,
        keys: list[SigningKey],
        active_kid: str,
        *,
        schedule: dict[str, ScheduleEntry] | None = None,
        directory: Path | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        by_kid = {key.kid: key for key in keys}
        if active_kid not in by_kid:
            raise KeyStoreError(f"active signing key {active_kid} is not among the loaded keys")
        self._state = _State(by_kid, active_kid, dict(schedule or {}))
        self._directory = directory
        self._clock = clock
        self._monotonic = monotonic
        self._reload_lock = threading.Lock()
        self._fingerprint = _fingerprint(directory) if directory is not None else None
        self._next_check = monotonic() + RELOAD_INTERVAL_S

    # -- following the directory -----------------------------------------------------------

    def _maybe_reload(self) -> None:
        if self._directory is None:
            return
        now = self._monotonic()
        if now < self._next_check or not self._reload_lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + RELOAD_INTERVAL_S
            fingerprint = _fingerprint(self._directory)
            if fingerprint == self._fingerprint:
                return
            try:
                state = _load_state(self._directory, self._clock())
            except (KeyStoreError, OSError) as exc:
                # Keep signing with what was loaded; the next change is tried again.
                log.warning("signing_keys_reload_failed", error=str(exc))
                self._fingerprint = fingerprint
                return
            self._state = state
            self._fingerprint = fingerprint
            log.info("signing_keys_reloaded", kids=sorted(state.keys))
        finally:
            self._reload_lock.release()

    def _current(self) -> tuple[_State, str]:
        self._maybe_reload()
        state = self._state
        kid = state.active_kid(self._clock())
        if kid != state.pointer and self._directory is not None:
            # A scheduled key just became active: move the pointer so the files say so too.
            # Every process writes the same content; failure (read-only mount) is harmless.
            self._state = _State(state.keys, kid, state.schedule)
            _write_pointer(self._directory, kid)
            log.info("signing_key_activated", kid=kid)
        return state, kid

    # -- reading ----------------------------------------------------------------------------

    @property
    def active(self) -> SigningKey:
        state, kid = self._current()
        return state.keys[kid]

    @property
    def kids(self) -> list[str]:
        """The published key ids (the ones in the JWKS)."""
        state, _ = self._current()
        return state.published(self._clock())

    @property
    def all_kids(self) -> list[str]:
        """Every key on disk, published or retired."""
        state, _ = self._current()
        return sorted(state.keys)

    def get(self, kid: str) -> SigningKey | None:
        state, _ = self._current()
        return state.keys.get(kid)

    def algorithms(self) -> list[str]:
        state, _ = self._current()
        return sorted({key.alg for key in state.keys.values()})

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The published keys; retired keys (past their ``retire_at``) are left out by
        themselves, whether or not ``enclave keys remove-retired`` has deleted them yet."""
        state, active = self._current()
        published = state.published(self._clock())
        # Active key first: clients that take keys[0] (and humans) see the signing key.
        ordered = [active, *(kid for kid in published if kid != active)]
        return {"keys": [state.keys[kid].public_jwk() for kid in ordered]}

    def describe(self) -> list[dict[str, Any]]:
        """Every key with its state: active, pending, retiring, retired or published."""
        state, active = self._current()
        now = self._clock()
        rows = []
        for kid in sorted(
            state.keys, key=lambda k: (state.schedule.get(k, ScheduleEntry()).activate_at or 0, k)
        ):
            entry = state.schedule.get(kid, ScheduleEntry())
            if kid == active:
                status = "active"
            elif entry.activate_at is not None and entry.activate_at > now:
                status = "pending"
            elif entry.retire_at is not None and entry.retire_at <= now:
                status = "retired"
            elif entry.retire_at is not None:
                status = "retiring"
            else:
                status = "published"
            rows.append(
                {
                    "kid": kid,
                    "alg": state.keys[kid].alg,
                    "state": status,
                    "published": status != "retired",
                    **entry.view(),
                }
            )
        return rows

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> tuple[KeyStore, bool]:
        """Load the keys under ``keys_dir``; create the first key when there is none.

        Returns the store and whether a key was created.
        """
        ensure_private_dir(keys_dir)
        directory = ensure_private_dir(keys_dir / SIGNING_SUBDIR)
        keys = _load_keys(directory)
        created = False
        if not keys:
            key = generate_rsa_key()
            # A kid collision means the very same key is already there.
            with contextlib.suppress(FileExistsError):
                write_private_file(directory / f"{key.kid}.pem", key.private_pem())
            try:
                write_private_file(directory / ACTIVE_FILE, f"{key.kid}\n".encode())
                created = True
                log.info("signing_key_created", kid=key.kid, alg=key.alg)
            except FileExistsError:
                pass  # another process created the first key at the same moment; use its
        return cls._from_directory(directory), created

    @classmethod
    def load(cls, keys_dir: Path) -> KeyStore:
        """The existing keys; :class:`KeyStoreError` when there are none (nothing is created)."""
        directory = keys_dir / SIGNING_SUBDIR
        if not directory.is_dir() or not any(directory.glob("*.pem")):
            raise KeyStoreError(f"no signing key in {directory}")
        return cls._from_directory(directory)

    @classmethod
    def _from_directory(cls, directory: Path, clock: Callable[[], float] = time.time) -> KeyStore:
        state = _load_state(directory, clock())
        active = state.active_kid(clock())
        return cls(
            list(state.keys.values()),
            state.pointer if state.pointer in state.keys else active,
            schedule=state.schedule,
            directory=directory,
            clock=clock,
        )


def _fingerprint(directory: Path) -> tuple[int, ...]:
    stamps: list[int] = []
    for path in (directory, directory / ACTIVE_FILE, directory / SCHEDULE_FILE):
        try:
            info = path.stat()
            stamps += [info.st_mtime_ns, info.st_ino, info.st_size]
        except FileNotFoundError:
            stamps += [0, 0, 0]
    return tuple(stamps)


def _write_pointer(directory: Path, kid: str) -> None:
    try:
        write_private_file(directory / ACTIVE_FILE, f"{kid}\n".encode(), exclusive=False)
    except OSError as exc:
        log.warning("signing_key_pointer_not_written", kid=kid, error=str(exc))


def _load_keys(directory: Path) -> dict[str, SigningKey]:
    keys: dict[str, SigningKey] = {}
    for path in sorted(directory.glob("*.pem")):
        try:
            loaded = serialization.load_pem_private_key(read_private_file(path), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise KeyStoreError(f"{path}: only RSA signing keys are supported so far")
        key = SigningKey.from_rsa(loaded, path)
        keys[key.kid] = key
    return keys


def _load_schedule(directory: Path) -> dict[str, ScheduleEntry]:
    path = directory / SCHEDULE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"{path} is unreadable ({exc}); restore it from a backup") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise KeyStoreError(f'{path} must be {{"keys": {{<kid>: {{...}}}}}}')
    schedule: dict[str, ScheduleEntry] = {}
    for kid, entry in entries.items():
        if not isinstance(entry, dict):
            raise KeyStoreError(f"{path}: the entry for {kid} is not an object")
        values = [entry.get("activate_at"), entry.get("retire_at")]
        if any(v is not None and (not isinstance(v, int) or isinstance(v, bool)) for v in values):
            raise KeyStoreError(f"{path}: activate_at and retire_at of {kid} must be integers")
        schedule[kid] = ScheduleEntry(values[0], values[1])
    return schedule


def _write_schedule(directory: Path, schedule: dict[str, ScheduleEntry]) -> None:
    data = {"keys": {kid: entry.view() for kid, entry in sorted(schedule.items())}}
    write_private_file(
        directory / SCHEDULE_FILE, (json.dumps(data, indent=2) + "\n").encode(), exclusive=False
    )


def _load_state(directory: Path, now: float) -> _State:
    keys = _load_keys(directory)
    if not keys:
        raise KeyStoreError(f"no signing key in {directory}")
    schedule = _load_schedule(directory)
    state = _State(keys, _read_pointer(directory), schedule)
    if any(
        e.activate_at is not None and e.activate_at <= now and k in keys
        for k, e in schedule.items()
    ):
        return state  # the schedule decides; a stale pointer is moved on first use
    return _State(keys, _active_kid(directory, keys), schedule)


def _read_pointer(directory: Path) -> str | None:
    pointer = directory / ACTIVE_FILE
    return pointer.read_text().strip() if pointer.exists() else None


def _active_kid(directory: Path, keys: dict[str, SigningKey]) -> str:
    pointer = directory / ACTIVE_FILE
    if pointer.exists():
        kid = pointer.read_text().strip()
        if kid not in keys:
            raise KeyStoreError(
                f"{pointer} names key {kid!r} but {directory} has no such key; restore "
                f"{kid}.pem from a backup or write the kid of an existing key into {pointer}"
            )
        return kid
    if len(keys) == 1:
        return next(iter(keys))
    raise KeyStoreError(
        f"{directory} holds {len(keys)} keys but no {ACTIVE_FILE} file saying which one signs; "
        f"write the kid of the signing key into {pointer}"
    )


# --- rotation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    old_kid: str
    new_kid: str
    activate_at: int
    old_retire_at: int


@contextlib.contextmanager
def _rotation_lock(directory: Path) -> Iterator[None]:
    """One rotation or clean-up at a time (two CLIs at once must not both rotate)."""
    ensure_private_dir(directory)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def rotate(
    keys_dir: Path,
    *,
    activate_after_s: int,
    token_lifetime_s: int,
    now: float | None = None,
) -> Rotation:
    """Add a new key, published at once, signing from ``now + activate_after_s``.

    The old key stays published until ``activate_at + token_lifetime_s + RETIRE_LEEWAY_S``:
    its last token expires by then (tokens minted just before activation, instances that see
    the schedule up to :data:`RELOAD_INTERVAL_S` late, clock skew). Refuses while an earlier
    rotation is still pending.
    """
    if activate_after_s < 0:
        raise KeyStoreError("activate_after_s must not be negative")
    directory = keys_dir / SIGNING_SUBDIR
    with _rotation_lock(directory):
        current_time = time.time() if now is None else now
        store = KeyStore.load(keys_dir)
        store._clock = lambda: current_time
        state, old_kid = store._current()
        schedule = dict(state.schedule)
        for kid, entry in schedule.items():
            if (
                kid in state.keys
                and entry.activate_at is not None
                and entry.activate_at > current_time
            ):
                raise KeyStoreError(
                    f"key {kid} is waiting to become active at {entry.activate_at} (Unix time); "
                    "rotate again after it has"
                )
        new = generate_rsa_key()
        # 1. Publish: the key file is all the JWKS needs.
        write_private_file(directory / f"{new.kid}.pem", new.private_pem())
        # Strictly after every earlier activation: the latest activated key signs.
        latest = max((e.activate_at or 0 for e in schedule.values()), default=0)
        activate_at = max(int(current_time) + activate_after_s, latest + 1)
        retire_at = activate_at + token_lifetime_s + RETIRE_LEEWAY_S
        old = schedule.get(old_kid, ScheduleEntry())
        schedule[old_kid] = ScheduleEntry(old.activate_at or 0, retire_at)
        schedule[new.kid] = ScheduleEntry(activate_at, None)
        # 2. Schedule the activation (and the old key's retirement).
        _write_schedule(directory, schedule)
        if activate_at <= current_time:
            _write_pointer(directory, new.kid)
    log.info(
        "signing_key_rotated",
        old_kid=old_kid,
        new_kid=new.kid,
        activate_at=activate_at,
        old_retire_at=retire_at,
    )
    return Rotation(old_kid, new.kid, activate_at, retire_at)


def remove_retired(keys_dir: Path, *, now: float | None = None) -> list[str]:
    """Delete the files of keys past their ``retire_at``; the ids removed."""
    directory = keys_dir / SIGNING_SUBDIR
    with _rotation_lock(directory):
        current_time = time.time() if now is None else now
        store = KeyStore.load(keys_dir)
        store._clock = lambda: current_time
        state, active = store._current()  # moves the pointer off a retiring key first
        schedule = dict(state.schedule)
        removed = []
        for kid in sorted(state.keys):
            retire_at = schedule.get(kid, ScheduleEntry()).retire_at
            if kid == active or retire_at is None or retire_at > current_time:
                continue
            path = state.keys[kid].path or directory / f"{kid}.pem"
            path.unlink(missing_ok=True)
            schedule.pop(kid, None)
            removed.append(kid)
        if removed:
            _write_schedule(directory, schedule)
            log.info("signing_keys_removed", kids=removed)
        return removed
