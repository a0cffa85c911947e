package leakcheck

import (
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

// parkedForLeakTest is a function name the leaked goroutine's stack shows.
func parkedForLeakTest(stop chan struct{}) { <-stop }

func TestLeaked(t *testing.T) {
	before := Goroutines()
	stop := make(chan struct{})
	go parkedForLeakTest(stop)
	leaked := Leaked(before, 100*time.Millisecond)
	if len(leaked) != 1 || !strings.Contains(leaked[0], "parkedForLeakTest") {
		t.Fatalf("Leaked found %d goroutines, want the parked one:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
	close(stop)
	if leaked := Leaked(before, 5*time.Second); len(leaked) != 0 {
		t.Errorf("after it ended Leaked still finds:\n%s", strings.Join(leaked, "\n\n"))
	}
}
