#!/bin/sh
# vmbuild guest agent: PID 1 of every test VM (booted with rdinit=/vmbuild/init, or
# started by stage 1, /vmbuild/boot/init, once a disk root is mounted).
# It mounts the basics, then pulls tests from the host over a dedicated serial port
# (ttyS1 unless vmbuild.channel= says otherwise: hvc0 on aarch64), runs each with its
# timeout, and reports start, output and exit status. The kernel console (ttyS0, or
# ttyAMA0) stays separate.
# The line protocol is documented in docs/guest-protocol.md. POSIX sh, and tools that
# both busybox and Debian's essential set have; what a Debian root lacks (awk, reboot)
# comes from the static busybox in /vmbuild/bin, when vmbuild put it there.

# The tests' PATH: the root's own tools first, busybox's where the root has none.
test_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/vmbuild/bin
# The agent's: static busybox first (dynamic binaries start slowly under TCG).
export PATH="/vmbuild/bin:$test_path"
# A cpio root that brought vmbuild's busybox (a Debian root, whose essential set has no
# mount) gets its applets linked first; stage 1 has done that already for a disk root.
if [ -x /vmbuild/bin/busybox ] && [ ! -e /vmbuild/bin/mount ]; then
    /vmbuild/bin/busybox --install -s /vmbuild/bin
fi
# A test's `kill -INT 1` must not end PID 1 (the kernel would panic).
trap : INT
export HOME=/root
for dir in /proc /sys /dev /tmp /run /root; do [ -d "$dir" ] || mkdir -p "$dir"; done
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null

# The links udev or systemd would make in /dev, which scripts write to.
for fd in stdin:0 stdout:1 stderr:2; do
    [ -e "/dev/${fd%:*}" ] || ln -s "/proc/self/fd/${fd#*:}" "/dev/${fd%:*}"
done
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd

# Power off: busybox's reboot when vmbuild brought one (a Debian root's own reboot may
# want an init system), else the root's. qemu runs with -no-reboot, so it exits.
power_off() {
    sync
    if [ -x /vmbuild/bin/busybox ]; then /vmbuild/bin/busybox reboot -f; fi
    reboot -f
}

# Kernel modules vmbuild packed for the VM's disks (a cpio root on a modular kernel).
if [ -r /vmbuild/boot/modules.load ]; then
    while read -r module; do
        insmod "/vmbuild/boot/modules/$module.ko" || echo "vmbuild: insmod $module failed" >/dev/console
    done </vmbuild/boot/modules.load
fi

# Disks by name: /dev/disk/by-id/virtio-<serial> as udev would link them, and for each
# scratch disk VMBUILD_DISK_<NAME>=/dev/vdX (name upper-cased, - as _) for the tests.
mkdir -p /dev/disk/by-id
for serial_file in /sys/block/*/serial; do
    [ -r "$serial_file" ] || continue
    # sysfs ends the serial without a newline: read fails but fills $serial.
    serial=
    IFS= read -r serial <"$serial_file"
    case "$serial" in "" | *[!a-z0-9_-]*) continue ;; esac
    dev=${serial_file%/serial}
    dev=${dev##*/}
    ln -sf "../../$dev" "/dev/disk/by-id/virtio-$serial"
    case "$serial" in vmbuild*) continue ;; esac
    export "VMBUILD_DISK_$(printf '%s' "$serial" | tr 'a-z-' 'A-Z_')=/dev/$dev"
done

chan=/dev/ttyS1
# The --keep-alive shell's port.
hold=/dev/ttyS2
# The most of a test's output relayed, and the longest line; the host keeps no more.
maxlog=8388608
maxline=65536
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmbuild.channel=*) chan="/dev/${arg#vmbuild.channel=}" ;;
        vmbuild.hold=*) hold="/dev/${arg#vmbuild.hold=}" ;;
        vmbuild.maxlog=*) maxlog="${arg#vmbuild.maxlog=}" ;;
        vmbuild.maxline=*) maxline="${arg#vmbuild.maxline=}" ;;
    esac
done

# A virtio console's port appears once its driver has heard of it from the host, which
# may be after PID 1 starts: wait up to 10 s for it.
tries=0
while [ ! -c "$chan" ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 200 ]; then
        echo "vmbuild: no agent channel $chan: the kernel needs its driver (CONFIG_VIRTIO_CONSOLE for hvc0, modules/kconfig/aarch64-virt.config)" >/dev/console
        power_off
    fi
    sleep 0.05
done
stty -F "$chan" raw -echo 2>/dev/null
exec 3<>"$chan"
say() { printf '%s\n' "$*" >&3; }

# run_test NAME TIMEOUT_SECONDS PATH
run_test() {
    name=$1 limit=$2 path=$3
    log=/tmp/vmbuild-test.log
    marker=/tmp/vmbuild-timed-out
    rm -f "$marker"
    say "VMBUILD BEGIN $name"
    # setsid: the test leads its own process group, so a timeout kills all of it.
    rm -f "$log"
    # 3>&-: the test does not get the agent's channel.
    (cd "${path%/*}" && export PATH="$test_path" && exec setsid "$path") >"$log" 2>&1 </dev/null 3>&- &
    pid=$!
    # The watchdog and the heartbeat (the host replaces a VM that goes silent while a
    # test runs) each lead a process group, killed whole: no orphan of theirs (a `sleep`)
    # ends later. PID 1 reaps every orphan, and the signal of one can cut short the
    # agent's read of its next command.
    setsid sh -c 'sleep "$1"; : >"$2"; kill -9 -"$3" 2>/dev/null; kill -9 "$3" 2>/dev/null' \
        watchdog "$limit" "$marker" "$pid" &
    watchdog=$!
    setsid sh -c 'while sleep 2; do printf "VMBUILD ALIVE\n"; done' >&3 &
    beat=$!
    wait "$pid"
    rc=$?
    # Gone before anything else writes to the channel; the line end closes what a kill
    # in the middle of a write left of its line (the host ignores an empty line).
    kill -9 -"$beat" "$beat" 2>/dev/null
    wait "$beat" 2>/dev/null
    printf '\n' >&3
    kill -9 -"$watchdog" "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    # What the test left running in its group goes with it, not into the next test.
    kill -9 -"$pid" 2>/dev/null
    # Relay the start of the output, each line cut at maxline; a flood is not sent on.
    size=$(wc -c <"$log")
    head -c "$maxlog" "$log" | awk -v p="VMBUILD LOG $name " -v max="$maxline" '
        { if (length($0) > max) { $0 = substr($0, 1, max); cut = 1 } print p $0 }
        END { exit cut }' >&3
    if [ $? -ne 0 ] || [ "$size" -gt "$maxlog" ]; then
        say "VMBUILD TRUNCATED $name $size"
    fi
    if [ -e "$marker" ]; then
        say "VMBUILD END $name timeout"
    else
        say "VMBUILD END $name $rc"
    fi
}

# decode_arg OCTAL: sets $arg to the bytes OCTAL spells, three octal digits a byte (the
# host's encoding of one EXEC argument: any byte, newlines included, survives the line).
decode_arg() {
    case "$1" in *[!0-7]*) return 1 ;; esac
    # printf turns each \ooo into its byte; the x keeps trailing newlines from $(...).
    arg=$(printf "$(printf '%s' "$1" | sed 's/.../\\&/g')x")
    arg=${arg%x}
}

# relay FD END: each line read becomes `VMBUILD OUT FD <line>` on stdout as it comes, long
# lines in `VMBUILD PART FD <piece>`s. Every protocol line is at most 1,016 bytes and
# flushed on its own, so it leaves awk in one write() (stdio buffers hold at least 1 KiB)
# and, under PIPE_BUF, enters the pipe both relays share whole: the two streams' lines
# never mix. END (a marker no output holds: it carries a fresh random id) follows the
# command's last byte: the text before it is relayed as a PART (output that does not end
# in a newline arrives unchanged) and the relay stops there, even if a background child
# of the command still holds the pipe open.
relay() {
    awk -v fd="$1" -v end="$2" -v max=1000 '
    {
        line = $0; last = 0
        at = index(line, end)
        if (at) { line = substr(line, 1, at - 1); last = 1 }
        n = length(line)
        for (i = 1; n - i + 1 > max; i += max) {
            print "VMBUILD PART " fd " " substr(line, i, max); fflush()
        }
        line = substr(line, i)
        if (!last) print "VMBUILD OUT " fd " " line
        else if (line != "") print "VMBUILD PART " fd " " line
        fflush()
        if (last) exit
    }'
}

# run_exec ARGC: reads ARGC encoded arguments from the channel and runs them as a command
# (`vmbuild run`), in /, stdin from /dev/null, stdout and stderr relayed as they come.
run_exec() {
    argc=$1
    set --
    while [ "$#" -lt "$argc" ]; do
        IFS= read -r enc <&3 && decode_arg "$enc" || { say "VMBUILD EXIT 126"; return; }
        set -- "$@" "$arg"
    done
    rcfile=/tmp/vmbuild-exec.rc
    echo 127 >"$rcfile"
    id=$(cat /proc/sys/kernel/random/uuid 2>/dev/null) || id=$$-$(date +%s)
    eof=$(printf '\001vmbuild-eof-%s\001' "$id")
    # fd 4: the stdout pipe, fd 5: the pipe to the one writer of the channel (cat). The
    # command keeps neither, nor the channel. Once it exits, each stream gets the end
    # marker after its last byte; each relay stops at its marker, so what a background
    # child writes later (or its holding a pipe open) cannot delay EXIT.
    {
        {
            {
                (
                    cd /
                    export PATH="$test_path"
                    command -v "$1" >/dev/null 2>&1 || {
                        printf '%s: command not found\n' "$1" >&2
                        exit 127
                    }
                    exec "$@"
                ) </dev/null 3>&- 4>&- 5>&-
                echo "$?" >"$rcfile"
                printf '%s\n' "$eof"
                printf '%s\n' "$eof" >&2
            } 2>&1 1>&4 4>&- | relay 2 "$eof" 4>&- >&5
        } 4>&1 | relay 1 "$eof" >&5
    } 5>&1 | cat >&3
    say "VMBUILD EXIT $(cat "$rcfile")"
}

say "VMBUILD READY $(uname -r)"
# The host answers WAKE. The VM may be saved while it waits here and many VMs restored
# from that state: each gets host randomness for its random pool (a kernel with a VM
# generation ID reseeds at once on restore too) and the time, which the state froze.
# A read cut short by a signal is tried again; a channel that keeps failing ends the wait.
failed=0
while [ "$failed" -lt 100 ]; do
    IFS=' ' read -r cmd seed now <&3 || { failed=$((failed + 1)); continue; }
    [ "$cmd" = WAKE ] && break
done
printf '%s\n' "$seed" >/dev/urandom
case "$now" in
    "" | *[!0-9]*) ;;
    *) date -u -s "@$now" >/dev/null 2>&1 ;;
esac
while :; do
    say "VMBUILD NEXT"
    failed=0
    until IFS=' ' read -r cmd name limit path <&3; do
        failed=$((failed + 1))
        [ "$failed" -lt 100 ] || break 2
    done
    case "$cmd" in
        RUN) run_test "$name" "$limit" "$path" ;;
        EXEC) run_exec "$name" ;;
        SHELL)
            # `vmbuild shell`: a login shell on the console (the user's terminal), then
            # power off.
            echo "vmbuild shell: the test's VM. 'exit' powers it off." >/dev/console
            (
                export PATH="$test_path"
                if command -v cttyhack >/dev/null 2>&1; then exec setsid cttyhack sh -l; fi
                exec sh -l
            ) </dev/console >/dev/console 2>&1 3>&-
            break
            ;;
        HOLD)
            # --keep-alive: a test failed; give the user a shell on the third serial port
            # and power off when it exits.
            # The port stays open from here on: closing a serial tty drops its input.
            exec 4<>"$hold"
            echo "vmbuild: kept alive after a failed test; its output is in /tmp/vmbuild-test.log" >&4
            say "VMBUILD HELD ${hold#/dev/}"
            setsid -c sh -i <&4 >&4 2>&4 || setsid sh -i <&4 >&4 2>&4
            break
            ;;
        *) break ;;
    esac
done
say "VMBUILD DONE"
power_off
