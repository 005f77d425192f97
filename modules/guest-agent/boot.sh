#!/vmbuild/bin/busybox sh
# vmbuild stage 1: PID 1 of a VM whose root is a disk image (booted with
# rdinit=/vmbuild/boot/init). It runs from the initramfs vmbuild assembles: Debian's static
# busybox, the kernel modules the root disk needs (from the kernel's own entry, in
# dependency order), the guest agent and the test bundles. It loads the modules, mounts
# the disk whose serial is vmbuild-root (the VM's writes go to a throwaway overlay on the
# host), puts /vmbuild (agent, busybox, bundles) on a tmpfs in it, and hands PID 1 over to
# the agent. A failure prints a `vmbuild-boot:` line on the console and powers off.

bb=/vmbuild/bin/busybox
$bb mkdir -p /proc /sys /dev /newroot
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

# The root disk: the virtio-blk device whose serial is vmbuild-root. Drivers probe
# asynchronously on some kernels: wait up to 10 s for it.
root=
tries=0
while [ -z "$root" ]; do
    for serial_file in /sys/block/*/serial; do
        [ -r "$serial_file" ] || continue
        # sysfs ends the serial without a newline: read fails but fills $serial.
        serial=
        IFS= read -r serial <"$serial_file"
        [ "$serial" = vmbuild-root ] || continue
        dev=${serial_file%/serial}
        root=/dev/${dev##*/}
    done
    [ -n "$root" ] && break
    tries=$((tries + 1))
    [ "$tries" -le 200 ] || fail "no root disk appeared: the kernel needs virtio-pci and virtio-blk (CONFIG_VIRTIO_PCI, CONFIG_VIRTIO_BLK: modules/kconfig/virtio.config)"
    sleep 0.05
done
[ -b "$root" ] || fail "no device node $root: the kernel needs CONFIG_DEVTMPFS"
grep -qw ext4 /proc/filesystems || fail "the kernel cannot mount ext4 (CONFIG_EXT4_FS: modules/kconfig/ext4.config)"
mount -t ext4 "$root" /newroot || fail "cannot mount the root disk $root as ext4"

mkdir -p /newroot/vmbuild /newroot/dev /newroot/proc /newroot/sys /newroot/tmp \
    || fail "cannot write to the root disk's overlay"
mount -t tmpfs -o mode=0755 tmpfs /newroot/vmbuild || fail "cannot mount a tmpfs on /vmbuild"
for part in /vmbuild/*; do
    [ "$part" = /vmbuild/boot ] || cp -a "$part" /newroot/vmbuild/ || fail "cannot copy $part"
done
[ -x /newroot/vmbuild/init ] || fail "the guest agent did not reach the root disk"
[ -x /newroot/bin/sh ] || fail "the root disk has no /bin/sh for the guest agent (base = \"none\" needs one in [files])"
mount --move /dev /newroot/dev
umount /proc /sys
# switch_root insists on a regular /init: proof that this root is the initramfs.
[ -f /init ] || : >/init
exec switch_root /newroot /vmbuild/init
