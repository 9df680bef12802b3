#!/bin/sh
# Run one of the kernel's own livepatch selftests as kselftest's runner does: from its directory, unchanged.
# KDIR is upstream's own knob: has_kdir() wants a module build directory; the lab built the modules already.
case "$1" in
test-*.sh) ;;
*) echo "run-upstream.sh: not a livepatch selftest: $1" >&2; exit 2 ;;
esac
cd /root/upstream/livepatch || exit 2
[ -x "./$1" ] || { echo "run-upstream.sh: this kernel's suite has no $1" >&2; exit 2; }
KDIR="/usr/lib/modules/$(uname -r)" exec "./$1"
