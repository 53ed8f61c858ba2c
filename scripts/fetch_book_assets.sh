#!/usr/bin/env bash
# Fetch the JavaScript the built book needs to work offline (MathJax, require.js, the
# ipywidgets HTML manager) from the npm registry into book/_static/vendor/ (ignored by git).
# Idempotent: a stamp file records the pinned versions; nothing is fetched when it matches.
set -euo pipefail
cd "$(dirname "$0")/.."

MATHJAX=3.2.2                 # Sphinx 7's math extension speaks MathJax 3
REQUIREJS=2.3.7
HTML_MANAGER=1.0.15           # the embed bundle that matches ipywidgets 8
VENDOR=book/_static/vendor
STAMP="$VENDOR/.versions"
WANT="mathjax@$MATHJAX requirejs@$REQUIREJS @jupyter-widgets/html-manager@$HTML_MANAGER"

PATCHES=2                     # bump when the patches to embed-amd.js below change
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT patches=$PATCHES" ]; then
    echo "book assets up to date in $VENDOR"
    exit 0
fi
command -v npm >/dev/null || { echo "npm is needed to fetch the book's assets (apt-get install npm)" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# npm pack downloads the published tarballs only (no dependency tree); npm's cache keeps them.
(cd "$TMP" && npm pack --silent $WANT >/dev/null)
for tgz in "$TMP"/*.tgz; do
    mkdir -p "${tgz%.tgz}" && tar xzf "$tgz" -C "${tgz%.tgz}"
done

# Assemble in the temporary folder and replace the vendor folder only at the end, so a
# failed fetch or patch leaves the previous assets as they were.
NEW="$TMP/vendor"
mkdir -p "$NEW/html-manager"
cp -r "$TMP/mathjax-$MATHJAX/package/es5" "$NEW/mathjax"
cp "$TMP/requirejs-$REQUIREJS/package/require.js" "$NEW/require.js"
# embed-amd.js with its fonts (no source maps, no non-AMD bundle).
find "$TMP/jupyter-widgets-html-manager-$HTML_MANAGER/package/dist" -maxdepth 1 -type f \
    ! -name '*.map' ! -name 'embed.js' ! -name 'libembed-amd.js' -exec cp {} "$NEW/html-manager/" \;
# The bundle finds its fonts (Font Awesome, for icons such as a Play button) next to the
# URL require.js gives its module, which here is relative to the page, not to the bundle;
# and it builds that URL from `origin`, the string "null" on file:// pages. Point it at the
# <script> that loaded it and build the URL from protocol and host, so icons work offline.
# It also typesets widget text with the MathJax 2 call MathJax.Hub.Queue; the book loads
# MathJax 3, whose equivalent is MathJax.typesetPromise.
EMBED="$NEW/html-manager/embed-amd.js"
sed -i -e 's/new URL([a-z]*\.uri,document\.location)/new URL(document.querySelector("script[src*=\\"embed-amd.js\\"]").src,document.location)/g' \
       -e 's/MathJax\.Hub\.Queue(\["Typeset",MathJax\.Hub,\([a-z]*\)\])/MathJax.typesetPromise\&\&MathJax.typesetPromise([\1])/g' \
       -e 's/\${\([a-z]*\)\.origin}\${\1\.pathname}/${\1.protocol}\/\/${\1.host}${\1.pathname}/g' "$EMBED"
if grep -q '\.uri,document\.location)\|\.origin}\${\|Hub\.Queue' "$EMBED"; then
    echo "could not patch embed-amd.js (a new html-manager version?)" >&2; exit 1
fi

echo "$WANT patches=$PATCHES" > "$NEW/.versions"
mkdir -p "$(dirname "$VENDOR")" && rm -rf "$VENDOR" && mv "$NEW" "$VENDOR"
echo "book assets fetched into $VENDOR ($(du -sh "$VENDOR" | cut -f1))"
