# Runs inside the build root: configure Xen's tools with Debian trixie's
# paths (so the result drops in over xen-utils-4.20) and build the subset
# dom0 needs from us: tools/libs (libxl, libxenctrl, libxendevicemodel, ...),
# tools/xl, hvmloader and the daemons that link the unstable libraries
# (xenstored, xenconsoled, xen-init-dom0: Debian's binaries are built from
# a different 4.20 tree and crash against our libxenctrl); install into a
# DESTDIR.
# Arguments: tree name, DESTDIR, jobs.
set -euo pipefail
cd "/build/$1"
dest=$2
jobs=$3
./configure --prefix=/usr --libdir=/usr/lib/x86_64-linux-gnu --libexecdir=/usr/lib \
    --with-libexec-leaf-dir=xen-4.20 --sysconfdir=/etc --localstatedir=/var --with-rundir=/var/run \
    --disable-stubdom --disable-qemu-traditional --disable-docs --disable-ocamltools \
    --disable-golang --disable-pygrub --disable-pvshim --disable-xsmpolicy --disable-rombios \
    --disable-ipxe --disable-systemd --disable-monitors --disable-9pfs --disable-werror \
    --with-system-qemu=/usr/libexec/xen-qemu-system-i386 \
    --with-system-seabios=/usr/share/seabios/bios-256k.bin \
    --with-system-ovmf=/usr/share/ovmf/OVMF.fd
make -C tools/include -j"$jobs"
make -C tools/libs -j"$jobs"
make -C tools/xl -j"$jobs"
make -C tools/firmware -j"$jobs"
make -C tools/helpers -j"$jobs"
make -C tools/console -j"$jobs"
make -C tools/xenstored -j"$jobs"
rm -rf "$dest"
for d in tools/libs tools/xl tools/firmware tools/helpers tools/console tools/xenstored; do
    make -C "$d" install DESTDIR="$dest"
done
find "$dest" -type f | sort | head -n 100
ccache -s 2>/dev/null | head -n 5 || true
