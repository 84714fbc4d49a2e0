#!/usr/bin/env bash
# deb.sh builds the Debian package of mpshim from the built binaries:
#   scripts/deb.sh VERSION OUTDIR
# It stages `make install` with Debian's paths, adds the maintainer
# scripts of deploy/debian and builds with dpkg-deb. Prints the .deb path.
# BIN names the directory of the built binaries (default bin).
set -euo pipefail

version=${1:?usage: deb.sh VERSION OUTDIR}
out=${2:?usage: deb.sh VERSION OUTDIR}
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
	echo "deb.sh: version '$version' is not a Debian version (digits first)" >&2
	exit 2
fi
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

make --no-print-directory -s install-files BIN="${BIN:-bin}" DESTDIR="$stage" PREFIX=/usr SYSCONFDIR=/etc \
	UNITDIR=/lib/systemd/system ZSHCOMPDIR=/usr/share/zsh/vendor-completions >&2

install -d -m 0755 "$stage/DEBIAN"
for s in postinst prerm postrm; do
	install -m 0755 "deploy/debian/$s" "$stage/DEBIAN/$s"
done
# Every file under /etc is a conffile: dpkg keeps an admin's change on upgrade.
(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) >"$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
	deploy/debian/control.in >"$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
	>"$stage/DEBIAN/md5sums"
mkdir -p "$out"
deb="$out/mpshim_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >&2
echo "$deb"
