"""Small versions of the fault-injection runs of `make reliability` (tests/faults.py):
real `id3pm` processes killed with SIGKILL, then rerun to the end."""

import pytest
from faults import mount_error, prepare_disk_full, prepare_kills, train_disk_full, train_kills, worker_kills
from remote_faults import FAULTS, remote_encoder_faults, remote_encoder_retries


def test_prepare_killed_three_times_ends_with_exactly_the_rows_of_an_uninterrupted_run(tmp_path):
    row = prepare_kills(tmp_path, kills=3, n_images=15, seed=1)
    assert row.lost == 0 and row.survived == 3, row


def test_train_killed_three_times_resumes_to_bit_identical_weights(tmp_path):
    row = train_kills(tmp_path, kills=3, steps=12, seed=2)
    assert row.lost == 0 and row.survived == 3, row


def test_a_killed_model_worker_fails_its_requests_at_once_and_is_replaced(tmp_path):
    row = worker_kills(tmp_path, kills=4, clients=3, seed=3)
    assert row.lost == 0 and row.survived == 4, row
    assert "503" in row.note, row


def test_a_full_disk_stops_prepare_and_train_in_one_line_and_a_rerun_with_space_loses_nothing(tmp_path):
    reason = mount_error(tmp_path)
    if reason:  # reported by `make test` (pytest -rs); `make reliability` prints the same reason
        pytest.skip(reason)
    rows = [prepare_disk_full(tmp_path / "prepare", [0.3, 0.7], n_images=12), train_disk_full(tmp_path / "train", [0.5])]
    assert all(r.lost == 0 and r.survived == r.tried >= 1 for r in rows), rows


def test_every_fault_of_a_remote_black_box_fails_only_its_image_with_a_line_that_says_why():
    row = remote_encoder_faults(cases=30, seed=3)
    assert row.lost == 0 and row.survived == 30, row
    assert all(fault in row.note for fault in FAULTS), row  # 30 draws of 10 kinds with this seed: all of them


def test_a_remote_black_box_that_fails_then_answers_delivers_every_vector():
    row = remote_encoder_retries(cases=5)
    assert row.lost == 0 and row.survived == 5, row
