#!/usr/bin/env bash
# Fetch the `faceres` (face descriptor, age, gender) and `emotion` TF.js graph models of
# @vladmandic/human (MIT) into cache/human/models/, for the `faceres` encoder
# (src/id3pm/encoders/faceres.py). Idempotent: does nothing when the files are there.
# Needs npm (it downloads the package tarball from the npm registry with `npm pack`).
#   usage: scripts/fetch_human_models.sh [destination folder]
set -euo pipefail

VERSION="3.3.6"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${ID3PM_HUMAN_MODELS:-$ROOT/cache/human/models}}"
FILES=(faceres.json faceres.bin emotion.json emotion.bin)
# sha256 of the files in the 3.3.6 tarball: the test tolerances were measured on exactly these.
SUMS="5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df  faceres.json
2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b  faceres.bin
56f7e557eb0c863a8b9ab04ac7ccba756e93bf2c27dce135ef0e8712b80b7ad2  emotion.json
927ac8224f356ab1e68c2bcfbfa07b0c8567047d1bcf817388ba6e38214c4987  emotion.bin"

missing=0
for f in "${FILES[@]}"; do [ -s "$DEST/$f" ] || missing=1; done
if [ "$missing" = 0 ]; then
  echo "human models already in $DEST"
  exit 0
fi
command -v npm >/dev/null || { echo "error: npm is needed to fetch @vladmandic/human@$VERSION" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "@vladmandic/human@$VERSION" >/dev/null)
tar -xzf "$TMP"/vladmandic-human-"$VERSION".tgz -C "$TMP"
if command -v sha256sum >/dev/null; then
  (cd "$TMP/package/models" && echo "$SUMS" | sha256sum --check --quiet) \
    || { echo "error: the models in @vladmandic/human@$VERSION do not match the expected checksums" >&2; exit 1; }
fi
mkdir -p "$DEST"
for f in "${FILES[@]}"; do
  [ -s "$TMP/package/models/$f" ] || { echo "error: models/$f is not in @vladmandic/human@$VERSION" >&2; exit 1; }
  cp "$TMP/package/models/$f" "$DEST/$f.tmp" && mv "$DEST/$f.tmp" "$DEST/$f"  # no half-written files
done
cp "$TMP/package/LICENSE" "$DEST/LICENSE.human"
echo "fetched ${FILES[*]} of @vladmandic/human@$VERSION into $DEST"
