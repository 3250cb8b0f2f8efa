"""`make reliability`: the large fault-injection runs (tests/faults.py) and their table.

    python scripts/reliability.py --kills 20          # prints the table, writes it to docs/reliability.md

Run it once per working period, ideally while the training run is paused: it starts a
few hundred short `id3pm` processes. The disk-full rows need root (a tmpfs is mounted);
elsewhere they are left out with the reason printed.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faults import (  # noqa: E402
    model_folder_corruptions, mount_error, prepare_disk_full, prepare_kills, table, train_disk_full, train_kills,
    worker_kills)
from fuzz_images import http_image_fuzz, image_fuzz, prepare_image_fuzz  # noqa: E402
from http_abuse import http_abuse  # noqa: E402
from remote_faults import remote_encoder_faults, remote_encoder_retries  # noqa: E402

BEGIN, END = "<!-- faults: begin -->", "<!-- faults: end -->"


def disk_full_rows(root: Path, n: int) -> list:
    """prepare and train on tmpfs disks of 5% .. 95% of their footprint (root only)."""
    reason = mount_error(root)
    if reason:
        print(f"disk-full rows left out: {reason}")
        return []
    sizes = [0.05 + 0.9 * i / max(1, n - 1) for i in range(n)]
    return [prepare_disk_full(root / "prepare", sizes), train_disk_full(root / "train", sizes)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--corruptions", type=int, default=1000, help="random corruptions of a model folder's weights")
    p.add_argument("--disk-sizes", type=int, default=10, help="tmpfs sizes per command for the disk-full rows")
    p.add_argument("--worker-kills", type=int, default=20, help="kills of the server's model worker thread")
    p.add_argument("--remote-faults", type=int, default=200, help="faults of a remote black box in one encode job")
    p.add_argument("--images", type=int, default=10000, help="fuzzed images through load_image (1/20 as many over HTTP, 1/50 through prepare)")
    p.add_argument("--http-scale", type=int, default=3, help="hostile-HTTP-client probes, this many times each class's base count")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [prepare_kills(Path(tmp) / "prepare", args.kills, n_images=60),
                train_kills(Path(tmp) / "train", args.kills, steps=40),
                model_folder_corruptions(Path(tmp) / "folders", args.corruptions),
                worker_kills(Path(tmp) / "worker", args.worker_kills),
                remote_encoder_faults(args.remote_faults),
                remote_encoder_retries(max(1, args.remote_faults // 10))]
        rows += disk_full_rows(Path(tmp) / "disk", args.disk_sizes)
        rows += [image_fuzz(Path(tmp) / "images", args.images),
                 http_image_fuzz(Path(tmp) / "http-images", max(1, args.images // 20), seed=1),
                 prepare_image_fuzz(Path(tmp) / "prepare-images", max(1, args.images // 50), seed=2)]
        rows += http_abuse(Path(tmp) / "http-abuse", scale=args.http_scale)
    text = table(rows)
    print(text)
    stamp = (f"Measured {datetime.date.today().isoformat()} with `python scripts/reliability.py --kills {args.kills} "
             f"--corruptions {args.corruptions} --worker-kills {args.worker_kills} --remote-faults {args.remote_faults} "
             f"--disk-sizes {args.disk_sizes} "
             f"--images {args.images} --http-scale {args.http_scale}`.")
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
