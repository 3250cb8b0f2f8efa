"""`make reliability`: the large fault-injection runs (tests/faults.py) and their table.

    python scripts/reliability.py --kills 20          # prints the table, writes it to docs/reliability.md

Run it once per working period, ideally while the training run is paused: it starts a
few hundred short `id3pm` processes.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faults import model_folder_corruptions, prepare_kills, table, train_kills  # noqa: E402

BEGIN, END = "<!-- faults: begin -->", "<!-- faults: end -->"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--corruptions", type=int, default=1000, help="random corruptions of a model folder's weights")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [prepare_kills(Path(tmp) / "prepare", args.kills, n_images=60),
                train_kills(Path(tmp) / "train", args.kills, steps=40),
                model_folder_corruptions(Path(tmp) / "folders", args.corruptions)]
    text = table(rows)
    print(text)
    stamp = (f"Measured {datetime.date.today().isoformat()} with `python scripts/reliability.py --kills {args.kills} "
             f"--corruptions {args.corruptions}`.")
    doc = args.doc.read_text() if args.doc.exists() else ""
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + BEGIN + "\n" + stamp + "\n\n" + text + "\n" + END + rest.split(END, 1)[1]
        args.doc.write_text(doc)
        print(f"updated {args.doc}")
    if any(r.lost for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
