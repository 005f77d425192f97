#!/usr/bin/env bash
# vmbuild benchmarks: each compares vmbuild with the plain tool doing the same work, in one
# hyperfine run, and prints the figures. Run from the repository root after `.ci/install-deps`:
#   benches/run.sh [cached|keying|cpio|boot|run|kernel-tree|kernel-incremental|kernel-loop|debian-root|disk-boot|uefi|warm|arm64|scale|remote|all]
# Needs: hyperfine, a release build (built here), network access to the Debian mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
cargo build --release --quiet
vmbuild="$PWD/target/release/vmbuild"
work="${BENCH_DIR:-/tmp/vmbuild-bench}"
mkdir -p "$work"
export VMBUILD_CACHE_DIR="$work/store"

section() { printf '\n== %s ==\n' "$1"; }

# hyperfine, then the median of each command (hyperfine prints means).
measure() {
    local name="$1"; shift
    hyperfine --export-json "$work/$name.json" "$@"
    python3 - "$work/$name.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
base = results[0]["median"]
for r in results:
    print(f"median {r['median'] * 1000:10.2f} ms  ({r['median'] / base:5.2f}x the first)  {r['command'][:90]}")
PY
}

# bare_qemu NAME KERNEL "GUEST COMMAND" IMAGE...: sets $bare to a plain qemu command line
# booting KERNEL with the IMAGEs plus an /init that runs the command and powers off.
bare_qemu() {
    local name="$1" kernel="$2" command="$3"; shift 3
    bare_initrd "$name" "$command" "$@"
    bare="qemu-system-x86_64 -machine q35 -accel tcg -m 512 -smp 1 -nodefaults -display none -no-reboot -nic none -kernel $kernel -initrd $work/$name.img -append 'console=ttyS0 rdinit=/vmbuild/init panic=-1' -serial stdio -serial null"
}

# bare_qemu_aarch64 NAME KERNEL CPU "GUEST COMMAND" IMAGE...: the same for an arm64 guest on
# qemu's virt machine with the given CPU model.
bare_qemu_aarch64() {
    local name="$1" kernel="$2" cpu="$3" command="$4"; shift 4
    bare_initrd "$name" "$command" "$@"
    bare="qemu-system-aarch64 -machine virt -accel tcg -cpu $cpu -m 512 -smp 1 -nodefaults -display none -no-reboot -nic none -kernel $kernel -initrd $work/$name.img -append 'console=ttyAMA0 rdinit=/vmbuild/init panic=-1' -serial stdio"
}

# bare_initrd NAME "GUEST COMMAND" IMAGE...: $work/NAME.img, the IMAGEs plus an /init that
# runs the command and powers off.
bare_initrd() {
    local name="$1" command="$2"; shift 2
    mkdir -p "$work/$name/vmbuild"
    printf '#!/bin/sh\nmount -t proc proc /proc\nmount -t devtmpfs dev /dev\n%s\nreboot -f\n' "$command" >"$work/$name/vmbuild/init"
    chmod +x "$work/$name/vmbuild/init"
    (cd "$work/$name" && find vmbuild | cpio -o -H newc --quiet | gzip) | cat "$@" - >"$work/$name.img"
}

bench_cached() {
    section "fully cached 3-recipe build vs /bin/true vs cat of the manifests"
    # -f: entries written by an older vmbuild may lay out their manifests differently.
    "$vmbuild" build -f debian-kernel busybox-rootfs smoke-tests >/dev/null
    manifests=$("$vmbuild" build debian-kernel busybox-rootfs smoke-tests | sed 's|$|/manifest.json|' | tr '\n' ' ')
    measure cached-build -N --warmup 20 --runs 300 \
        "/bin/true" \
        "cat $manifests" \
        "$vmbuild build debian-kernel busybox-rootfs smoke-tests"
    section "fully cached vmbuild test smoke vs /bin/true"
    "$vmbuild" test -f smoke >/dev/null 2>&1
    measure cached-test -N --warmup 20 --runs 300 "/bin/true" "$vmbuild test smoke"
}

bench_keying() {
    section "keying a 1 GiB tree (vmbuild explain of a bundle over it) vs sha256sum on 2 cores"
    tree="$work/tree"
    if [ ! -d "$tree" ]; then
        mkdir -p "$tree"
        for i in $(seq 1 256); do head -c 4M /dev/urandom >"$tree/file$i"; done
    fi
    project="$work/keying"
    mkdir -p "$project/recipes"
    printf 'kind = "bundle"\ntests = "%s"\n' "$tree" >"$project/recipes/big.toml"
    cat "$tree"/* >/dev/null
    measure keying --warmup 1 --runs 5 \
        "find $tree -type f -print0 | xargs -0 -n 64 -P 2 sha256sum >/dev/null" \
        "$vmbuild -C $project explain big >/dev/null"
}

bench_cpio() {
    section "cpio initramfs of the busybox rootfs vs find | cpio -o -H newc | gzip"
    project="$work/cpio"
    mkdir -p "$project/recipes"
    cp -r recipes modules tests vmbuild.lock "$project/" 2>/dev/null || true
    sed 's/format = "cpio".*/format = "dir"/' recipes/busybox-rootfs.toml >"$project/recipes/busybox-dir.toml"
    root="$("$vmbuild" -C "$project" build busybox-dir)/root"
    {
        echo 'kind = "rootfs"'
        echo 'base = "none"'
        echo '[files]'
        for d in "$root"/*; do echo "\"/$(basename "$d")\" = \"$d\""; done
    } >"$project/recipes/packed.toml"
    # [files] sources must be inside the project: copy the tree in.
    rm -rf "$project/root" && cp -a "$root" "$project/root"
    sed -i "s|$root|../root|" "$project/recipes/packed.toml"
    measure cpio --warmup 2 --runs 10 \
        "cd $root && find . | cpio -o -H newc --quiet | gzip > $work/plain.cpio.gz" \
        "$vmbuild -C $project build -f packed >/dev/null 2>&1"
}

bench_boot() {
    section "one test in one VM: vmbuild test (warm artifacts) vs bare qemu on the same kernel and initramfs"
    project="$work/boot"
    mkdir -p "$project/recipes" "$project/tests/one"
    cp -r recipes modules vmbuild.lock "$project/"
    printf '#!/bin/sh\necho hi\n' >"$project/tests/one/hi"
    chmod +x "$project/tests/one/hi"
    printf 'kind = "bundle"\ntests = "../tests/one"\n' >"$project/recipes/one-tests.toml"
    printf 'kind = "test"\nkernel = "debian-kernel"\nrootfs = "busybox-rootfs"\nbundles = ["one-tests"]\n' >"$project/recipes/one.toml"
    "$vmbuild" -C "$project" test one >/dev/null 2>&1
    kernel=$("$vmbuild" -C "$project" build debian-kernel)/bzImage
    rootfs=$("$vmbuild" -C "$project" build busybox-rootfs)/rootfs.cpio.gz
    # Bare qemu: the same rootfs plus an /init that runs the same script and powers off.
    bare_qemu bare "$kernel" "echo hi" "$rootfs"
    measure boot --warmup 1 --runs 5 "$bare >/dev/null" "$vmbuild -C $project test -f one >/dev/null 2>&1"
}

bench_run() {
    section "one command in a VM: vmbuild run smoke -- true (warm artifacts) vs bare qemu on the same kernel and initramfs"
    "$vmbuild" run smoke -- true 2>/dev/null
    kernel=$("$vmbuild" build debian-kernel)/bzImage
    rootfs=$("$vmbuild" build busybox-rootfs)/rootfs.cpio.gz
    bundle=$("$vmbuild" build smoke-tests)/bundle.cpio.gz
    # Bare qemu: the same rootfs and bundle plus an /init that runs `true` and powers off.
    bare_qemu bare-run "$kernel" "true" "$rootfs" "$bundle"
    measure run --warmup 1 --runs "${RUNS:-5}" "$bare >/dev/null" "$vmbuild run smoke -- true 2>/dev/null"
}

bench_arm64() {
    section "an arm64 guest (TCG): vmbuild run smoke-arm64 -- true, cold and warm, vs bare qemu-system-aarch64 with -cpu cortex-a57 (vmbuild's) and -cpu max"
    "$vmbuild" run smoke-arm64 -- true 2>/dev/null
    kernel=$("$vmbuild" build tiny-kernel-arm64)/Image
    rootfs=$("$vmbuild" build busybox-rootfs-arm64)/rootfs.cpio.gz
    bundle=$("$vmbuild" build smoke-tests)/bundle.cpio.gz
    bare_qemu_aarch64 bare-arm64 "$kernel" cortex-a57 "true" "$rootfs" "$bundle"
    local bare_a57="$bare"
    bare_qemu_aarch64 bare-arm64-max "$kernel" max "true" "$rootfs" "$bundle"
    measure arm64-run --warmup 1 --runs "${RUNS:-10}" \
        "$bare_a57 >/dev/null" \
        "$bare >/dev/null" \
        "$vmbuild run --cold smoke-arm64 -- true 2>/dev/null" \
        "$vmbuild run smoke-arm64 -- true 2>/dev/null"
}

bench_warm() {
    section "warm starts: one test from the environment's snapshot vs --cold vs bare qemu"
    project="$work/warm"
    mkdir -p "$project/recipes" "$project/tests/one"
    cp -r recipes modules tests vmbuild.lock "$project/"
    printf '#!/bin/sh\necho hi\n' >"$project/tests/one/hi"
    chmod +x "$project/tests/one/hi"
    printf 'kind = "bundle"\ntests = "../tests/one"\n' >"$project/recipes/one-tests.toml"
    printf 'kind = "test"\nkernel = "debian-kernel"\nrootfs = "busybox-rootfs"\nbundles = ["one-tests"]\n' >"$project/recipes/one.toml"
    sed 's/^\[vm\]/[vm]\nisolation = "test"/' recipes/smoke.toml >"$project/recipes/smoke-isolated.toml"
    "$vmbuild" -C "$project" test -f one smoke smoke-isolated >/dev/null 2>&1
    kernel=$("$vmbuild" -C "$project" build debian-kernel)/bzImage
    rootfs=$("$vmbuild" -C "$project" build busybox-rootfs)/rootfs.cpio.gz
    bare_qemu bare-warm "$kernel" "echo hi" "$rootfs"
    measure warm-one --warmup 1 --runs "${RUNS:-5}" \
        "$vmbuild -C $project test -f --cold one >/dev/null 2>&1" \
        "$vmbuild -C $project test -f one >/dev/null 2>&1" \
        "$bare >/dev/null"
    section "making the snapshot (boot, save, run the test) vs a cold run"
    measure warm-make --warmup 1 --runs "${RUNS:-5}" \
        --prepare "rm -rf $VMBUILD_CACHE_DIR/*-env-one" \
        "$vmbuild -C $project test -f --cold one >/dev/null 2>&1" \
        "$vmbuild -C $project test -f one >/dev/null 2>&1"
    section "the smoke suite with isolation = \"test\" (a VM per test) vs sharing one VM, both from the snapshot"
    measure warm-isolation --warmup 1 --runs "${RUNS:-5}" \
        "$vmbuild -C $project test -f smoke >/dev/null 2>&1" \
        "$vmbuild -C $project test -f smoke-isolated >/dev/null 2>&1"
}

# scale_suite PROJECT: 24 tests sleeping 1 to 20 s, their names in no order of their
# durations, as the bundle scale-tests, with test recipes scale-1, scale-2 and scale-4 (that
# many VMs) and scale-start (one trivial test: what one VM start costs).
scale_suite() {
    local project="$1"
    mkdir -p "$project/tests/scale" "$project/tests/start"
    cp -r recipes modules tests vmbuild.lock "$project/"
    for i in $(seq 0 23); do
        seconds=$((1 + (19 * i + 11) / 23))
        name="t$(printf '%02d' $(( (i * 7) % 24 )))"
        printf '#!/bin/sh\nsleep %s\n' "$seconds" >"$project/tests/scale/$name"
        chmod +x "$project/tests/scale/$name"
    done
    printf '#!/bin/sh\ntrue\n' >"$project/tests/start/one"
    chmod +x "$project/tests/start/one"
    printf 'kind = "bundle"\ntests = "../tests/scale"\n' >"$project/recipes/scale-tests.toml"
    printf 'kind = "bundle"\ntests = "../tests/start"\n' >"$project/recipes/start-tests.toml"
    for n in 1 2 4; do
        printf 'kind = "test"\nkernel = "debian-kernel"\nrootfs = "busybox-rootfs"\nbundles = ["scale-tests"]\n[vm]\nvms = %s\n' "$n" >"$project/recipes/scale-$n.toml"
    done
    printf 'kind = "test"\nkernel = "debian-kernel"\nrootfs = "busybox-rootfs"\nbundles = ["start-tests"]\n' >"$project/recipes/scale-start.toml"
}

# timed NAME COMMAND...: runs the command once, appends "NAME seconds" to $work/scale.times.
timed() {
    local name="$1"; shift
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || true
    end=$(date +%s.%N)
    echo "$name $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')" | tee -a "$work/scale.times"
}

bench_scale() {
    section "a suite of 24 tests (1 to 20 s, 252 s in all) on 1, 2 and 4 VMs, against the lower bound"
    project="$work/scale"
    rm -rf "$project" "$work/scale.times"
    scale_suite "$project"
    # Artifacts, the snapshot, and what one VM start costs (from the snapshot).
    "$vmbuild" -C "$project" test -f scale-start >/dev/null 2>&1
    for i in 1 2 3; do timed start "$vmbuild" -C "$project" test -f scale-start; done
    timed vms1 "$vmbuild" -C "$project" test -f scale-1
    for n in 2 4; do
        # By name first (this also records the durations slowest-first orders by).
        timed "vms$n-name" "$vmbuild" -C "$project" test -f --order name "scale-$n"
        timed "vms$n" "$vmbuild" -C "$project" test -f "scale-$n"
    done
    section "a rerun after one test (sleeping 5 s) changed: at most one VM start plus that test"
    changed=$(grep -l 'sleep 5$' "$project"/tests/scale/* | head -1)
    # A change no earlier run of this store made.
    echo "# changed $(date +%s%N)" >>"$changed"
    timed rerun "$vmbuild" -C "$project" test scale-2
    # The bundle changed, so its environment's snapshot is made anew: that start is a boot.
    timed cold-start "$vmbuild" -C "$project" test -f --cold scale-start
    python3 - "$work/scale.times" <<'PY'
import sys
times = {}
for line in open(sys.argv[1]):
    name, secs = line.split()
    times.setdefault(name, []).append(float(secs))
start = sorted(times["start"])[1]
tests = [1 + (19 * i + 11) // 23 for i in range(24)]
total, longest = sum(tests), max(tests)
print(f"one VM start (from the snapshot, one trivial test): {start:.2f} s; tests: {total} s in all, longest {longest} s")
print("| VMs | slowest first | by name | lower bound | slowest / bound | name / slowest |")
print("|---|---|---|---|---|---|")
for n in (1, 2, 4):
    bound = max(longest + start, (total + n * start) / n)
    slow = times[f"vms{n}" if n > 1 else "vms1"][0]
    name = times.get(f"vms{n}-name", [None])[0]
    name_cell = f"{name:.1f} s" if name else "(same: one VM)"
    ratio = f"{name / slow:.2f}x" if name else ""
    print(f"| {n} | {slow:.1f} s | {name_cell} | {bound:.1f} s | {slow / bound:.2f}x | {ratio} |")
cold = times["cold-start"][0]
rerun = times["rerun"][0]
print(f"rerun after one 5 s test changed: {rerun:.1f} s; bound: one VM start ({cold:.1f} s: a boot, the snapshot is new) + 5 s = {cold + 5:.1f} s ({rerun / (cold + 5):.2f}x)")
PY
}

bench_kernel_tree_setup() {
    src="$work/linux-tree"
    if [ ! -d "$src/linux-source-6.1" ]; then
        mkdir -p "$src"
        (cd "$work" && apt-get download -q linux-source-6.1 >/dev/null && dpkg-deb -x linux-source-6.1_*.deb deb)
        tar -xf "$work"/deb/usr/src/linux-source-6.1.tar.xz -C "$src"
        # Debian's tarball ignores every top-level entry (its packaging repo's rule); a
        # kernel.org checkout does not.
        sed -i '/^# Debian packaging/,$d' "$src/linux-source-6.1/.gitignore"
        (cd "$src/linux-source-6.1" && git init -q && git add -A && git -c user.email=b@b -c user.name=b commit -qm tree)
    fi
}

bench_kernel_tree() {
    section "re-keying an unchanged Linux source tree (stat cache) vs git status"
    bench_kernel_tree_setup
    project="$work/ktree"
    mkdir -p "$project/recipes"
    cp -r modules "$project/"
    ln -sfn "$src/linux-source-6.1" "$project/linux"
    printf 'kind = "kernel"\n[source]\npath = "../linux"\n[config]\nbase = "tinyconfig"\n' >"$project/recipes/local.toml"
    "$vmbuild" -C "$project" explain local >/dev/null
    measure kernel-tree --warmup 2 --runs 10 \
        "git -C $src/linux-source-6.1 status --porcelain >/dev/null" \
        "$vmbuild -C $project explain local >/dev/null"
}

bench_kernel_incremental() {
    section "kernel: full build vs incremental rebuild after flipping one driver option"
    project="$work/kinc"
    rm -rf "$project" && mkdir -p "$project"
    cp -r recipes modules vmbuild.lock "$project/"
    rm -rf "$VMBUILD_CACHE_DIR/kbuild"
    start=$(date +%s.%N)
    "$vmbuild" -C "$project" build tiny-kernel >/dev/null
    full=$(echo "$(date +%s.%N) - $start" | bc)
    # A leaf driver: evdev is one file. (An option such as RTC_CLASS that selects others
    # and is tested in widely included headers rebuilds most of the tree: 0.66 here.)
    echo "CONFIG_INPUT_EVDEV=y" >"$project/modules/kconfig/flip.config"
    sed -i 's|fragments = \[|fragments = [\n    "../modules/kconfig/flip.config",|' "$project/recipes/tiny-kernel.toml"
    start=$(date +%s.%N)
    "$vmbuild" -C "$project" build tiny-kernel >/dev/null
    incremental=$(echo "$(date +%s.%N) - $start" | bc)
    echo "full build:        ${full}s"
    echo "incremental build: ${incremental}s"
    echo "ratio:             $(echo "scale=3; $incremental / $full" | bc)"
}

bench_kernel_loop() {
    section "kernel developer's loop: one-line edit in init/main.c, then vmbuild test, vs incremental make -j2 bzImage + bare qemu running the same test"
    bench_kernel_tree_setup
    tree="$src/linux-source-6.1"
    project="$work/kloop"
    rm -rf "$project" && mkdir -p "$project/recipes" "$project/tests/one"
    cp -r recipes modules vmbuild.lock "$project/"
    printf '#!/bin/sh\necho hi\n' >"$project/tests/one/hi"
    chmod +x "$project/tests/one/hi"
    printf 'kind = "bundle"\ntests = "../tests/one"\n' >"$project/recipes/one-tests.toml"
    printf 'kind = "kernel"\n[source]\npath = "%s"\n[config]\nbase = "tinyconfig"\nfragments = ["../modules/kconfig/serial-console.config", "../modules/kconfig/initramfs.config"]\n' "$tree" >"$project/recipes/local.toml"
    printf 'kind = "test"\nkernel = "local"\nrootfs = "busybox-rootfs"\nbundles = ["one-tests"]\n' >"$project/recipes/loop.toml"
    # The edit: a printk whose text changes on every run.
    grep -q vmbuild-bench "$tree/init/main.c" ||
        sed -i 's|^\tpr_notice("%s", linux_banner);|&\n\tpr_notice("vmbuild-bench 0\\n");|' "$tree/init/main.c"
    edit="$work/edit.sh"
    printf '#!/bin/sh\nn=$(date +%%s%%N)\nsed -i "s/vmbuild-bench [0-9]*/vmbuild-bench $n/" %s\n' "$tree/init/main.c" >"$edit"
    chmod +x "$edit"
    # Warm both build folders.
    "$vmbuild" -C "$project" test loop >/dev/null 2>&1
    plain="$work/plain-kbuild"
    if [ ! -f "$plain/arch/x86/boot/bzImage" ]; then
        mkdir -p "$plain"
        make -s -C "$tree" O="$plain" tinyconfig >/dev/null
        repo="$PWD"
        (cd "$plain" && "$tree/scripts/kconfig/merge_config.sh" -m -O "$plain" .config \
            "$repo/modules/kconfig/serial-console.config" "$repo/modules/kconfig/initramfs.config" >/dev/null)
        make -s -C "$tree" O="$plain" olddefconfig >/dev/null
        make -s -C "$tree" O="$plain" -j2 bzImage >/dev/null
    fi
    rootfs=$("$vmbuild" -C "$project" build busybox-rootfs)/rootfs.cpio.gz
    bare_qemu bare-loop "$plain/arch/x86/boot/bzImage" "echo hi" "$rootfs"
    measure kernel-loop --prepare "$edit" --runs 3 \
        "make -s -C $tree O=$plain -j2 bzImage >/dev/null && $bare >/dev/null" \
        "$vmbuild -C $project test loop >/dev/null 2>&1"
    section "cached rerun of the unchanged tree: vmbuild test loop (a hit) vs git status"
    "$vmbuild" -C "$project" test loop >/dev/null 2>&1
    measure kernel-loop-cached --warmup 2 --runs 10 \
        "git -C $tree status --porcelain >/dev/null" \
        "$vmbuild -C $project build local >/dev/null" \
        "$vmbuild -C $project test loop >/dev/null 2>&1"
}

bench_debian_root() {
    section "Debian root with fio and stress-ng: vmbuild build -f vs plain mmdebstrap of the same packages"
    project="$work/debian-project"
    rm -rf "$project" && mkdir -p "$project/recipes" && cp vmbuild.lock "$project/"
    cp recipes/debian-rootfs.toml "$project/recipes/"
    sed 's/^format = "ext4"/format = "tar"/' recipes/debian-rootfs.toml >"$project/recipes/debian-rootfs-tar.toml"
    measure debian-root --runs 3 \
        "mmdebstrap --variant=essential --mode=root --format=tar --quiet --include=fio,stress-ng bookworm $work/plain-debian.tar" \
        "$vmbuild -C $project build -f debian-rootfs-tar >/dev/null 2>&1" \
        "$vmbuild -C $project build -f debian-rootfs >/dev/null 2>&1"
    section "cached rebuild of the Debian root vs /bin/true"
    measure debian-root-cached -N --warmup 10 --runs 100 "/bin/true" "$vmbuild -C $project build debian-rootfs"
}

bench_disk_boot() {
    section "Debian ext4 root booted to the agent (vmbuild run -- true) vs bare qemu booting the same kernel, modules and image to a shell that powers off"
    kernel=$("$vmbuild" build debian-kernel)
    rootfs=$("$vmbuild" build debian-rootfs)
    release=$(ls "$kernel/modules")
    stage="$work/bare-disk-boot"
    rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/modules"
    cp "$rootfs/boot/busybox" "$stage/bin/busybox"
    for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
        crc16 mbcache jbd2 crc32c_generic ext4; do
        find "$kernel/modules/$release" -name "$m.ko" -exec cp {} "$stage/modules/" \;
        echo "$m" >>"$stage/modules/order"
    done
    cat >"$stage/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t devtmpfs dev /dev; mount -t sysfs sys /sys
for m in $(cat /modules/order); do insmod /modules/$m.ko; done
mount -t ext4 /dev/vda /newroot
exec switch_root /newroot /bin/sh -c 'mount -t proc proc /proc; echo hi; echo b >/proc/sysrq-trigger'
INIT
    chmod +x "$stage/init"
    mkdir -p "$stage/proc" "$stage/dev" "$stage/sys" "$stage/newroot"
    (cd "$stage" && find . | cpio -o -H newc --quiet | gzip) >"$work/bare-disk-boot.img"
    bare="qemu-system-x86_64 -machine q35 -accel tcg -m 512 -smp 1 -nodefaults -display none -no-reboot -nic none -kernel $kernel/bzImage -initrd $work/bare-disk-boot.img -append 'console=ttyS0 rdinit=/init panic=-1' -serial stdio -serial null -drive file=$rootfs/rootfs.ext4,format=raw,if=none,id=d0,snapshot=on -device virtio-blk-pci,drive=d0"
    measure disk-boot --warmup 1 --runs 5 \
        "$bare >/dev/null" \
        "$vmbuild run --kernel debian-kernel --rootfs debian-rootfs -- true >/dev/null 2>&1"
}

# start_nginx: a WebDAV nginx on 127.0.0.1:18480 serving $work/nginx/root (as tests/remote.rs).
start_nginx() {
    local d="$work/nginx"
    rm -rf "$d" && mkdir -p "$d/root" "$d/tmp"
    cat >"$d/nginx.conf" <<CONF
daemon off; master_process off; pid $d/nginx.pid; error_log $d/error.log;
events {}
http {
  access_log off;
  client_body_temp_path $d/tmp; proxy_temp_path $d/tmp; fastcgi_temp_path $d/tmp;
  uwsgi_temp_path $d/tmp; scgi_temp_path $d/tmp;
  server { listen 127.0.0.1:18480; root $d/root; client_max_body_size 0;
    location / { dav_methods PUT DELETE; create_full_put_path on; } }
}
CONF
    nginx -c "$d/nginx.conf" -p "$d" &
    nginx_pid=$!
    trap 'kill $nginx_pid 2>/dev/null' EXIT
    for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18480/ && return; sleep 0.05; done
    echo "nginx did not start: $(cat "$d/error.log")" >&2; exit 1
}

bench_uefi() {
    section "a bootable disk from the stored kernel and root (vmbuild build -f busybox-disk) vs a shell script: objcopy, sgdisk, mkfs.vfat + mcopy, dd"
    kernel=$("$vmbuild" build debian-kernel)
    root=$("$vmbuild" build busybox-ext4)
    disk=$("$vmbuild" build busybox-disk)
    script="$work/uefi-disk.sh"
    # The script gets what vmbuild's builder starts from: the stub, the kernel, the
    # initramfs and command line (taken out of vmbuild's UKI once), the root's ext4 image.
    stub_sha=$(awk '/name = "systemd-boot-efi"/ {f = 1} f && /^sha256/ {gsub(/"/, "", $3); print $3; exit}' vmbuild.lock)
    stub_deb="$VMBUILD_CACHE_DIR/downloads/$stub_sha.deb"
    rm -rf "$work/uefi" && mkdir -p "$work/uefi/stub"
    dpkg-deb -x "$stub_deb" "$work/uefi/stub"
    mcopy -n -i "$disk@@1M" ::EFI/BOOT/BOOTX64.EFI "$work/uefi/uki.efi"
    objcopy -O binary --only-section=.initrd "$work/uefi/uki.efi" "$work/uefi/initrd.cpio"
    objcopy -O binary --only-section=.cmdline "$work/uefi/uki.efi" "$work/uefi/cmdline"
    cat >"$script" <<SCRIPT
#!/bin/sh
set -e
cd "$work/uefi"
stub=stub/usr/lib/systemd/boot/efi/linuxx64.efi.stub
objcopy --add-section .cmdline=cmdline --change-section-vma .cmdline=0x1a000 \
    --add-section .initrd=initrd.cpio --change-section-vma .initrd=0x1b000 \
    --add-section .linux=$kernel/bzImage --change-section-vma .linux=0x\$(printf %x \$(( (0x1b000 + \$(stat -c%s initrd.cpio) + 4095) / 4096 * 4096 ))) \
    \$stub uki.out
rm -f disk.img esp.img
root_bytes=\$(stat -c%s $root/rootfs.ext4)
truncate -s \$(( (66 << 20) + root_bytes + (1 << 20) )) disk.img
sgdisk -q -n1:2048:+64M -t1:ef00 -n2:0:+\$((root_bytes / 1024))K -t2:4f68bce3-e8cd-4db1-96e7-fbcaf984b709 disk.img
truncate -s 64M esp.img
mkfs.vfat -F 32 -s 1 -n ESP esp.img >/dev/null
mmd -i esp.img ::EFI ::EFI/BOOT
mcopy -i esp.img uki.out ::EFI/BOOT/BOOTX64.EFI
dd if=esp.img of=disk.img bs=1M seek=1 conv=notrunc,sparse status=none
dd if=$root/rootfs.ext4 of=disk.img bs=1M seek=65 conv=notrunc,sparse status=none
SCRIPT
    chmod +x "$script"
    measure uefi-build --warmup 2 --runs 10 \
        "$script" \
        "$vmbuild build -f busybox-disk >/dev/null 2>&1"
    section "UEFI boot of the disk to the agent vs direct kernel boot of the same kernel and ext4 root (vmbuild run --cold -- true), and the disk's warm start"
    "$vmbuild" run --kernel debian-kernel --rootfs busybox-disk -- true >/dev/null 2>&1
    measure uefi-boot --warmup 1 --runs 5 \
        "$vmbuild run --cold --kernel debian-kernel --rootfs busybox-ext4 -- true >/dev/null 2>&1" \
        "$vmbuild run --cold --kernel debian-kernel --rootfs busybox-disk -- true >/dev/null 2>&1" \
        "$vmbuild run --kernel debian-kernel --rootfs busybox-disk -- true >/dev/null 2>&1"
}

bench_remote() {
    start_nginx
    local url=http://127.0.0.1:18480/cache
    section "pull the debian-rootfs entry (512 MiB ext4, sparse) from nginx vs curl fetching its files"
    "$vmbuild" build debian-rootfs >/dev/null
    "$vmbuild" --remote-cache "$url" push debian-rootfs
    local entry pulled="$work/pulled"
    entry=$("$vmbuild" build debian-rootfs)
    # The same files, fetched by curl in parallel (as many at once as vmbuild's transfers).
    local curl_args=()
    while read -r rel sha; do
        curl_args+=(-o "$pulled/curl/$rel" "$url/cas/$sha")
    done < <(python3 -c '
import json, sys
for rel, e in json.load(open(sys.argv[1]))["outputs"].items():
    if e["type"] == "file":
        print(rel, e["sha256"])' "$entry/manifest.json")
    # The second vmbuild run starts from a store that knows its tools' versions, as any
    # store does after its first run: the difference is probing mmdebstrap --version.
    measure remote-pull --warmup 1 --runs 5 \
        --prepare "rm -rf $pulled && mkdir -p $pulled/curl/boot $pulled/store && cp $work/store/tools.json $pulled/store/" \
        "curl -s --parallel --parallel-max 8 ${curl_args[*]}" \
        "$vmbuild --cache-dir $pulled/store --remote-cache $url build debian-rootfs" \
        "rm -f $pulled/store/tools.json && $vmbuild --cache-dir $pulled/store --remote-cache $url build debian-rootfs"

    section "vmbuild test smoke on an empty store: warm remote vs warm local store"
    "$vmbuild" test smoke >/dev/null
    "$vmbuild" --remote-cache "$url" push smoke >/dev/null
    measure remote-cold-ci --warmup 1 --runs 10 \
        --prepare "rm -rf $pulled" \
        "$vmbuild test smoke" \
        "$vmbuild --cache-dir $pulled/store --remote-cache $url test smoke"

    section "vmbuild test -f smoke (tests rerun): kernel, root and bundle from the remote vs local"
    measure remote-cold-rerun --warmup 1 --runs 3 \
        --prepare "rm -rf $pulled" \
        "$vmbuild test -f smoke >/dev/null 2>&1" \
        "$vmbuild --cache-dir $pulled/store --remote-cache $url test -f smoke >/dev/null 2>&1"
}

case "$which" in
    cached) bench_cached ;;
    keying) bench_keying ;;
    cpio) bench_cpio ;;
    boot) bench_boot ;;
    run) bench_run ;;
    kernel-tree) bench_kernel_tree ;;
    kernel-incremental) bench_kernel_incremental ;;
    kernel-loop) bench_kernel_loop ;;
    debian-root) bench_debian_root ;;
    disk-boot) bench_disk_boot ;;
    uefi) bench_uefi ;;
    warm) bench_warm ;;
    arm64) bench_arm64 ;;
    scale) bench_scale ;;
    remote) bench_remote ;;
    all) bench_cached; bench_keying; bench_cpio; bench_boot; bench_run; bench_kernel_tree; bench_kernel_incremental; bench_kernel_loop; bench_debian_root; bench_disk_boot; bench_uefi; bench_warm; bench_arm64; bench_scale; bench_remote ;;
    *) echo "unknown benchmark: $which" >&2; exit 2 ;;
esac
