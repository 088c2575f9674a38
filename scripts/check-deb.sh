#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks that it installs what it must:
# the binary, the systemd unit (enabled by its maintainer scripts), the example config
# as a conffile, and the Prometheus and Grafana files under /usr/share/jobd/.
# Usage: bash scripts/check-deb.sh [cargo deb arguments]
# Without arguments it makes the release package. scripts/test.sh passes
# `--profile dev --no-build`: the package of the debug binary the tests just built and ran,
# which has the same contents and saves CI a release build of about six minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "check-deb: installing cargo-deb"
  if ! cargo install cargo-deb --locked; then
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! check-deb: cargo-deb could not be installed; the .deb was NOT built !!!" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    exit 0
  fi
fi

rm -f target/debian/jobd_*.deb
cargo deb "$@"
deb=$(ls target/debian/jobd_*.deb)
contents=$(dpkg-deb -c "$deb")
failed=0
for path in \
  ./usr/bin/jobd \
  ./usr/lib/systemd/system/jobd.service \
  ./etc/jobd/jobd.toml \
  ./usr/share/jobd/grafana/dashboards/jobd.json \
  ./usr/share/jobd/grafana/provisioning/dashboards/jobd.yaml \
  ./usr/share/jobd/grafana/provisioning/datasources/prometheus.yaml \
  ./usr/share/jobd/prometheus/prometheus.yml \
  ./usr/share/jobd/prometheus/jobd-alerts.yml; do
  if ! grep -q " ${path}\$" <<<"$contents"; then
    echo "check-deb: $deb lacks $path" >&2
    failed=1
  fi
done
control=$(mktemp -d)
trap 'rm -rf "$control"' EXIT
dpkg-deb -e "$deb" "$control"
grep -qx "/etc/jobd/jobd.toml" "$control/conffiles" || { echo "check-deb: jobd.toml is not a conffile" >&2; failed=1; }
# A first installation says that jobd runs without authentication, on loopback only.
grep -q "without authentication" "$control/postinst" || { echo "check-deb: postinst lacks the post-install message" >&2; failed=1; }
grep -q "deb-systemd-helper enable jobd.service" "$control/postinst" || { echo "check-deb: postinst does not enable the unit" >&2; failed=1; }
sh -n "$control/postinst" "$control/prerm" "$control/postrm" || failed=1
if [ "$failed" -ne 0 ]; then
  echo "check-deb: FAILED" >&2
  exit 1
fi
echo "check-deb: $deb has the binary, the enabled unit, the conffile and the shared files"
