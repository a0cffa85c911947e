package testlab

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
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

// removeNetns ends every process in the namespace, then deletes it.
// Processes get SIGTERM first, so that userspace WireGuard devices remove
// their UAPI sockets, and SIGKILL after two seconds.
func removeNetns(name string) {
	pids := func() []int {
		var out []int
		b, err := exec.Command("ip", "netns", "pids", name).Output()
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				out = append(out, pid)
			}
		}
		return out
	}
	for _, pid := range pids() {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	for deadline := time.Now().Add(2 * time.Second); len(pids()) > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	for _, pid := range pids() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	exec.Command("ip", "netns", "del", name).Run()
}
