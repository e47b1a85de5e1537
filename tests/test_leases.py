"""The lease primitive (garrison.core.leases): one holder at a time, a fencing epoch that only goes up, and a
contention test with eight real processes on each backend.

Run as a module (``python -m tests.test_leases DB_URL LEASE OUT READY GO``) it is one contender of the
contention test: it writes its tenures to ``OUT`` as JSON lines.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from itertools import pairwise
from pathlib import Path

import pytest

from garrison import Garrison, NullPublisher, Settings
from garrison.core.db import Database
from garrison.core.leases import LeaseState, acquire, holder, new_owner, release, renew
from tests.harness import ROOT, wait_until

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
TENANT = "acme"
NAME = "beat"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Garrison(settings, publisher=NullPublisher()).db
    yield database
    database.dispose()


def test_acquire_a_free_lease(db: Database) -> None:
    assert holder(db, TENANT, NAME) is None
    a = acquire(db, TENANT, NAME, "a", 10, at(0))
    assert a == LeaseState(TENANT, NAME, "a", 1, at(10), acquired_at=at(0), renewed_at=at(0))
    assert holder(db, TENANT, NAME) == a


def test_a_second_owner_is_refused_while_it_is_held(db: Database) -> None:
    assert acquire(db, TENANT, NAME, "a", 10, at(0)) is not None
    assert acquire(db, TENANT, NAME, "b", 10, at(0)) is None
    assert acquire(db, TENANT, NAME, "b", 10, at(9.999)) is None
    held = holder(db, TENANT, NAME)
    assert held is not None and held.owner == "a"


def test_the_holder_renews_and_keeps_its_epoch(db: Database) -> None:
    assert acquire(db, TENANT, NAME, "a", 10, at(0)) is not None
    r = renew(db, TENANT, NAME, "a", 10, at(3))
    assert r is not None and (r.epoch, r.expires_at, r.acquired_at, r.renewed_at) == (1, at(13), at(0), at(3))
    r = renew(db, TENANT, NAME, "a", 10, at(6), epoch=1)
    assert r is not None and r.expires_at == at(16)
    again = acquire(db, TENANT, NAME, "a", 10, at(9))  # acquire by the holder renews too
    assert again is not None and (again.epoch, again.expires_at, again.acquired_at) == (1, at(19), at(0))
    assert acquire(db, TENANT, NAME, "b", 10, at(18)) is None  # the renewals count
    assert renew(db, TENANT, NAME, "a", 10, at(12), epoch=2) is None  # not that tenure


def test_after_expiry_another_owner_takes_it_with_a_higher_epoch(db: Database) -> None:
    assert acquire(db, TENANT, NAME, "a", 10, at(0)) is not None
    assert renew(db, TENANT, NAME, "a", 10, at(10)) is None  # expired: renewing is too late
    b = acquire(db, TENANT, NAME, "b", 10, at(10))
    assert b is not None and (b.owner, b.epoch, b.acquired_at, b.expires_at) == ("b", 2, at(10), at(20))
    c = acquire(db, TENANT, NAME, "c", 5, at(25))
    assert c is not None and (c.owner, c.epoch) == ("c", 3)


def test_a_lapsed_owner_taking_it_back_starts_a_new_tenure(db: Database) -> None:
    assert acquire(db, TENANT, NAME, "a", 10, at(0)) is not None
    back = acquire(db, TENANT, NAME, "a", 10, at(11))
    assert back is not None and (back.epoch, back.acquired_at) == (2, at(11))


def test_a_deposed_owner_can_neither_renew_nor_release(db: Database) -> None:
    assert acquire(db, TENANT, NAME, "a", 10, at(0)) is not None
    b = acquire(db, TENANT, NAME, "b", 10, at(10))
    assert b is not None
    assert renew(db, TENANT, NAME, "a", 10, at(11)) is None
    assert acquire(db, TENANT, NAME, "a", 10, at(11)) is None
    assert not release(db, TENANT, NAME, "a")
    assert holder(db, TENANT, NAME) == b


def test_release_lets_another_acquire_at_once_and_the_epoch_never_goes_back(db: Database) -> None:
    assert acquire(db, TENANT, NAME, "a", 10, at(0)) is not None
    assert release(db, TENANT, NAME, "a")
    assert holder(db, TENANT, NAME) is None
    assert not release(db, TENANT, NAME, "a")  # released already
    assert renew(db, TENANT, NAME, "a", 10, at(1)) is None
    b = acquire(db, TENANT, NAME, "b", 10, at(1))  # well before a's expiry
    assert b is not None and b.epoch == 2
    assert release(db, TENANT, NAME, "b")
    a = acquire(db, TENANT, NAME, "a", 10, at(2))  # a new tenure, even for an earlier owner
    assert a is not None and a.epoch == 3


def test_leases_are_per_tenant_and_per_name(db: Database) -> None:
    assert acquire(db, TENANT, NAME, "a", 10, at(0)) is not None
    other = acquire(db, "globex", NAME, "b", 10, at(0))
    assert other is not None and other.epoch == 1
    assert acquire(db, TENANT, "relay", "b", 10, at(0)) is not None
    assert not release(db, "globex", NAME, "a")
    assert renew(db, "globex", NAME, "a", 10, at(1)) is None
    held = holder(db, TENANT, NAME)
    assert held is not None and held.owner == "a"


def test_clocks_in_other_zones_mean_the_same_instant(db: Database) -> None:
    east = timezone_plus(2)
    a = acquire(db, TENANT, NAME, "a", 10, at(0).astimezone(east))
    assert a is not None and a.expires_at == at(10)
    assert acquire(db, TENANT, NAME, "b", 10, at(5).astimezone(east)) is None
    assert acquire(db, TENANT, NAME, "b", 10, at(10).astimezone(east)) is not None


def timezone_plus(hours: int) -> tzinfo:
    return timezone(timedelta(hours=hours))


def test_bad_arguments_are_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="owner"):
        acquire(db, TENANT, NAME, "", 10, at(0))
    with pytest.raises(ValueError, match="TTL"):
        acquire(db, TENANT, NAME, "a", 0, at(0))
    with pytest.raises(ValueError, match="owner"):
        release(db, TENANT, NAME, "")


def test_owner_tokens_are_unique_and_say_where_they_come_from() -> None:
    a, b = new_owner("beat"), new_owner("beat")
    assert a != b and a.startswith("beat@") and a.split(":")[-2] == b.split(":")[-2]


# -- eight processes contending ------------------------------------------------------------------------

CONTENDERS = 8
CONTEND_FOR = 2.0  # seconds of contention, once every contender is ready
TTL = 0.15


def test_eight_processes_never_hold_the_lease_at_once(settings: Settings, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for i in range(CONTENDERS):
        out, ready = tmp_path / f"c{i}.jsonl", tmp_path / f"c{i}.ready"
        args = [sys.executable, "-m", "tests.test_leases", settings.database_url, NAME, str(out), str(ready), str(go)]
        procs.append((subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE), out))
    try:
        wait_until(lambda: all((tmp_path / f"c{i}.ready").exists() for i in range(CONTENDERS)), timeout=120,
                   what="every contender to be ready")
        go.touch()
        for proc, _ in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()

    records = [json.loads(line) for _, out in procs for line in out.read_text().splitlines()]
    owners_of: dict[int, set[str]] = defaultdict(set)
    for r in records:
        owners_of[r["epoch"]].add(r["owner"])
    assert all(len(owners) == 1 for owners in owners_of.values()), {e: o for e, o in owners_of.items() if len(o) > 1}
    assert len(owners_of) >= 2, "the lease never changed hands"
    assert sorted(owners_of) == list(range(1, len(owners_of) + 1)), "an epoch was granted but not recorded"
    assert len({o for owners in owners_of.values() for o in owners}) >= 2, "only one contender ever held it"

    # Epoch order is the database's order of tenures. (``acquired_at`` need not be: it is the caller's
    # ``now``, which can be older than the statement when the call waited, e.g. for a row lock.)
    tenures = [Tenure.of(epoch, [r for r in records if r["epoch"] == epoch]) for epoch in sorted(owners_of)]
    for before, after in pairwise(tenures):
        # What the database granted: a tenure that was not released ends at its last granted expiry, and
        # nobody was granted the lease at a ``now`` before then.
        if before.released_at is None:
            assert before.granted_until <= after.granted_from, (before, after)
        # What the owners did: each acted from the moment its acquire returned until its expiry or the
        # moment it chose to release; those spans never overlap, and follow each other in epoch order.
        assert before.acting_until <= after.acting_from, (before, after)


class Tenure:
    """One epoch as its owner recorded it."""

    def __init__(self, epoch: int, granted_from: datetime, granted_until: datetime, acting_from: datetime,
                 released_at: datetime | None) -> None:
        self.epoch = epoch
        self.granted_from = granted_from  # acquired_at, the ``now`` of the acquire
        self.granted_until = granted_until  # the last expires_at granted (acquire or renew)
        self.acting_from = acting_from  # after the acquire returned
        self.released_at = released_at  # before the release was sent, when the owner released it
        self.acting_until = min(granted_until, released_at) if released_at else granted_until

    def __repr__(self) -> str:
        return f"Tenure({vars(self)})"

    @classmethod
    def of(cls, epoch: int, records: list[dict[str, str]]) -> Tenure:
        [taken] = [r for r in records if r["kind"] == "acquire"]  # one acquire per epoch, renewals after it
        assert taken["acquired_at"] == taken["asked"]
        released = [datetime.fromisoformat(r["at"]) for r in records if r["kind"] == "release"]
        return cls(
            epoch,
            granted_from=datetime.fromisoformat(taken["acquired_at"]),
            granted_until=max(datetime.fromisoformat(r["expires_at"]) for r in records if "expires_at" in r),
            acting_from=datetime.fromisoformat(taken["started"]),
            released_at=released[0] if released else None,
        )


def _contend(url: str, name: str, out: Path, ready: Path, go: Path) -> None:
    """One contender: take the lease whenever it can; once held, renew it at TTL/3 a few times, then
    either release it or fall silent past its expiry (a leader dying), and try again."""
    db = Database(Settings(database_url=url, data_dir=out.parent / "unused"))
    owner = new_owner("contender")
    rng = random.Random(owner)
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    stop = time.monotonic() + CONTEND_FOR
    with out.open("w") as f:

        def record(kind: str, epoch: int, **fields: datetime) -> None:
            line = {"kind": kind, "epoch": epoch, "owner": owner, **{k: v.isoformat() for k, v in fields.items()}}
            f.write(json.dumps(line) + "\n")

        while time.monotonic() < stop:
            asked = datetime.now(UTC)
            state = acquire(db, TENANT, name, owner, TTL, asked)
            if state is None:
                time.sleep(rng.uniform(0.0, TTL / 5))
                continue
            started = datetime.now(UTC)
            assert state.owner == owner
            record("acquire", state.epoch, asked=asked, started=started, acquired_at=state.acquired_at,
                   expires_at=state.expires_at)
            for _ in range(rng.randint(0, 3)):
                time.sleep(TTL / 3)
                now = datetime.now(UTC)
                renewed = renew(db, TENANT, name, owner, TTL, now, epoch=state.epoch)
                if renewed is None:
                    break  # lost: stop acting on it
                assert renewed.epoch == state.epoch
                record("renew", state.epoch, expires_at=renewed.expires_at)
            if rng.random() < 0.5:
                before = datetime.now(UTC)
                if release(db, TENANT, name, owner):
                    record("release", state.epoch, at=before)
            else:
                time.sleep(TTL * 1.5)  # silent past the expiry, as a dead leader: someone else must take over
    db.dispose()


if __name__ == "__main__":
    _contend(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
