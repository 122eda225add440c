#!/bin/sh
# Fails when the image does not run as the platform it was scheduled for (a child pushed with
# the wrong binaries), then runs the image's own smoke test, if it has one.
set -u
want=$1
case "$(uname -m)" in
  x86_64) got=amd64 ;;
  aarch64) got=arm64 ;;
  *) got=$(uname -m) ;;
esac
echo "scheduled for $want, runs as $got ($(uname -m))"
[ "$got" = "$want" ] || { echo "the $want manifest does not run as $want"; exit 3; }
if [ -x /usr/local/bin/smoke-test ]; then
  /usr/local/bin/smoke-test
fi
echo "ok on $want"
