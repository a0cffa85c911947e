package testlab

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// nsPrefix starts the name of every namespace a lab makes; the creating
// process's PID follows, so that a later run can tell leftovers of a dead
// run from namespaces of a live one.
const nsPrefix = "mt"

// sweep removes namespaces left by test runs whose process is gone, and
// kills what still runs in them.
func sweep() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, nsPrefix) {
			continue
		}
		digits := strings.TrimLeft(name[len(nsPrefix):], "0123456789")
		pid, err := strconv.Atoi(name[len(nsPrefix) : len(name)-len(digits)])
		if err != nil || pidAlive(pid) {
			continue
		}
		removeNetns(name)
	}
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// removeNetns kills every process in the namespace, then deletes it.
func removeNetns(name string) {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	exec.Command("ip", "netns", "del", name).Run()
}
