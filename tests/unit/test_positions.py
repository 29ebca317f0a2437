"""The position tracker's rules: what the source may be told is flushed, and when (no server needed: the tracker
is told what was read and committed, and the destination's flush position is a number)."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.incremental.positions import DurableFeedback, Feedback, PositionTracker


def test_nothing_is_reported_flushed_before_the_destination_flushed_its_commit():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.receive(150)
    tracker.begin()
    tracker.end(200, skipped=False, changes_waiting=True)
    assert tracker.feedback() == Feedback(200, 100)  # read, not handed to the writer
    tracker.handed()
    tracker.committed(200, destination_lsn=5000)  # committed, its WAL not flushed yet
    assert tracker.feedback() == Feedback(200, 100)
    assert tracker.feedback(destination_flushed=4999) == Feedback(200, 100)
    assert tracker.needs_flush_lsn
    assert tracker.feedback(destination_flushed=5000) == Feedback(200, 200)
    assert not tracker.needs_flush_lsn


def test_commits_become_durable_in_order_and_never_move_back():
    durable = DurableFeedback(10)
    durable.committed(20, 100)
    durable.committed(30, 200)
    assert durable.flushed(150) == 20
    assert not durable.settled
    assert durable.flushed(120) == 20
    assert durable.flushed(200) == 30 and durable.settled


def test_a_recorded_position_past_the_slot_is_durable_only_once_registered_and_flushed():
    tracker = PositionTracker(applied=300, confirmed=200, recorded_at=70)
    tracker.keepalive(400)
    assert not tracker.idle and tracker.feedback() == Feedback(300, 200)
    assert tracker.feedback(destination_flushed=69).flushed == 200
    assert tracker.feedback(destination_flushed=70).flushed == 400  # durable, and nothing for us up to 400


def test_skipped_and_filtered_transactions_advance_the_reported_position_when_idle():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.begin()
    tracker.end(150, skipped=True, changes_waiting=False)  # already in the destination (re-sent after a restart)
    assert tracker.idle and tracker.feedback() == Feedback(150, 150)
    tracker.begin()
    tracker.end(180, skipped=False, changes_waiting=False)  # other tables only: a progress row is still owed
    assert not tracker.idle and tracker.feedback().flushed == 150  # reported once, never taken back
    assert tracker.accounted == 180
    tracker.handed()
    tracker.committed(180, destination_lsn=10)
    assert tracker.feedback(destination_flushed=10) == Feedback(180, 180)


def test_an_open_transaction_holds_the_reported_position_back():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.begin()
    tracker.receive(400)
    tracker.keepalive(500)
    assert tracker.position == 100 and tracker.feedback() == Feedback(400, 100)
    assert not tracker.caught_up_with(100)


def test_a_streamed_transaction_holds_the_position_until_it_commits():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.stream_started()
    tracker.streamed_read(7)
    tracker.receive(300)
    tracker.stream_stopped()
    tracker.keepalive(400)  # between stream blocks: its changes are still unapplied
    assert tracker.position == 100 and not tracker.idle and tracker.feedback() == Feedback(300, 100)
    assert not tracker.caught_up_with(100)
    tracker.streamed_done(7)  # its StreamCommit: read like any transaction from here
    tracker.begin()
    tracker.end(450, skipped=False, changes_waiting=True)
    assert tracker.feedback().flushed == 100
    tracker.handed()
    tracker.committed(450, destination_lsn=9)
    assert tracker.feedback(destination_flushed=9) == Feedback(450, 450)


def test_an_aborted_streamed_transaction_releases_the_position():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.stream_started()
    tracker.streamed_read(7)
    tracker.receive(300)
    tracker.stream_stopped()
    tracker.streamed_done(7)  # StreamAbort of the top transaction: nothing of it is ever applied
    tracker.keepalive(400)
    assert tracker.idle and tracker.feedback() == Feedback(300, 400)
    assert tracker.caught_up_with(400)


def test_inside_a_stream_block_a_keepalive_accounts_for_nothing():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.stream_started()
    tracker.keepalive(400)
    assert tracker.position == 100 and not tracker.idle


def test_an_idle_keepalive_lets_the_received_position_be_reported():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.receive(120)
    tracker.keepalive(500)  # reply requested, nothing pending
    assert tracker.idle and tracker.caught_up_with(500)
    assert tracker.feedback() == Feedback(120, 500)
    assert tracker.last == Feedback(120, 500)  # what a keep-alive during a long wait repeats


def test_a_keepalive_while_changes_wait_for_the_writer_accounts_for_nothing():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.begin()
    tracker.end(200, skipped=False, changes_waiting=True)
    tracker.keepalive(500)
    assert tracker.position == 200 and not tracker.caught_up_with(200)
    tracker.handed()
    tracker.keepalive(500)
    assert tracker.position == 500 and tracker.caught_up_with(500)
    assert tracker.feedback().flushed == 100  # handed, not committed: still not idle
    tracker.committed(200, destination_lsn=1)
    assert tracker.feedback(destination_flushed=0).flushed == 100  # committed, not durable
    assert tracker.feedback(destination_flushed=1).flushed == 500


def test_what_the_caps_left_unapplied_is_neither_accounted_nor_reported():
    tracker = PositionTracker(applied=100, confirmed=100)
    tracker.begin()
    tracker.end(200, skipped=False, changes_waiting=True)
    tracker.discard_unapplied()
    assert tracker.accounted == 100 and tracker.idle
    assert tracker.feedback() == Feedback(200, 100)


def test_a_recorded_position_past_the_slot_needs_the_destination_position():
    with pytest.raises(ValueError):
        PositionTracker(applied=300, confirmed=200)
