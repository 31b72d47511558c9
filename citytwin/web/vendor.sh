#!/usr/bin/env bash
# Vendor the console's third-party browser libraries (pinned in package.json / package-lock.json)
# into static/vendor: `npm ci` in a temporary folder, then copy the built, minified files and
# their licences. Run it after changing a version (`make vendor`); the copied files are committed,
# so the console needs neither node nor the internet at run time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cp "$here/package.json" "$here/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
mods="$work/node_modules"

rm -rf "$out"
mkdir -p "$out/maplibre-gl" "$out/deck.gl" "$out/proj4"
cp "$mods/maplibre-gl/dist/maplibre-gl.js" "$mods/maplibre-gl/dist/maplibre-gl.css" \
   "$mods/maplibre-gl/LICENSE.txt" "$out/maplibre-gl/"
cp "$mods/deck.gl/dist.min.js" "$out/deck.gl/deck.gl.min.js"
cp "$mods/deck.gl/LICENSE" "$out/deck.gl/LICENSE"
cp "$mods/proj4/dist/proj4.js" "$out/proj4/proj4.js"
cp "$mods/proj4/LICENSE.md" "$out/proj4/LICENSE.md"

# what was copied, from which versions (the console shows nothing of this; it is for reviewers)
node -e '
const fs = require("fs");
const names = ["maplibre-gl", "deck.gl", "proj4"];
const lines = names.map(n => `${n} ${JSON.parse(fs.readFileSync(process.argv[1] + "/" + n + "/package.json")).version}`);
fs.writeFileSync(process.argv[2] + "/VERSIONS", lines.join("\n") + "\n");
' "$mods" "$out"
cat "$out/VERSIONS"
du -sh "$out"
