"""A few seconds of the soak benchmark (benchmarks/serve_soak.py; the 10-minute run and its
figures are in docs/reliability.md): overload against a tiny queue must be refused with 429,
never lost, and the server must answer normally afterwards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import serve_soak  # noqa: E402


def test_rss_windows_compare_first_and_last_fifth():
    samples = [(float(t), 100.0 + (t if t < 5 else 5)) for t in range(11)]  # grows, then flat
    assert serve_soak.rss_windows(samples) == (102.0, 105.0, 105.0)


def test_short_soak_refuses_overload_with_429_and_recovers(tmp_path):
    out = tmp_path / "soak.json"
    code = serve_soak.main(["--seconds", "6", "--factor", "4", "--max-queue", "2", "--clients", "8",
                            "--capacity-seconds", "3", "--serial-seconds", "2", "--steps", "2", "--size", "16",
                            "--timeout", "60", "--out", str(out)])
    report = json.loads(out.read_text())
    r = report["result"]
    assert r["sent"] > 0 and r["sent"] == r["ok"] + r["refused_429"] + r["lost"]
    assert r["lost"] == 0, r["other_statuses"]
    assert r["refused_429"] > 0  # 4x capacity against a queue of 2: the bound must show
    assert r["ok"] > 0
    assert r["serial_after_ms"], "no request answered after the soak"
    assert out.with_suffix(".png").stat().st_size > 1000
    assert code == (0 if report["passed"] else 1)
