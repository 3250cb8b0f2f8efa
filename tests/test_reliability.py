"""Small versions of the fault-injection runs of `make reliability` (tests/faults.py):
real `id3pm` processes killed with SIGKILL, then rerun to the end."""

from faults import prepare_kills, train_kills


def test_prepare_killed_three_times_ends_with_exactly_the_rows_of_an_uninterrupted_run(tmp_path):
    row = prepare_kills(tmp_path, kills=3, n_images=15, seed=1)
    assert row.lost == 0 and row.survived == 3, row


def test_train_killed_three_times_resumes_to_bit_identical_weights(tmp_path):
    row = train_kills(tmp_path, kills=3, steps=12, seed=2)
    assert row.lost == 0 and row.survived == 3, row
