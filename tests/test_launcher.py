"""scripts/cpu_reference_run.sh, the launcher of the reference model's CPU run: the flags
it hands to `id3pm train` on a fresh machine, on a resume, and with a cool-down."""

import datetime
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _launch(tmp_path, run: Path, shipped: Path, cooldown: str | None, minutes: int = 90, **extra_env) -> list[str]:
    args_file = tmp_path / "args.txt"
    fake = tmp_path / "python"  # records the command line instead of training
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {args_file}\nsleep 1\n')  # alive for the autogroup
    fake.chmod(0o755)
    until = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)).strftime("%H:%M")
    env = {**os.environ, "PY": str(fake), "RUN": str(run), "SHIPPED": str(shipped), "DATA": str(tmp_path / "data")}
    if cooldown is not None:
        env["COOLDOWN"] = cooldown
    env.update(extra_env)
    subprocess.run(["bash", str(ROOT / "scripts" / "cpu_reference_run.sh"), until], env=env, check=True,
                   capture_output=True, text=True)
    for _ in range(100):  # the launcher starts it in the background
        if args_file.exists() and args_file.read_text():
            break
        time.sleep(0.05)
    args = args_file.read_text().split("\n")
    args_file.unlink()
    return args


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.skipif(os.name != "posix", reason="a bash script")
def test_the_launcher_warm_starts_a_fresh_machine_resumes_otherwise_and_passes_the_cool_down(tmp_path):
    run, shipped = tmp_path / "run", tmp_path / "shipped"
    (shipped / "prior").mkdir(parents=True)
    (shipped / "id3pm.json").write_text("{}")
    (shipped / "prior" / "id3pm.json").write_text("{}")
    fresh = _launch(tmp_path, run, shipped, cooldown=None)
    assert fresh[:4] == ["-m", "id3pm.cli", "train", str(tmp_path / "data")]
    assert _flag(fresh, "--init-from") == str(shipped) and _flag(fresh, "--prior") == str(shipped / "prior")
    assert 88 <= int(_flag(fresh, "--max-minutes")) <= 90 and _flag(fresh, "--lr-cooldown-minutes") in ("29", "30")  # a third
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "state.json").write_text("{}")
    resumed = _launch(tmp_path, run, shipped, cooldown="40")
    assert "--init-from" not in resumed  # the checkpoint decides the network
    assert _flag(resumed, "--lr-cooldown-minutes") == "40" and "--balance" not in resumed
    balanced = _launch(tmp_path, run, shipped, cooldown="40", BALANCE="source,age")
    assert _flag(balanced, "--balance") == "source,age"
    assert (run / "pid").read_text().strip().isdigit()


@pytest.mark.skipif(os.name != "posix", reason="a bash script")
def test_an_end_time_past_midnight_is_tomorrows(tmp_path, monkeypatch):
    # 23 h 50 min from now is "earlier today" on the clock: the launcher must read it as tomorrow's
    args = _launch(tmp_path, tmp_path / "run", tmp_path / "none", cooldown=None, minutes=23 * 60 + 50)
    assert 23 * 60 + 48 <= int(_flag(args, "--max-minutes")) <= 23 * 60 + 50
