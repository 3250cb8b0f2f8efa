"""#25 part 3, first rows (docs/results.md, "Adapters"): MobileFaceNet templates of CelebA TEST people inverted by the shipped
model through the adapter, judged by MobileFaceNet (the attacked system), dlib and faceres; beside
retrieval by MobileFaceNet vector (pool: the adapter's 2,000 CelebA training photos) and the
shipped model on the same photos' dlib templates. Type-I SAR at FMR 1% / 0.1%, thresholds
from the impostor pairs of 200 seeded test photos (same-person pairs left out)."""
import json
import os
import sys
import time

import numpy as np

from id3pm.adapter import Adapter
from id3pm.cli.adapt import training_photos
from id3pm.data.dataset import PreparedDataset
from id3pm.data.reencode import reencode
from id3pm.encoders import make_encoder, identity_distance
from id3pm.evaluation.sar import impostor_distances
from id3pm.pipeline import ID3PMPipeline

# usage: python scripts/adapter_rows.py ADAPTER N [PREPARED_CELEBA] [CACHE]
ADAPTER, N = sys.argv[1], int(sys.argv[2])
CELEBA = sys.argv[3] if len(sys.argv) > 3 else os.path.expanduser("~/.cache/id3pm/data/celeba")
CACHE = sys.argv[4] if len(sys.argv) > 4 else os.path.expanduser("~/.cache/id3pm/adapters")  # test photos' MobileFaceNet vectors
data = PreparedDataset(CELEBA)
enc = {"mobilefacenet": make_encoder("mobilefacenet"), "dlib": make_encoder("dlib"), "faceres": make_encoder("faceres")}
test = data.sample_indices("holdout", 200, seed=0)
mfn = reencode(data, test, enc["mobilefacenet"], f"{CACHE}/.encoded-celeba-test", progress=False)
ok = np.isfinite(mfn).all(1); test, mfn = test[ok], mfn[ok]
crops = data.images(128, test)
ref = {"mobilefacenet": mfn, "dlib": data.vectors(test), "faceres": enc["faceres"].encode(list(crops), aligned=True).vectors}
ids = data.identities(test)
thr = {}
for name, v in ref.items():
    imp = impostor_distances(v, enc[name].distance, identities=ids)
    thr[name] = (float(np.quantile(imp, 0.01)), float(np.quantile(imp, 0.001)))
rows = {}
t0 = time.time()
adapted = ID3PMPipeline.from_pretrained(None, device="cpu", adapter=ADAPTER, upscale=None)
rows["shipped via adapter (MobileFaceNet templates)"] = adapted(mfn[:N], num_images_per_id=1, seed=0).images[:, 0]
t_ad = time.time() - t0
plain = ID3PMPipeline.from_pretrained(None, device="cpu", upscale=None)
rows["shipped on dlib templates"] = plain(ref["dlib"][:N], num_images_per_id=1, seed=0).images[:, 0]
pool = training_photos(data, 2000, 0)
px = reencode(data, pool, enc["mobilefacenet"], f"{ADAPTER}/.encoded", progress=False)
pok = np.isfinite(px).all(1); pool, px = pool[pok], px[pok]
nn = pool[(1 - identity_distance(mfn[:N, None], px[None], "cosine")).argmax(1)]
rows["retrieval by MobileFaceNet vector (2,000 train photos)"] = data.images(32, nn)
rows["real (original crop at 32 px)"] = data.images(32, test[:N])
out = {"photos": N, "thresholds": thr, "adapter": json.load(open(f"{ADAPTER}/adapter.json"))["kind"],
       "seconds_adapter_row": t_ad, "rows": {}}
for name, images in rows.items():
    r = {}
    for e, encoder in enc.items():
        v = encoder.encode(list(images), aligned=True).vectors
        d = identity_distance(v, ref[e][:N], encoder.distance)
        d = np.where(np.isfinite(d), d, np.inf)
        r[e] = {"mean_dist": float(np.mean(d[np.isfinite(d)])), "sar1": float((d < thr[e][0]).mean() * 100),
                "sar01": float((d < thr[e][1]).mean() * 100), "no_face": int((~np.isfinite(d)).sum())}
    out["rows"][name] = r
print(json.dumps(out, indent=1))
print("| method | " + " | ".join(f"{e} SAR@1% / @0.1% (dist)" for e in enc) + " |")
print("|---|" + "---|" * len(enc))
for name, r in out["rows"].items():
    print(f"| {name} | " + " | ".join(f"{r[e]['sar1']:.0f} / {r[e]['sar01']:.0f} ({r[e]['mean_dist']:.3f})" for e in enc) + " |")
