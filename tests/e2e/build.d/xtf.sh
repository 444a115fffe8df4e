# Runs inside the build root: build XTF (the Xen Test Framework) unpacked in
# /build/$1 and install it into $2 with xtfdir=$3 (the generated xl configs
# name their test kernels by that path, so it must be the same at build and
# install, and where dom0 finds them).  Arguments: tree, destdir, xtfdir, jobs.
set -euo pipefail
cd "/build/$1"
make -j"$4" xtfdir="$3"
make install DESTDIR="$2" xtfdir="$3"
ls "$2$3/tests" | wc -l
