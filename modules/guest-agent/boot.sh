#!/vmbuild/bin/busybox sh
# vmbuild stage 1: PID 1 of a VM whose root is a disk image (booted with
# rdinit=/vmbuild/boot/init). It runs from the initramfs vmbuild assembles: Debian's static
# busybox, the kernel modules the root disk needs (from the kernel's own entry, in
# dependency order), the guest agent and the test bundles. It loads the modules, mounts
# the disk whose serial is vmbuild-root (the VM's writes go to a throwaway overlay on the
# host), puts /vmbuild (agent, busybox, bundles) on a tmpfs in it, and hands PID 1 over to
# the agent. A failure prints a `vmbuild-boot:` line on the console and powers off.
#
# In a bootable disk's unified kernel image (`kind = "disk"`), `vmbuild.rootpart=N` names
# the root partition of that disk (on a machine without vmbuild's serials: the partition
# named root-x86-64), and the bundles, which the image could not hold, come on the disk
# whose serial is vmbuild-bundles: its header lists each archive's first sector and size.

bb=/vmbuild/bin/busybox
$bb mkdir -p /proc /sys /dev /newroot /tmp
$bb --install -s /vmbuild/bin
export PATH=/vmbuild/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "vmbuild-boot: $*"
    sync
    reboot -f
    sleep 5
    exit 1
}

if [ -r /vmbuild/boot/modules.load ]; then
    while read -r module; do
        insmod "/vmbuild/boot/modules/$module.ko" || fail "insmod $module failed"
    done </vmbuild/boot/modules.load
fi

rootpart=
# Split the command line into words without expanding globs in them.
set -f
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmbuild.rootpart=*) rootpart=${arg#vmbuild.rootpart=} ;;
    esac
done
set +f

# The device whose serial is $1, in $found.
find_serial() {
    found=
    for serial_file in /sys/block/*/serial; do
        [ -r "$serial_file" ] || continue
        # sysfs ends the serial without a newline: read fails but fills $serial.
        serial=
        IFS= read -r serial <"$serial_file"
        [ "$serial" = "$1" ] || continue
        dev=${serial_file%/serial}
        found=/dev/${dev##*/}
    done
}

# The root disk: the virtio-blk device whose serial is vmbuild-root (its partition
# $rootpart, for a bootable disk). Drivers probe asynchronously on some kernels: wait up
# to 10 s for it.
root=
tries=0
while [ -z "$root" ]; do
    find_serial vmbuild-root
    if [ -n "$found" ] && [ -n "$rootpart" ]; then
        [ -b "$found$rootpart" ] && root=$found$rootpart
    elif [ -n "$found" ]; then
        root=$found
    elif [ -n "$rootpart" ]; then
        for uevent in /sys/class/block/*/uevent; do
            grep -qx 'PARTNAME=root-x86-64' "$uevent" 2>/dev/null || continue
            dev=${uevent%/uevent}
            root=/dev/${dev##*/}
        done
    fi
    [ -n "$root" ] && break
    tries=$((tries + 1))
    if [ "$tries" -gt 200 ] && [ -n "$found" ]; then
        fail "the root disk $found has no partition $rootpart: the kernel needs GPT partitions (CONFIG_EFI_PARTITION)"
    fi
    [ "$tries" -le 200 ] || fail "no root disk appeared: the kernel needs virtio-pci and virtio-blk (CONFIG_VIRTIO_PCI, CONFIG_VIRTIO_BLK: modules/kconfig/virtio.config)"
    sleep 0.05
done
[ -b "$root" ] || fail "no device node $root: the kernel needs CONFIG_DEVTMPFS"
grep -qw ext4 /proc/filesystems || fail "the kernel cannot mount ext4 (CONFIG_EXT4_FS: modules/kconfig/ext4.config)"
mount -t ext4 "$root" /newroot || fail "cannot mount the root disk $root as ext4"

# The bundles disk of a firmware boot. vmbuild gives every VM whose root disk has its
# serial one (wait for it as for the root); elsewhere (a real machine) there is none.
find_serial vmbuild-root
if [ -n "$rootpart" ] && [ -n "$found" ]; then
    tries=0
    find_serial vmbuild-bundles
    while [ -z "$found" ]; do
        tries=$((tries + 1))
        [ "$tries" -le 200 ] || fail "no bundles disk (serial vmbuild-bundles) appeared"
        sleep 0.05
        find_serial vmbuild-bundles
    done
    # A failing dd or zcat fails the pipeline, not only cpio (which stops at its trailer:
    # cat reads the rest, so zcat never writes into a closed pipe).
    set -o pipefail
    if [ -n "$found" ]; then
        bundles=$found
        head -c 65536 "$bundles" >/tmp/bundles.list || fail "cannot read the bundles disk $bundles"
        {
            IFS= read -r magic
            [ "$magic" = "vmbuild-bundles 1" ] || fail "the bundles disk $bundles has no vmbuild header"
            while read -r start bytes; do
                [ "$start" = end ] && break
                dd if="$bundles" bs=512 skip="$start" count=$(((bytes + 511) / 512)) 2>/dev/null \
                    | head -c "$bytes" | zcat | (cd / && cpio -idmu 2>/dev/null && cat >/dev/null) \
                    || fail "cannot unpack a bundle from $bundles (sector $start)"
            done
        } </tmp/bundles.list
    fi
    set +o pipefail
fi

mkdir -p /newroot/vmbuild /newroot/dev /newroot/proc /newroot/sys /newroot/tmp \
    || fail "cannot write to the root disk's overlay"
mount -t tmpfs -o mode=0755 tmpfs /newroot/vmbuild || fail "cannot mount a tmpfs on /vmbuild"
for part in /vmbuild/*; do
    [ "$part" = /vmbuild/boot ] || cp -a "$part" /newroot/vmbuild/ || fail "cannot copy $part"
done
[ -x /newroot/vmbuild/init ] || fail "the guest agent did not reach the root disk"
# An absolute symlink (busybox roots: /bin/sh -> /bin/busybox) resolves only in the root.
[ -x /newroot/bin/sh ] || [ -L /newroot/bin/sh ] || fail "the root disk has no /bin/sh for the guest agent (base = \"none\" needs one in [files])"
mount --move /dev /newroot/dev
umount /proc /sys
# switch_root insists on a regular /init: proof that this root is the initramfs.
[ -f /init ] || : >/init
exec switch_root /newroot /vmbuild/init
