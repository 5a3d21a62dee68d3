"""The store protocol's contract: every implementation passes these (``make_store``'s params).

Only the protocol is used here: records in, records out. What one backend
does its own way (SQLite's pragmas, indexes, migrations) is in its own file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from batchjobs.errors import (
    EventsPrunedError,
    InvalidDataError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreReadOnlyError,
)
from batchjobs.models import BatchJob, Schedule, Status, new_job_id
from batchjobs.store import Checkpoint, Claim, ClaimRequest, Lease, Store

pytestmark = pytest.mark.backends("sqlite", "postgres")
MakeStore = Callable[[], Store]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)


def make_job(
    type: str = "t", status: Status = Status.CREATED, at: datetime = T0, **fields: Any
) -> BatchJob:
    return BatchJob(
        id=new_job_id(at), type=type, status=status, created_at=at, updated_at=at, **fields
    )


def insert(store: Store, *jobs: BatchJob) -> list[BatchJob]:
    for job in jobs:
        store.insert(job)
    return list(jobs)


def request(now: datetime = T0, *, owner: str = "w1", types: tuple[str, ...] = ("t",), **kw: Any):
    return ClaimRequest(owner, types, now, now + LEASE, **kw)


def claim_one(store: Store, now: datetime = T0, **kw: Any) -> Claim:
    claims = store.claim(request(now, **kw))
    assert len(claims) == 1, claims
    return claims[0]


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


# -- jobs ----------------------------------------------------------------------


def test_a_job_comes_back_as_it_was_inserted(store: Store) -> None:
    job = make_job(
        created_by="usr_1",
        dry_run=True,
        context={"words": ["ünïcødé", None, 1.5], "nested": {"a": [1, {"b": True}]}},
        result={"count": 3},
        pre_processed_at=T0 + timedelta(microseconds=1),
    )
    store.insert(job)
    assert store.get(job.id) == job
    assert store.get(job.id).created_at.tzinfo is not None  # type: ignore[union-attr]
    assert store.status_of(job.id) == Status.CREATED
    assert store.get("batch_nope") is None and store.status_of("batch_nope") is None


def test_a_key_is_inserted_once_per_creator(store: Store) -> None:
    first = make_job(created_by="usr_1")
    assert store.insert(first, key="nightly") == first
    again = make_job(created_by="usr_1", type="other")
    assert store.insert(again, key="nightly") == first  # nothing written
    assert store.get(again.id) is None
    theirs, apps = make_job(created_by="usr_2"), make_job()
    assert store.insert(theirs, key="nightly") == theirs  # another creator's key
    assert store.insert(apps, key="nightly") == apps  # None is a creator too
    assert store.insert(make_job(), key="nightly") == apps
    assert store.get_by_key("nightly", created_by="usr_1") == first
    assert store.get_by_key("nightly", created_by=None) == apps
    assert store.get_by_key("nope", created_by=None) is None
    unkeyed = [make_job(), make_job()]
    assert [store.insert(job) for job in unkeyed] == unkeyed  # no key: always written


def test_of_concurrent_inserts_with_one_key_one_writes(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    got: list[BatchJob] = []

    def insert_keyed(store: Store) -> None:
        job = make_job()
        barrier.wait()
        got.append(store.insert(job, key="once"))

    threads = [threading.Thread(target=insert_keyed, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job.id for job in got}) == 1
    assert stores[0].count() == 1


def test_inserting_an_id_twice_is_a_store_error(store: Store) -> None:
    (job,) = insert(store, make_job())
    with pytest.raises(StoreError):
        store.insert(job.replace(type="other"))
    assert store.get(job.id) == job


def test_a_guarded_transition_has_one_winner_among_connections(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(6)]
    (job,) = insert(stores[0], make_job(status=Status.PRE_PROCESSED))
    barrier = threading.Barrier(len(stores))
    wins: list[BatchJob | None] = []

    def confirm(store: Store) -> None:
        barrier.wait()
        wins.append(
            store.transition(
                job.id, from_statuses=[Status.PRE_PROCESSED], to=Status.CONFIRMED, now=T0
            )
        )

    threads = [threading.Thread(target=confirm, args=[s]) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [w for w in wins if w is not None]
    assert len(winners) == 1
    assert winners[0].status == Status.CONFIRMED and winners[0].confirmed_at == T0
    assert stores[1].get(job.id) == winners[0]


def test_a_transition_sets_its_timestamp_clears_and_resets(store: Store) -> None:
    (job,) = insert(store, make_job(status=Status.FAILED, failed_at=T0))
    later = T0 + timedelta(minutes=1)
    assert (
        store.transition(job.id, from_statuses=[Status.CREATED], to=Status.FAILED, now=later)
        is None
    )
    assert (
        store.transition("batch_nope", from_statuses=[Status.FAILED], to=Status.CREATED, now=later)
        is None
    )
    moved = store.transition(
        job.id,
        from_statuses=[Status.FAILED],
        to=Status.CONFIRMED,
        now=later,
        clear=["failed_at"],
        reset_claim=True,
    )
    assert moved is not None
    assert (moved.status, moved.confirmed_at, moved.updated_at, moved.failed_at) == (
        Status.CONFIRMED,
        later,
        later,
        None,
    )
    assert store.get(job.id) == moved


def test_merge_is_shallow_and_keeps_other_keys(store: Store) -> None:
    (job,) = insert(store, make_job(context={"a": 1, "keep": {"x": 1}}, result={"r": [1]}))
    later = T0 + timedelta(seconds=5)
    merged = store.merge(job.id, now=later, context={"keep": {"y": 2}, "b": 2}, result={"s": 1})
    assert merged is not None
    assert merged.context == {"a": 1, "keep": {"y": 2}, "b": 2}
    assert merged.result == {"r": [1], "s": 1} and merged.updated_at == later
    assert store.get(job.id) == merged
    assert store.merge("batch_nope", now=later, result={"s": 1}) is None


def test_delete_keeps_a_job_that_left_the_given_statuses(store: Store) -> None:
    done, active = insert(
        store, make_job(status=Status.COMPLETED), make_job(status=Status.CONFIRMED)
    )
    assert store.delete([done.id, active.id], statuses=[Status.COMPLETED, Status.FAILED]) == [
        done.id
    ]
    assert store.get(done.id) is None and store.get(active.id) is not None
    assert store.delete([]) == []
    assert store.delete([active.id]) == [active.id]


def test_delete_keeps_a_job_updated_since_the_given_time(store: Store) -> None:
    old, recent = insert(
        store,
        make_job(status=Status.FAILED, at=T0),
        make_job(status=Status.FAILED, at=T0 + timedelta(days=2)),
    )
    cutoff = T0 + timedelta(days=1)
    deleted = store.delete([old.id, recent.id], statuses=[Status.FAILED], updated_before=cutoff)
    assert deleted == [old.id]
    assert store.get(old.id) is None and store.get(recent.id) == recent


def test_list_and_count_filter_order_and_page(store: Store) -> None:
    jobs = [
        make_job(
            type="a" if i % 2 else "b",
            status=Status.COMPLETED if i < 3 else Status.CREATED,
            at=T0 + timedelta(days=i),
            created_by=None if i == 4 else f"usr_{i % 2}",
        )
        for i in range(5)
    ]
    insert(store, *jobs)
    page, count = store.list_and_count(limit=2)
    assert count == 5 and [j.id for j in page] == [jobs[4].id, jobs[3].id]
    page, count = store.list_and_count(order="created_at", limit=2, offset=1)
    assert [j.id for j in page] == [jobs[1].id, jobs[2].id]
    cases: list[tuple[dict[str, Any], list[int]]] = [
        ({"type": "a"}, [1, 3]),
        ({"status": [Status.COMPLETED.value]}, [0, 1, 2]),
        ({"status": []}, []),
        ({"created_by": "usr_0"}, [0, 2]),
        ({"created_by": None}, [4]),
        ({"created_by": ["usr_1", None]}, [1, 3, 4]),
        ({"id": [jobs[0].id, jobs[4].id]}, [0, 4]),
        ({"created_at": {"gte": T0 + timedelta(days=1), "lt": T0 + timedelta(days=3)}}, [1, 2]),
        ({"completed_at": None}, [0, 1, 2, 3, 4]),
        ({"type": "b", "status": Status.CREATED.value, "created_by": "usr_0"}, []),
    ]
    for filters, expected in cases:
        page, count = store.list_and_count(filters=filters, order="created_at", limit=10)
        assert [j.id for j in page] == [jobs[i].id for i in expected], filters
        assert count == len(expected) == store.count(filters=filters), filters
    with pytest.raises(InvalidDataError, match="order must be one of"):
        store.list_and_count(order="context")


def test_date_filters_and_order_hold_whatever_the_zone_of_the_times(store: Store) -> None:
    paris, new_york = timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))
    # The same instants, written with UTC, Paris and New York offsets.
    zones = [timezone.utc, paris, new_york, timezone.utc]
    jobs = insert(
        store, *(make_job(at=(T0 + timedelta(hours=i)).astimezone(zones[i])) for i in range(4))
    )
    page, _ = store.list_and_count(order="created_at", limit=10)
    assert [j.id for j in page] == [j.id for j in jobs]
    cases: list[tuple[dict[str, Any], list[int]]] = [
        ({"created_at": {"gte": (T0 + timedelta(hours=1)).astimezone(paris)}}, [1, 2, 3]),
        ({"created_at": {"gt": (T0 + timedelta(hours=1)).astimezone(new_york)}}, [2, 3]),
        ({"created_at": {"lt": (T0 + timedelta(hours=2)).astimezone(paris)}}, [0, 1]),
        ({"created_at": {"lte": (T0 + timedelta(hours=2)).astimezone(new_york)}}, [0, 1, 2]),
    ]
    for filters, expected in cases:
        page, count = store.list_and_count(filters=filters, order="created_at", limit=10)
        assert [j.id for j in page] == [jobs[i].id for i in expected], filters
        assert count == len(expected), filters


# -- claims ----------------------------------------------------------------------


def test_claim_takes_the_oldest_runnable_jobs_of_the_given_types(store: Store) -> None:
    other, done, first, second, third = insert(
        store,
        make_job(type="other"),
        make_job(status=Status.COMPLETED),
        make_job(at=T0 + timedelta(seconds=1)),
        make_job(status=Status.CONFIRMED, at=T0 + timedelta(seconds=2)),
        make_job(status=Status.PROCESSING, at=T0 + timedelta(seconds=3)),
    )
    assert store.claim(request(types=())) == []
    assert store.claim(request(ids=())) == []
    assert store.claim(request(statuses=(Status.CONFIRMED,)))[0].job.id == second.id
    claims = store.claim(request(limit=5))
    assert [c.job.id for c in claims] == [first.id, third.id]
    claim = claims[0]
    assert claim.job == first and claim.attempts == 0 and claim.cursor == {}
    assert claim.expires_at == T0 + LEASE and claim.lease.id == first.id
    assert claims[0].lease.token != claims[1].lease.token
    assert store.claim(request(limit=5)) == []  # leased
    assert store.holder(first.id).owner == "w1"  # type: ignore[union-attr]
    assert store.claim(request(types=("other",), ids=(other.id,)))[0].job.id == other.id


def test_claims_never_lease_one_job_twice_across_connections(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    insert(stores[0], *(make_job() for _ in range(40)))
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(store: Store, owner: str) -> None:
        while True:
            claims = store.claim(request(owner=owner, limit=3))
            if not claims:
                return
            with lock:
                claimed.extend(c.job.id for c in claims)

    threads = [threading.Thread(target=drain, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 40 and len(set(claimed)) == 40


def test_an_expired_lease_is_claimed_first_and_alone(store: Store) -> None:
    dead, *free = insert(store, *(make_job(at=T0 + timedelta(seconds=i)) for i in range(5)))
    store.claim(request(owner="dead", ids=(dead.id,)))
    # Newer jobs keep coming; the dead worker's job must not wait behind them.
    (newest,) = insert(store, make_job(at=T0 + timedelta(minutes=5)))
    assert [c.job.id for c in store.claim(request(T0 + LEASE / 2, limit=2))] == [
        f.id for f in free[:2]
    ]
    later = T0 + LEASE * 1.2  # the dead worker's lease expired; the new ones have not
    claims = store.claim(request(later, limit=8))
    assert [c.job.id for c in claims] == [dead.id]
    assert claims[0].attempts == 1
    assert [c.job.id for c in store.claim(request(later, limit=8))] == [
        *(f.id for f in free[2:]),
        newest.id,
    ]
    assert all(c.attempts == 0 for c in store.claim(request(later, limit=8)))


def test_a_live_lease_blocks_claims_until_it_expires_or_is_renewed(make_store: MakeStore) -> None:
    one, two = make_store(), make_store()
    (job,) = insert(one, make_job())
    claim = claim_one(one)
    assert two.claim(request(T0 + LEASE - timedelta(seconds=1), owner="w2")) == []
    assert one.renew([claim.lease], T0 + LEASE * 2) == [job.id]
    assert two.claim(request(T0 + LEASE + timedelta(seconds=1), owner="w2")) == []
    taken = claim_one(two, T0 + LEASE * 2, owner="w2")
    assert taken.attempts == 1 and taken.lease.token != claim.lease.token
    # The first lease is gone for good: it renews, saves and releases nothing.
    assert one.renew([claim.lease], T0 + LEASE * 9) == []
    assert one.holds(claim.lease) is None and one.holds(taken.lease) == Status.CREATED
    assert one.release([claim.lease]) == 0
    assert one.save(Checkpoint(claim.lease, Status.CREATED, T0, result={"x": 1})) is None
    assert two.holder(job.id).token == taken.lease.token  # type: ignore[union-attr]


def test_holding_answers_holds_for_several_leases_at_once(make_store: MakeStore) -> None:
    one, two = make_store(), make_store()
    a, b, c = insert(one, *(make_job(at=T0 + timedelta(seconds=i)) for i in range(3)))
    ca, cb, cc = one.claim(request(limit=3))
    assert one.holding([cc.lease, ca.lease, cb.lease]) == [Status.CREATED] * 3
    one.transition(b.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=T0)
    assert one.release([cc.lease]) == 1
    taken = claim_one(two, owner="w2")
    assert taken.job.id == c.id
    # Canceled under the lease; given back (then taken by another); and one twice.
    assert two.holding([ca.lease, cb.lease, cc.lease, taken.lease, ca.lease]) == [
        Status.CREATED,
        Status.CANCELED,
        None,
        Status.CREATED,
        Status.CREATED,
    ]
    assert one.holding([]) == []


def test_a_gone_owner_s_live_lease_is_expired_at_once_and_only_its(store: Store) -> None:
    a, b, free = insert(store, *(make_job(at=T0 + timedelta(seconds=i)) for i in range(3)))
    claim_one(store, owner="dead", ids=(a.id,))
    claim_one(store, owner="alive", ids=(b.id,))
    assert sorted(store.lease_owners(T0)) == ["alive", "dead"]
    assert store.lease_owners(T0 + LEASE) == []  # expired ones are not live
    # "dead" is gone: its lease is taken first and alone (an attempt), long before it expires.
    claims = store.claim(request(T0 + timedelta(seconds=1), owner="w2", gone=("dead",), limit=5))
    assert [(c.job.id, c.attempts) for c in claims] == [(a.id, 1)]
    assert store.holder(a.id).owner == "w2"  # type: ignore[union-attr]
    # A gone owner that is not the holder takes nothing; "alive"'s lease stays.
    assert store.claim(request(T0, owner="w3", gone=("dead", "nobody"), ids=(a.id, b.id))) == []
    assert [c.job.id for c in store.claim(request(T0, owner="w3", gone=("dead",)))] == [free.id]
    assert store.holder(b.id).owner == "alive"  # type: ignore[union-attr]


def test_of_many_claimers_of_a_gone_owner_s_lease_one_wins(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    (job,) = insert(stores[0], make_job())
    claim_one(stores[0], owner="dead")
    barrier = threading.Barrier(len(stores))
    won: list[Claim] = []

    def take(store: Store, owner: str) -> None:
        barrier.wait()
        won.extend(store.claim(request(owner=owner, gone=("dead",))))

    threads = [threading.Thread(target=take, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and won[0].attempts == 1
    assert stores[1].holder(job.id).token == won[0].lease.token  # type: ignore[union-attr]


def test_a_gone_owner_s_cleanup_is_taken_at_once(store: Store) -> None:
    (job,) = insert(store, make_job(status=Status.PROCESSING, processing_at=T0))
    store.transition(job.id, from_statuses=[Status.PROCESSING], to=Status.CANCELED, now=T0)
    assert store.claim_cleanup(job.id, owner="dead", now=T0, lease_until=T0 + LEASE) is not None
    assert store.claim_cleanup(job.id, owner="w2", now=T0, lease_until=T0 + LEASE) is None
    taken = store.claim_cleanup(job.id, owner="w2", now=T0, lease_until=T0 + LEASE, gone=("dead",))
    assert taken is not None and store.holder(job.id).owner == "w2"  # type: ignore[union-attr]


def test_release_frees_a_job_at_once_and_release_all_frees_an_owners(store: Store) -> None:
    a, b, c = insert(store, *(make_job() for _ in range(3)))
    first = claim_one(store, ids=(a.id,))
    store.claim(request(owner="w9", ids=(b.id, c.id), limit=2))
    assert store.release([first.lease]) == 1
    assert store.holder(a.id) is None
    assert claim_one(store, owner="w2", ids=(a.id,)).attempts == 0  # released, not taken over
    assert store.release_all("w9") == 2
    assert store.holder(b.id) is None and store.holder(c.id) is None


# -- checkpoints -----------------------------------------------------------------


def test_a_checkpoint_is_guarded_by_status_and_token_and_merges(store: Store) -> None:
    (job,) = insert(store, make_job(result={"keep": 1}))
    claim = claim_one(store)
    later = T0 + timedelta(seconds=3)
    wrong = Lease(job.id, "not-the-token")
    assert store.save(Checkpoint(wrong, Status.CREATED, later, result={"x": 1})) is None
    assert store.save(Checkpoint(claim.lease, Status.PROCESSING, later, result={"x": 1})) is None
    saved = store.save(
        Checkpoint(
            claim.lease,
            Status.CREATED,
            later,
            steps=(
                (Status.PRE_PROCESSED, T0 + timedelta(seconds=1)),
                (Status.CONFIRMED, T0 + timedelta(seconds=2)),
                (Status.PROCESSING, later),
            ),
            result={"advancement_count": 5, 'odd "key"': [1]},
            context={"retry_count": 1},
            cursor={"last": 5},
            until=later + LEASE,
        )
    )
    assert saved is not None and store.get(job.id) == saved
    assert saved.status == Status.PROCESSING and saved.updated_at == later
    assert saved.pre_processed_at == T0 + timedelta(seconds=1)
    assert saved.confirmed_at == T0 + timedelta(seconds=2) and saved.processing_at == later
    assert saved.result == {"keep": 1, "advancement_count": 5, 'odd "key"': [1]}
    assert saved.context == {"retry_count": 1}
    assert store.holds(claim.lease) == Status.PROCESSING
    assert store.holder(job.id).expires_at == later + LEASE  # type: ignore[union-attr]
    # Released with a backoff: the cursor comes back with the next claim, after it.
    store.save(Checkpoint(claim.lease, Status.PROCESSING, later, release=True, until=later + LEASE))
    assert store.holder(job.id) is None
    assert store.claim(request(later)) == []
    again = claim_one(store, later + LEASE)
    assert again.cursor == {"last": 5} and again.attempts == 0
    assert store.get(job.id).result == saved.result  # type: ignore[union-attr]


def test_a_cancel_stops_the_next_checkpoint(store: Store) -> None:
    (job,) = insert(store, make_job())
    claim = claim_one(store)
    store.transition(job.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=T0)
    assert store.save(Checkpoint(claim.lease, Status.CREATED, T0, result={"x": 1})) is None
    assert "x" not in store.get(job.id).result  # type: ignore[union-attr]


def test_commit_saves_releases_and_claims_in_one_transaction(store: Store) -> None:
    a, b, c, d = insert(store, *(make_job(at=T0 + timedelta(seconds=i)) for i in range(4)))
    ca, cb = store.claim(request(limit=2))
    done = (Status.COMPLETED, T0)
    saved, claims = store.commit(
        [
            Checkpoint(ca.lease, Status.CREATED, T0, steps=(done,), release=True),
            Checkpoint(Lease(c.id, "stale"), Status.CREATED, T0, steps=(done,)),
        ],
        release=[cb.lease],
        claim=request(limit=2),
    )
    assert saved[0] is not None and saved[0].status == Status.COMPLETED and saved[1] is None
    assert [x.job.id for x in claims] == [b.id, c.id]  # b was given back in the same commit
    assert store.holder(a.id) is None and store.status_of(d.id) == Status.CREATED
    assert store.commit([]) == ([], [])


def test_a_failed_commit_changes_nothing(store: Store) -> None:
    a, b = insert(store, make_job(), make_job())
    ca = claim_one(store, ids=(a.id,))
    store.fail_commits(1)
    with pytest.raises(StoreError):
        store.commit(
            [
                Checkpoint(
                    ca.lease, Status.CREATED, T0, steps=((Status.COMPLETED, T0),), release=True
                )
            ],
            claim=request(),
        )
    assert store.status_of(a.id) == Status.CREATED and store.holds(ca.lease) == Status.CREATED
    assert store.holder(b.id) is None
    assert claim_one(store, ids=(b.id,)).job.id == b.id  # the next commit goes through


# -- cleanups ---------------------------------------------------------------------


def test_only_a_job_canceled_after_processing_began_owes_a_cleanup(store: Store) -> None:
    fresh, started = insert(store, make_job(), make_job(status=Status.PROCESSING, processing_at=T0))
    for job in (fresh, started):
        store.transition(job.id, from_statuses=[job.status], to=Status.CANCELED, now=T0)
    assert store.pending(["t"]) == (1, None)
    assert store.claim_cleanup(fresh.id, owner="w1", now=T0, lease_until=T0 + LEASE) is None
    assert store.claim(request(statuses=(), cleanups=False)) == []
    (claim,) = store.claim(request(limit=5))  # offered like a runnable job
    assert claim.job.id == started.id and claim.job.status == Status.CANCELED
    assert store.claim_cleanup(started.id, owner="w2", now=T0, lease_until=T0 + LEASE) is None
    assert store.finish_cleanup(claim.lease)
    assert not store.finish_cleanup(claim.lease)
    assert store.pending(["t"]) == (0, None) and store.holder(started.id) is None
    assert store.claim(request(T0 + LEASE * 2, limit=5)) == []


def test_one_of_many_takes_a_cleanup_and_a_dead_ones_is_taken_again(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    (job,) = insert(stores[0], make_job(status=Status.PROCESSING, processing_at=T0))
    stores[0].transition(job.id, from_statuses=[Status.PROCESSING], to=Status.CANCELED, now=T0)
    barrier = threading.Barrier(len(stores))
    taken: list[Claim | None] = []

    def take(store: Store, owner: str) -> None:
        barrier.wait()
        taken.append(store.claim_cleanup(job.id, owner=owner, now=T0, lease_until=T0 + LEASE))

    threads = [threading.Thread(target=take, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([c for c in taken if c is not None]) == 1
    # Its taker died: once its lease expires, the cleanup is owed still, and taken again.
    again = stores[1].claim_cleanup(job.id, owner="w9", now=T0 + LEASE, lease_until=T0 + LEASE * 2)
    assert again is not None and stores[1].finish_cleanup(again.lease)


def test_the_running_worker_takes_the_cleanup_with_its_own_lease(store: Store) -> None:
    (job,) = insert(store, make_job())  # canceled before a checkpoint recorded processing
    claim = claim_one(store)
    store.transition(job.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=T0)
    assert store.claim_cleanup(job.id, owner="w2", now=T0 + LEASE, lease_until=T0 + LEASE) is None
    other = Lease(job.id, "other")
    assert (
        store.claim_cleanup(job.id, owner="w1", now=T0, lease_until=T0, lease=other, began=True)
        is None
    )
    # Its run had not begun processing: no cleanup is owed, and none is marked.
    mine = claim.lease
    assert store.claim_cleanup(job.id, owner="w1", now=T0, lease_until=T0, lease=mine) is None
    assert store.pending(["t"]) == (0, None) and store.holds(claim.lease) == Status.CANCELED
    # It had (a chunk ran after its last commit): the worker takes the cleanup.
    cleanup = store.claim_cleanup(
        job.id, owner="w1", now=T0, lease_until=T0 + LEASE, lease=claim.lease, began=True
    )
    assert cleanup is not None and cleanup.lease == claim.lease
    assert store.finish_cleanup(cleanup.lease) and store.holder(job.id) is None


def test_a_job_whose_processing_was_committed_owes_its_worker_the_cleanup(store: Store) -> None:
    (job,) = insert(store, make_job(status=Status.PROCESSING, processing_at=T0))
    claim = claim_one(store)
    store.transition(job.id, from_statuses=[Status.PROCESSING], to=Status.CANCELED, now=T0)
    cleanup = store.claim_cleanup(
        job.id, owner="w1", now=T0, lease_until=T0 + LEASE, lease=claim.lease
    )
    assert cleanup is not None and cleanup.lease == claim.lease
    assert store.finish_cleanup(cleanup.lease) and store.pending(["t"]) == (0, None)


def test_pending_counts_active_jobs_and_the_earliest_free_one(store: Store) -> None:
    assert store.pending(["t"]) == (0, None) and store.pending([]) == (0, None)
    a, b = insert(store, make_job(), make_job(status=Status.CONFIRMED))
    insert(store, make_job(status=Status.COMPLETED), make_job(type="other"))
    assert store.pending(["t"]) == (2, None)
    store.claim(request(limit=2))
    assert store.pending(["t"]) == (2, T0 + LEASE)


# -- failures ---------------------------------------------------------------------


def test_a_read_only_database_refuses_writes_and_serves_reads(store: Store) -> None:
    (job,) = insert(store, make_job())
    store.set_read_only(True)
    with pytest.raises(StoreReadOnlyError, match="read-only"):
        store.insert(make_job())
    with pytest.raises(StoreReadOnlyError):
        store.claim(request())
    assert store.get(job.id) == job and store.list_and_count()[1] == 1
    store.set_read_only(False)
    assert claim_one(store).job.id == job.id


def test_a_held_lock_is_a_locked_error_after_the_wait(store: Store) -> None:
    (job,) = insert(store, make_job())
    with store.lock_held(timeout=0.05), pytest.raises(StoreLockedError, match="locked"):
        store.transition(job.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=T0)
    assert store.status_of(job.id) == Status.CREATED
    assert store.transition(job.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=T0)


def test_a_closed_store_says_so(make_store: MakeStore) -> None:
    store = make_store()
    store.close()
    store.close()
    with pytest.raises(StoreClosedError, match="closed"):
        store.get("batch_x")


# -- schedules -------------------------------------------------------------------


def make_schedule(name: str = "s", type: str = "t", **fields: Any) -> Schedule:
    defaults: dict[str, Any] = {"cron": "0 * * * *", "next_fire_at": T0, "created_at": T0}
    return Schedule(name=name, type=type, **{**defaults, "updated_at": T0, **fields})


def test_a_schedule_round_trips_and_its_name_is_taken_once(store: Store) -> None:
    schedule = make_schedule(
        context={"k": [1, "ü"]},
        every=timedelta(seconds=1.5),
        cron=None,
        timezone="Europe/Paris",
        dry_run=True,
        created_by="usr_1",
        misfire="all",
        paused_at=T0 + timedelta(microseconds=1),
    )
    stored = store.save_schedule(schedule, expect_revision=None)
    assert stored == schedule.replace(revision=1)
    assert store.get_schedule("s") == stored and store.list_schedules() == [stored]
    assert store.save_schedule(make_schedule(type="other"), expect_revision=None) is None
    assert store.get_schedule("s") == stored  # the name was taken: nothing written
    assert store.get_schedule("nope") is None


def test_a_schedule_changes_only_from_the_revision_it_was_read_at(store: Store) -> None:
    first = store.save_schedule(make_schedule(), expect_revision=None)
    assert first is not None
    changed = store.save_schedule(first.replace(misfire="all"), expect_revision=first.revision)
    assert changed is not None and changed.revision == 2
    stale = store.save_schedule(first.replace(misfire="skip"), expect_revision=first.revision)
    assert stale is None and store.get_schedule("s") == changed
    assert store.save_schedule(make_schedule("gone"), expect_revision=1) is None
    assert [s.name for s in store.list_schedules()] == ["s"]


def test_due_schedules_are_unpaused_past_due_and_of_the_given_types(store: Store) -> None:
    for schedule in (
        make_schedule("due", next_fire_at=T0 - timedelta(seconds=2)),
        make_schedule("earlier", next_fire_at=T0 - timedelta(seconds=5)),
        make_schedule("later", next_fire_at=T0 + timedelta(seconds=1)),
        make_schedule("paused", paused_at=T0),
        make_schedule("other", type="u"),
        make_schedule("never", next_fire_at=None),
    ):
        store.save_schedule(schedule, expect_revision=None)
    assert [s.name for s in store.due_schedules(T0, ["t"])] == ["earlier", "due"]
    assert [s.name for s in store.due_schedules(T0, ["t", "u"])] == ["earlier", "due", "other"]
    assert store.due_schedules(T0, []) == []


def test_a_fire_is_claimed_once_with_its_jobs_in_one_transaction(store: Store) -> None:
    read = store.save_schedule(make_schedule(), expect_revision=None)
    assert read is not None
    following = T0 + timedelta(hours=1)
    jobs = [make_job(), make_job()]
    fired = store.fire_schedule(read, next_fire_at=following, jobs=jobs, fired_at=T0, now=T0)
    assert fired is not None and store.get_schedule("s") == fired
    assert (fired.next_fire_at, fired.last_fired_at, fired.last_job_id) == (
        following,
        T0,
        jobs[-1].id,
    )
    assert [store.get(job.id) for job in jobs] == jobs
    again = store.fire_schedule(
        read, next_fire_at=following, jobs=[make_job()], fired_at=T0, now=T0
    )
    assert again is None  # the same fire, read before the first claim: nothing written
    assert store.count() == 2
    refused = store.fire_schedule(
        fired, next_fire_at=None, jobs=[], fired_at=None, now=T0, error="no"
    )
    assert refused is not None and refused.last_error == "no"
    assert (refused.last_job_id, refused.last_fired_at) == (jobs[-1].id, T0)  # kept


def test_threads_firing_one_schedule_make_its_jobs_once(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    read = stores[0].save_schedule(make_schedule(), expect_revision=None)
    assert read is not None
    start = threading.Barrier(len(stores))
    won: list[Schedule | None] = []

    def fire(store: Store) -> None:
        start.wait()
        won.append(
            store.fire_schedule(
                read, next_fire_at=T0 + LEASE, jobs=[make_job()], fired_at=T0, now=T0
            )
        )

    threads = [threading.Thread(target=fire, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([w for w in won if w is not None]) == 1
    assert stores[0].count() == 1


def test_a_paused_schedule_cannot_be_fired(store: Store) -> None:
    read = store.save_schedule(make_schedule(paused_at=T0), expect_revision=None)
    assert read is not None
    fired = store.fire_schedule(read, next_fire_at=None, jobs=[make_job()], fired_at=T0, now=T0)
    assert fired is None and store.count() == 0


def test_a_fire_whose_job_cannot_be_written_claims_nothing(store: Store) -> None:
    read = store.save_schedule(make_schedule(), expect_revision=None)
    assert read is not None
    (existing,) = insert(store, make_job())
    with pytest.raises(StoreError):
        store.fire_schedule(
            read, next_fire_at=None, jobs=[make_job(), existing], fired_at=T0, now=T0
        )
    assert store.get_schedule("s") == read  # rolled back with the jobs
    assert store.count() == 1


def test_deleting_a_schedule_returns_it_once(store: Store) -> None:
    stored = store.save_schedule(make_schedule(), expect_revision=None)
    assert store.delete_schedule("s") == stored
    assert store.delete_schedule("s") is None and store.list_schedules() == []


def test_a_checkpoint_without_until_leaves_the_lease_as_it_is(store: Store) -> None:
    (job,) = insert(store, make_job())
    claim = claim_one(store)
    later = T0 + timedelta(seconds=5)
    saved = store.save(Checkpoint(claim.lease, Status.CREATED, later, result={"x": 1}))
    assert saved is not None and saved.result == {"x": 1}
    assert store.holder(job.id).expires_at == T0 + LEASE  # type: ignore[union-attr]


# -- events (the outbox) -------------------------------------------------------------


def _names(events: list[Any]) -> list[tuple[int, str, str]]:
    return [(e.seq, e.event, e.job.status.value) for e in events]


def test_every_write_writes_its_events_in_its_transaction_numbered_in_order(
    store: Store,
) -> None:
    handed: list[Any] = []
    store.on_events = handed.extend
    store.origin = "host:1:ab"
    (job,) = insert(store, make_job(created_by="usr_1"))
    claim = claim_one(store)
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    steps = ((Status.PRE_PROCESSED, t1), (Status.CONFIRMED, t1), (Status.PROCESSING, t1))
    store.save(Checkpoint(claim.lease, Status.CREATED, t1, steps=steps, result={"n": 1}))
    store.save(Checkpoint(claim.lease, Status.PROCESSING, t2))  # nothing changed: no event
    store.save(
        Checkpoint(
            claim.lease,
            Status.PROCESSING,
            t2,
            steps=((Status.COMPLETED, t2),),
            result={"n": 2},
            release=True,
        )
    )
    store.merge(job.id, now=t2, result={"note": "x"})
    events = store.events(after=0)
    assert _names(events) == [
        (1, "batch.created", "created"),
        (2, "batch.pre_processed", "pre_processed"),
        (3, "batch.confirmed", "confirmed"),
        (4, "batch.processing", "processing"),
        (5, "batch.updated", "processing"),
        (6, "batch.updated", "processing"),  # before the final step's event
        (7, "batch.completed", "completed"),
        (8, "batch.updated", "completed"),
    ]
    assert handed == events and store.last_seq() == 8
    # Each event carries the job as of its step, its result as committed.
    assert events[1].job.pre_processed_at == t1 and events[1].job.confirmed_at is None
    assert events[4].job.result == {"n": 1} and events[6].job.result == {"n": 2}
    assert events[6].at == t2 and events[6].job.completed_at == t2
    assert events[0].job == job and events[0].at == T0
    assert events[7].job == store.get(job.id)
    assert {e.origin for e in events} == {"host:1:ab"}
    assert _names(store.events(after=6, limit=1)) == [(7, "batch.completed", "completed")]


def test_a_progress_checkpoint_writes_one_event_with_the_job_as_saved(store: Store) -> None:
    handed: list[Any] = []
    store.on_events = handed.extend
    (job,) = insert(store, make_job())
    claim = claim_one(store)
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    progress = Checkpoint(claim.lease, Status.CREATED, t1, result={"n": 1}, cursor={"at": 1})
    saved = store.save(progress)
    assert saved is not None and saved.result == {"n": 1}
    # A guard that fails writes neither the job nor an event, and leaves no hole.
    stolen = Checkpoint(Lease(job.id, "stolen"), Status.CREATED, t2, result={"n": 9})
    assert store.save(stolen) is None
    store.fail_commits(1)
    with pytest.raises(StoreError):
        store.save(Checkpoint(claim.lease, Status.CREATED, t2, result={"n": 8}))
    again = store.save(Checkpoint(claim.lease, Status.CREATED, t2, context={"k": 2}))
    assert again is not None and again.context["k"] == 2
    events = store.events(after=1)
    assert _names(events) == [(2, "batch.updated", "created"), (3, "batch.updated", "created")]
    assert events[0].job == saved and events[0].at == t1
    assert events[1].job == again == store.get(job.id) and events[1].at == t2
    assert [e.seq for e in handed] == [1, 2, 3] and handed[1:] == events
    assert store.last_seq() == 3


def test_a_write_that_fails_or_rolls_back_writes_no_event(store: Store) -> None:
    handed: list[Any] = []
    store.on_events = handed.extend
    (job,) = insert(store, make_job())
    assert (
        store.transition(job.id, from_statuses=[Status.FAILED], to=Status.CREATED, now=T0) is None
    )
    store.fail_commits(1)
    with pytest.raises(StoreError):
        store.transition(job.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=T0)
    claim = claim_one(store)
    assert (
        store.save(Checkpoint(Lease(job.id, "stolen"), Status.CREATED, T0, result={"x": 1})) is None
    )
    store.fail_commits(1)
    with pytest.raises(StoreError):
        store.commit([Checkpoint(claim.lease, Status.CREATED, T0, result={"x": 1})])
    assert _names(store.events()) == [(1, "batch.created", "created")]
    assert [e.seq for e in handed] == [1]
    moved = store.transition(job.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=T0)
    assert moved is not None
    assert _names(store.events(after=1)) == [(2, "batch.canceled", "canceled")]  # no hole


def test_events_filter_by_job_and_creator_and_go_with_their_deleted_jobs(store: Store) -> None:
    mine, theirs = insert(store, make_job(created_by="usr_1"), make_job(created_by="usr_2"))
    store.merge(mine.id, now=T0, result={"a": 1})
    assert [e.job.id for e in store.events(created_by="usr_1")] == [mine.id, mine.id]
    assert [e.seq for e in store.events(job_id=theirs.id)] == [2]
    assert store.events(after=1, job_id=mine.id)[0].seq == 3
    store.delete([mine.id])
    assert [e.job.id for e in store.events()] == [theirs.id]
    assert store.last_seq() == 3  # a seq is never given again
    insert(store, make_job())
    assert store.events(after=3)[0].seq == 4


def test_a_commits_events_are_handed_over_together_in_seq_order(
    store: Store,
) -> None:
    handed: list[Any] = []
    store.on_events = handed.append
    (job,) = insert(store, make_job())
    claim = claim_one(store)
    steps = ((Status.PRE_PROCESSED, T0), (Status.CONFIRMED, T0))
    store.save(Checkpoint(claim.lease, Status.CREATED, T0, steps=steps, result={"n": 1}))
    created, saved = handed
    assert (len(created), len(saved)) == (1, 3)
    assert saved == store.events(after=1)
    assert [e.seq for e in saved] == [2, 3, 4] and saved[-1].job == store.get(job.id)
    assert created == store.events(job_id=job.id)[:1]


def test_seqs_go_on_after_every_event_is_pruned_or_deleted(store: Store) -> None:
    old = T0 - timedelta(days=30)
    first, second = insert(store, make_job(at=old), make_job(at=old))
    assert store.prune_events(before=T0, limit=10) == 2  # the outbox is empty
    assert store.events() == [] and store.last_seq() == 2
    (third,) = insert(store, make_job())
    assert [e.seq for e in store.events()] == [3]
    store.delete([first.id, second.id, third.id])  # the newest row goes too
    assert store.events() == [] and store.last_seq() == 3
    insert(store, make_job())
    assert [e.seq for e in store.events()] == [4]


def test_pruned_events_are_refused_with_the_oldest_kept_never_skipped(store: Store) -> None:
    old, new = T0, T0 + timedelta(days=8)
    insert(store, *(make_job(at=old) for _ in range(3)), make_job(at=new), make_job(at=old))
    assert store.prune_events(before=T0 + timedelta(days=7), limit=2) == 2
    assert store.prune_events(before=T0 + timedelta(days=7), limit=10) == 1  # stops at seq 4
    assert [e.seq for e in store.events()] == [4, 5]  # the late old one stays: only a prefix goes
    assert [e.seq for e in store.events(after=3)] == [4, 5]
    with pytest.raises(EventsPrunedError) as pruned:
        store.events(after=2)
    assert (pruned.value.after, pruned.value.oldest) == (2, 4)
    assert "seq 4" in pruned.value.message
    assert store.prune_events(before=T0, limit=10) == 0


# -- events: several in one row (one job's in one commit) ----------------------------

RUN = (  # a one-chunk job's run, as one checkpoint: four steps and its result
    (Status.PRE_PROCESSED, T0 + timedelta(seconds=1)),
    (Status.CONFIRMED, T0 + timedelta(seconds=2)),
    (Status.PROCESSING, T0 + timedelta(seconds=3)),
    (Status.COMPLETED, T0 + timedelta(seconds=4)),
)
RUN_EVENTS = [
    "batch.pre_processed",
    "batch.confirmed",
    "batch.processing",
    "batch.updated",
    "batch.completed",
]


def _run(claim: Claim, *, at: datetime = T0) -> Checkpoint:
    steps = tuple((status, when - T0 + at) for status, when in RUN)
    return Checkpoint(
        claim.lease,
        Status.CREATED,
        at + timedelta(seconds=5),
        steps=steps,
        result={"count": 1, "advancement_count": 1},
        release=True,
    )


def test_a_run_s_events_read_back_one_by_one_from_any_seq_with_any_limit(store: Store) -> None:
    handed: list[Any] = []
    store.on_events = handed.extend
    (job,) = insert(store, make_job(created_by="usr_1"))
    final = store.save(_run(claim_one(store)))
    events = store.events(after=0)
    assert [e.event for e in events] == ["batch.created", *RUN_EVENTS]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6] and store.last_seq() == 6
    assert handed == events
    # Each event has the job as of it: its status, and only the timestamps set so far.
    assert [e.job.status for e in events] == [
        Status.CREATED,
        Status.PRE_PROCESSED,
        Status.CONFIRMED,
        Status.PROCESSING,
        Status.PROCESSING,
        Status.COMPLETED,
    ]
    assert events[2].job.pre_processed_at == RUN[0][1] and events[2].job.confirmed_at == RUN[1][1]
    assert events[2].job.processing_at is None and events[4].job.completed_at is None
    assert events[5].job == final == store.get(job.id)
    assert {e.job.result["count"] for e in events[1:]} == {1}  # the result as committed
    assert [e.at for e in events[1:]] == [
        *(at for _, at in RUN[:3]),
        T0 + timedelta(seconds=5),
        RUN[3][1],
    ]
    for after in range(7):  # after= inside the row: its earlier events are left out
        assert store.events(after=after) == events[after:]
    for limit in range(1, 7):  # a limit may end a page inside the row
        assert store.events(after=1, limit=limit) == events[1 : 1 + limit]
    assert store.events(after=3, limit=2) == events[3:5]
    pages, seen = [], 0
    while page := store.events(after=seen, limit=2):
        pages.append([e.seq for e in page])
        seen = page[-1].seq
    assert pages == [[1, 2], [3, 4], [5, 6]]


def test_filters_read_whole_and_partial_rows_of_their_jobs_only(store: Store) -> None:
    mine, theirs = insert(store, make_job(created_by="usr_1"), make_job(created_by="usr_2"))
    c1, c2 = store.claim(request(limit=2))
    store.commit([_run(c1), _run(c2)])  # seqs 3-7 mine, 8-12 theirs
    assert [e.seq for e in store.events(job_id=mine.id)] == [1, 3, 4, 5, 6, 7]
    assert [e.seq for e in store.events(created_by="usr_2", after=9)] == [10, 11, 12]
    assert [e.event for e in store.events(job_id=theirs.id, after=8, limit=2)] == RUN_EVENTS[1:3]
    assert store.events(created_by="usr_1", after=7) == []
    assert {e.job.id for e in store.events(created_by="usr_2", after=2)} == {theirs.id}


def test_a_batch_commit_numbers_its_jobs_events_one_after_another(store: Store) -> None:
    handed: list[Any] = []
    store.on_events = handed.extend
    jobs = insert(store, *(make_job(at=T0 + timedelta(seconds=i)) for i in range(3)))
    claims = store.claim(request(limit=3))
    saved, _ = store.commit([_run(claim) for claim in claims])
    events = store.events(after=3)
    assert [e.seq for e in events] == list(range(4, 19)) and store.last_seq() == 18
    assert [e.job.id for e in events] == [job.id for job in jobs for _ in RUN_EVENTS]
    assert [e.event for e in events] == RUN_EVENTS * 3
    assert [events[i].job for i in (4, 9, 14)] == saved
    assert handed[3:] == events


def test_two_writes_of_one_job_in_one_commit_read_back_as_they_were(store: Store) -> None:
    (job,) = insert(store, make_job())
    claim = claim_one(store)
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    first = Checkpoint(
        claim.lease, Status.CREATED, t1, steps=((Status.PRE_PROCESSED, t1),), result={"count": 2}
    )
    second = Checkpoint(
        claim.lease,
        Status.PRE_PROCESSED,
        t2,
        steps=((Status.CONFIRMED, t2),),
        result={"advancement_count": 1},
        context={"k": 1},
    )
    (one, two), _ = store.commit([first, second])
    events = store.events(after=1)
    assert [(e.seq, e.event) for e in events] == [
        (2, "batch.pre_processed"),
        (3, "batch.updated"),
        (4, "batch.confirmed"),
        (5, "batch.updated"),
    ]
    assert events[1].job == one and events[3].job == two == store.get(job.id)
    assert events[0].job.result == {"count": 2} and events[0].job.context == {}
    assert store.events(after=2, limit=1)[0].job == one


def test_pruning_takes_whole_rows_and_names_the_oldest_event_kept(store: Store) -> None:
    old = T0 - timedelta(days=30)
    a, b = insert(store, make_job(at=old), make_job(at=old + timedelta(seconds=1)))
    ca, cb = store.claim(request(old + timedelta(seconds=2), limit=2))
    store.save(_run(ca, at=old))  # seqs 3-7, its last event at old + 5 s
    store.save(_run(cb, at=T0))  # seqs 8-12: recent
    week = T0 - timedelta(days=7)
    assert store.prune_events(before=week, limit=2) == 2  # two one-event rows
    assert store.prune_events(before=week, limit=1) == 5  # one row, whole
    assert store.prune_events(before=week, limit=10) == 0  # the next row is recent
    with pytest.raises(EventsPrunedError) as pruned:
        store.events(after=4)
    assert (pruned.value.after, pruned.value.oldest) == (4, 8)
    assert [e.seq for e in store.events()] == list(range(8, 13))
    assert store.events(after=7)[0].job.id == b.id and store.last_seq() == 12
    store.delete([b.id])  # a job's rows go with it; its seqs are never given again
    assert store.events() == [] and store.last_seq() == 12
    insert(store, make_job())
    assert [e.seq for e in store.events(after=12)] == [13]
    assert a.id not in {e.job.id for e in store.events()}


def test_concurrent_writers_commit_seqs_in_order_without_gaps(make_store: MakeStore) -> None:
    writers, jobs_each = 4, 8
    stores = [make_store() for _ in range(writers)]
    reader = make_store()
    done = threading.Event()
    seen: list[int] = []
    broken: list[str] = []

    def write(store: Store) -> None:
        for job in insert(store, *(make_job(type="c") for _ in range(jobs_each))):
            claim = claim_one(store, ids=(job.id,), types=("c",), owner=job.id)
            store.save(_run(claim))

    def read() -> None:
        # A reader that has seen seq n never later finds an event at or below it:
        # every page continues exactly where the last one ended.
        while not done.is_set() or seen[-1:] != [reader.last_seq()]:
            page = reader.events(after=seen[-1] if seen else 0)
            expected = list(range(len(seen) + 1, len(seen) + 1 + len(page)))
            if [e.seq for e in page] != expected:
                broken.append(f"after {len(seen)}: {[e.seq for e in page]}")
                return
            seen.extend(e.seq for e in page)

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    follower = threading.Thread(target=read)
    follower.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    follower.join(timeout=60)
    assert not broken and not follower.is_alive()
    total = writers * jobs_each * (1 + len(RUN_EVENTS))
    assert seen == list(range(1, total + 1))
    events = reader.events(limit=total)
    for job_id in {e.job.id for e in events}:
        assert [e.event for e in events if e.job.id == job_id] == ["batch.created", *RUN_EVENTS]


@pytest.mark.parametrize(
    ("after", "limit", "message"),
    [
        (-1, 10, "after must be a non-negative integer"),
        (99, 10, "beyond the last event"),
        ("1", 10, "after must be a non-negative integer"),
        (0, -5, "limit must be a non-negative integer"),
    ],
)
def test_a_bad_position_is_refused(store: Store, after: Any, limit: Any, message: str) -> None:
    insert(store, make_job())
    with pytest.raises(InvalidDataError, match=message):
        store.events(after=after, limit=limit)


def test_a_cursor_is_leased_to_one_owner_and_moved_only_by_it(store: Store) -> None:
    insert(store, make_job(), make_job())
    later = T0 + LEASE
    assert store.take_cursor("c", owner="a", now=T0, until=later, start=1) == (1, True)
    assert store.take_cursor("c", owner="b", now=T0, until=later, start=0) == (1, False)
    assert not store.move_cursor("c", owner="b", seq=2)
    assert store.move_cursor("c", owner="a", seq=2, until=later)  # kept
    assert store.take_cursor("c", owner="b", now=T0, until=later, start=0) == (2, False)
    assert store.take_cursor("c", owner="b", now=later, until=later + LEASE, start=0) == (2, True)
    assert store.move_cursor("c", owner="b", seq=2)  # released
    assert store.take_cursor("c", owner="a", now=T0, until=later, start=0) == (2, True)
