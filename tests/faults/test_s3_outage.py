"""The S3 endpoint going away in the middle of a write and coming back (tests/s3gate.py: a real HTTP hop in
front of the moto server, cut after a chosen number of requests): a ledger commit cut at each of its
requests is whole or absent once the endpoint is back, and committing again ends in the one ledger an
uninterrupted commit writes. The cut either drops a request unapplied or applies it and drops the answer;
both are tried at every write, as an outage that lasts and as a blip the client retries through.
"""
from __future__ import annotations

import uuid

import pytest

from ray_al.run.ledger import Ledger
from tests.s3gate import S3Gate, gate  # noqa: F401  (gate: a fixture)


def first_version(s3_server) -> tuple[str, Ledger]:
    run = s3_server.uri(f"outage-{uuid.uuid4().hex[:8]}")
    return run, Ledger.empty("int64").add([1, 2], [0, 1], 0, "initial", num_classes=2).commit(run)


def second_batch(ledger: Ledger) -> Ledger:
    return ledger.add([3, 4], [1, 0], 1, "query", num_classes=2)


def writes_of_a_commit(gate: S3Gate, s3_server) -> list[int]:
    """The indices of the write requests among an uncut commit's requests (a cut before a read only stops
    the commit before it writes)."""
    run, v1 = first_version(s3_server)
    before = gate.forwarded
    second_batch(v1).commit(run)
    writes = [i for i, m in enumerate(gate.methods[before:]) if m in ("PUT", "POST")]
    # None would make every test below pass on zero cases (requests that bypass the gate, say).
    assert writes, f"the gate at {gate.endpoint} saw no write of a commit: {gate.methods[before:]}"
    return writes


def check_whole(run: str, cut: int) -> None:
    final = Ledger.load(run)
    assert (final.version, final.ids.tolist(), final.labels.tolist()) == (2, [1, 2, 3, 4], [0, 1, 1, 0]), cut


# The two ways a cut meets a write: it lands and its answer is lost, or it is dropped before it lands.
CUTS = pytest.mark.parametrize("applied", [True, False], ids=["write-applied-answer-lost", "write-dropped"])


@CUTS
def test_an_outage_at_any_write_of_a_commit_leaves_it_whole_or_absent_and_it_can_be_redone(
        gate, s3_server, applied):
    """The endpoint goes away at a write (applied with its answer lost, or dropped unapplied) and stays
    away: the commit fails naming the endpoint; once it is back, the ledger is the old one or the new one,
    never a mix."""
    for cut in writes_of_a_commit(gate, s3_server):
        run, v1 = first_version(s3_server)
        gate.cut_after(cut, last_applied=applied)
        with pytest.raises(ConnectionError) as failed:
            second_batch(v1).commit(run)
        assert gate.down, f"cut after {cut} requests: the commit did not reach the cut"
        assert gate.endpoint in str(failed.value), failed.value
        gate.restore()
        back = Ledger.load(run)
        assert back.version in (1, 2), cut
        if back.version == 1:  # absent: nothing of the cut commit is read, and it can be made again
            assert back.ids.tolist() == [1, 2]
            second_batch(back).commit(run)
        check_whole(run, cut)


@CUTS
def test_a_blip_at_any_write_of_a_commit_is_retried_into_one_whole_commit(gate, s3_server, applied):
    """A write's connection drops once and the endpoint answers the retry. Applied with its answer lost:
    the retried commit marker finds itself already there (S3 answers 412), which is this writer's commit,
    not another's. Dropped before it lands: the retry is the first write."""
    for cut in writes_of_a_commit(gate, s3_server):
        run, v1 = first_version(s3_server)
        gate.cut_after(cut, last_applied=applied, once=True)
        second_batch(v1).commit(run)
        assert not gate.down
        check_whole(run, cut)
