# Runs inside the build root: compile the C test programs (one per .c file)
# copied into $1/src/<dir>; results in $1/out/guest and $1/out/dom0.
# A program that does not compile is reported (FAILED) and left out.
set -uo pipefail
top=$1
cd "$top"
mkdir -p out/guest out/dom0
inc=(-Iinc/uapi -Iinc/tools -Iinc/plugin)
fails=0
for f in $(find src -name '*.c' | LC_ALL=C sort); do
    dir=$(dirname "$f")
    name=$(basename "$f" .c)
    # A program that cannot run in the busybox guest or dom0 (vk-compute:
    # trixie's Vulkan loader and Mesa) says "e2e-build: none" and is built
    # where it runs.
    if grep -q 'e2e-build: none' "$f"; then
        echo "skipped ${dir#src/}/$name.c (e2e-build: none)"
        continue
    fi
    extra=$(sed -n 's/.*e2e-build-flags:[[:space:]]*\(.*[^[:space:]*\/]\).*/\1/p' "$f" | head -n1)
    case "$dir" in
    src/tests/guest) out=out/guest; link=(-static -pthread) ;;
    *) out=out/dom0; link=(-pthread -Llib -ldl -Wl,-rpath-link,lib) ;;
    esac
    # shellcheck disable=SC2086
    if gcc -O2 -g -Wall -D_GNU_SOURCE -I"$dir" "${inc[@]}" -o "$out/$name" "$f" "${link[@]}" $extra; then
        echo "built ${dir#src/}/$name.c -> ${out#out/}/$name"
    else
        echo "FAILED: ${dir#src/}/$name.c did not compile"
        fails=$((fails + 1))
    fi
done
echo "$fails program(s) failed to compile"
exit 0
