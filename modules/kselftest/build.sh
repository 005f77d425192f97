#!/bin/sh
# Builds the kernel selftests listed in kselftest-list.txt from Debian's linux-source-6.1
# with the host's gcc, and installs them with the selftests' own runner into
# $VMBUILD_OUT/selftests; the test script `kselftest` goes beside them, at the top of the
# bundle, where vmbuild finds it. vmbuild runs this in an empty working folder holding
# only this script, `kselftest` and the list (see recipes/kselftest-tests.toml).
set -eu

tarball=$(echo "$VMBUILD_DEB_LINUX_SOURCE_6_1"/usr/src/linux-source-*.tar.xz)
echo "unpacking ${tarball##*/}"
tar -xf "$tarball"
tree=$(basename "$tarball" .tar.xz)

# The list without its comments, as the runner reads it; its collections are the TARGETS.
grep -v -e '^#' -e '^[[:space:]]*$' kselftest-list.txt > tests.txt
targets=$(cut -d: -f1 tests.txt | sort -u | tr '\n' ' ')
echo "selftest targets: $targets"

# Out of tree (O=): the kernel's uapi headers, for targets whose Makefiles use
# KHDR_INCLUDES, then the selftests and their runner.
make -C "$tree" O="$PWD/obj" headers
make -C "$tree/tools/testing/selftests" O="$PWD/obj" TARGETS="$targets" \
    KSFT_INSTALL_PATH="$VMBUILD_OUT/selftests" -j"$VMBUILD_JOBS" install

# `make install` leaves out a target that failed to build and still exits 0: every listed
# test must be there.
while IFS=: read -r collection test; do
    if [ ! -x "$VMBUILD_OUT/selftests/$collection/$test" ]; then
        echo "error: $collection:$test was not built (see the make output above)" >&2
        exit 1
    fi
done < tests.txt
cp tests.txt "$VMBUILD_OUT/selftests/kselftest-list.txt"
cp kselftest "$VMBUILD_OUT/kselftest"
chmod 755 "$VMBUILD_OUT/kselftest"
