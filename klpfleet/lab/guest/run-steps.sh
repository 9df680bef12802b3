#!/bin/sh
# Selftest-style steps on a lab VM, like the kernel's tools/testing/selftests/livepatch/functions.sh:
# reads "ACTION TARGET [PARAMS...]" lines on stdin, logs each command to the kernel log as the selftests
# do, and finally prints the kernel log (without timestamps) since the first step. Test modules are in
# /root/test_modules. Exit 1 with one line on stderr when a step does not behave.
set -u
cd /root || exit 1

log() { echo "$1" > /dev/kmsg; }
fail() { echo "$1" >&2; exit 1; }
wait_until() {
	what=$1
	shift
	tries=0
	while ! "$@"; do
		tries=$((tries + 1))
		[ "$tries" -ge 600 ] && fail "$what"
		sleep 0.1
	done
}
transition_done() { [ "$(cat "/sys/kernel/livepatch/$1/transition" 2>/dev/null)" = 0 ]; }
patch_gone() { [ ! -e "/sys/kernel/livepatch/$1" ]; }
transition_done_or_gone() { patch_gone "$1" || transition_done "$1"; }
refcnt_zero() { [ "$(cat "/sys/module/$1/refcnt" 2>/dev/null)" = 0 ]; }

# The selftests' setup: livepatch debug lines on, the per-task retry lines off (printed by klp_check_stack
# on 5.10, by klp_try_switch_task on 6.1 and later: each kernel knows only one of them).
echo 'file kernel/livepatch/* +p' > /sys/kernel/debug/dynamic_debug/control
echo 'func klp_try_switch_task -p' > /sys/kernel/debug/dynamic_debug/control 2>/dev/null
echo 'func klp_check_stack -p' > /sys/kernel/debug/dynamic_debug/control 2>/dev/null
dmesg -C

while read -r action target params; do
	[ -z "$action" ] && continue
	ko="test_modules/$target.ko"
	case "$action" in
	load_mod | load_lp | load_lp_nowait)
		log "% insmod $ko${params:+ $params}"
		# $params is word-split on purpose: insmod takes one argument per parameter.
		# shellcheck disable=SC2086
		out=$(insmod "$ko" $params 2>&1) || fail "$action $target: $out"
		[ "$action" = load_lp ] && wait_until "failed to complete transition of $target" transition_done "$target"
		;;
	load_failing_mod)
		log "% insmod $ko${params:+ $params}"
		# shellcheck disable=SC2086
		if out=$(insmod "$ko" $params 2>&1); then
			fail "load_failing_mod $target: the module loaded"
		fi
		log "$out"
		;;
	set_pre_patch_ret)
		log "% echo $params > /sys/module/$target/parameters/pre_patch_ret"
		echo "$params" > "/sys/module/$target/parameters/pre_patch_ret"
		;;
	disable_lp)
		log "% echo 0 > /sys/kernel/livepatch/$target/enabled"
		echo 0 > "/sys/kernel/livepatch/$target/enabled" || fail "disable_lp $target: write failed"
		wait_until "failed to disable livepatch $target" patch_gone "$target"
		;;
	unload_lp | unload_mod)
		wait_until "module $target refcnt never reached 0" refcnt_zero "$target"
		log "% rmmod $target"
		out=$(rmmod "$target" 2>&1) || fail "$action $target: $out"
		;;
	force_lp)
		log "% echo 1 > /sys/kernel/livepatch/$target/force"
		echo 1 > "/sys/kernel/livepatch/$target/force" || fail "force_lp $target: write failed"
		wait_until "failed to complete the forced transition of $target" transition_done_or_gone "$target"
		;;
	try_unload)
		# rmmod whatever the reference count says, logging the answer: what a force pins differs by kernel.
		tries=0
		while ! refcnt_zero "$target" && [ "$tries" -lt 20 ]; do sleep 0.1; tries=$((tries + 1)); done
		log "% rmmod $target"
		out=$(rmmod "$target" 2>&1) || log "$out"
		;;
	sleep)
		sleep "$target"
		;;
	*)
		fail "unknown step $action"
		;;
	esac
done

# Let the last lines reach the log buffer before reading it.
sleep 0.2
dmesg --notime
