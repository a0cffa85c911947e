package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// ignored are stack substrings of goroutines the runtime or the standard
// library own.
var ignored = []string{
	"net/http.(*persistConn).readLoop",
	"net/http.(*persistConn).writeLoop",
	"os/signal.signal_recv",
	"os/signal.loop",
	"testing.(*M).",
	"testing.tRunner",
	"testing.runTests",
	"runtime.ensureSigM",
}

// Main runs the tests, then fails (exit status 1) if goroutines started
// during them are still running after wait (5 s: long enough for
// goroutines that are being stopped to end).
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main without the exit: it returns the exit status.
func Run(m *testing.M) int {
	before := Goroutines()
	code := m.Run()
	if code == 0 {
		if leaked := Leaked(before, 5*time.Second); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "leakcheck: %d goroutines still running after the tests:\n\n%s\n", len(leaked), strings.Join(leaked, "\n\n"))
			code = 1
		}
	}
	return code
}

// Leaked returns the stacks of goroutines running now that were not in
// before (from Goroutines), waiting up to wait for them to
// end.
func Leaked(before map[string]bool, wait time.Duration) []string {
	deadline := time.Now().Add(wait)
	for {
		var leaked []string
		for id, stack := range stacks() {
			if !before[id] && !isIgnored(stack) {
				leaked = append(leaked, stack)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			slices.Sort(leaked)
			return leaked
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Goroutines returns the IDs of the goroutines running now.
func Goroutines() map[string]bool {
	ids := map[string]bool{}
	for id := range stacks() {
		ids[id] = true
	}
	return ids
}

// stacks returns every goroutine's stack but the caller's, by goroutine ID.
func stacks() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 {
			continue // this goroutine
		}
		// "goroutine 42 [select]:"
		id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
		out[id] = g
	}
	return out
}

func isIgnored(stack string) bool {
	for _, s := range ignored {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}
