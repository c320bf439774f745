#!/usr/bin/env bash
# The release tag must be v + cocktail_bot.__version__: the card's "pip install cocktail-bot==X.Y.Z" line and the
# README's `uses: cocktail-bot/cocktail-bot@vMAJOR` then name what this release publishes.
set -euo pipefail
tag="${1:?usage: check_release_tag.sh vX.Y.Z}"
cd "$(dirname "$0")/.."
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' cocktail_bot/__init__.py)"
if [ "$tag" != "v$version" ]; then
  echo "::error title=release::tag $tag does not match cocktail_bot.__version__ $version: bump the version or tag v$version"
  exit 1
fi
echo "releasing cocktail-bot $version"
