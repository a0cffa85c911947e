package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"meshd.dev/meshd/internal/testlab"
)

const pingInterval = 50 * time.Millisecond

var (
	pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
	pingReply = regexp.MustCompile(`bytes from .* icmp_seq=(\d+) `)
	pingRTT   = regexp.MustCompile(`= [\d.]+/[\d.]+/([\d.]+)/`)
)

// maxRTT is the slowest echo's round trip in ping's summary, or "?".
func maxRTT(log string) string {
	if m := pingRTT.FindStringSubmatch(log); m != nil {
		return m[1] + "ms"
	}
	return "?"
}

// unanswered reads the log of a ping that ran without -q and was stopped
// by an interrupt: how many echoes it sent and the sequence numbers of
// those never answered. The last echo may have been in flight when the
// interrupt came (ping then counts it lost though its reply may be on
// the way), so it is left out.
func unanswered(log string) (sent int, lost []int) {
	m := pingStats.FindStringSubmatch(log)
	if m == nil {
		return 0, nil
	}
	sent, _ = strconv.Atoi(m[1])
	answered := map[int]bool{}
	for _, r := range pingReply.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(r[1])
		answered[n] = true
	}
	for seq := 1; seq < sent; seq++ {
		if !answered[seq] {
			lost = append(lost, seq)
		}
	}
	return sent, lost
}

// pingDuring sends echoes from a to b's mesh address every 50ms for window
// while phase runs, and fails the test if a single one is lost.
func pingDuring(t *testing.T, a, b *node, window time.Duration, phase func()) {
	t.Helper()
	sent, got := pingCount(t, a, b, pingInterval, window, phase)
	if got != sent {
		t.Errorf("ping %s -> %s: %d sent, %d received; want all answered", a.Name, b.Name, sent, got)
	} else {
		t.Logf("ping %s -> %s: %d/%d echoes answered over %s", a.Name, b.Name, got, sent, window)
	}
}

// pingCount sends echoes from a to b's mesh address every interval for
// window while phase runs and returns how many were sent and answered.
// phase must finish within window; the ping then runs to its end, so no
// echo is cut off in flight.
func pingCount(t *testing.T, a, b *node, interval, window time.Duration, phase func()) (sent, received int) {
	t.Helper()
	count := int(window / interval)
	p := a.Start(fmt.Sprintf("ping-%s-%d.log", b.Name, time.Now().UnixNano()), "ping", "-n", "-q",
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "1", "-c", strconv.Itoa(count),
		b.meshAddr().String())
	start := time.Now()
	phase()
	if took := time.Since(start); took > window {
		t.Errorf("the phase took %s, longer than the %s ping window", took, window)
	}
	exited, _ := p.Wait(window + 30*time.Second)
	if !exited {
		t.Fatalf("ping %s -> %s did not finish", a.Name, b.Name)
	}
	m := pingStats.FindStringSubmatch(p.Log())
	if m == nil {
		t.Fatalf("no statistics from ping %s -> %s:\n%s", a.Name, b.Name, p.Log())
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	if sent != count {
		t.Errorf("ping %s -> %s sent %d echoes, want %d", a.Name, b.Name, sent, count)
	}
	t.Logf("ping %s -> %s: slowest echo %s", a.Name, b.Name, maxRTT(p.Log()))
	return sent, received
}

// restart stops meshd on n with sig and starts it again.
func restart(t *testing.T, n *node, sig syscall.Signal) {
	t.Helper()
	n.proc.Signal(sig)
	if exited, _ := n.proc.Wait(10 * time.Second); !exited {
		t.Fatalf("meshd on %s did not exit on %v", n.Name, sig)
	}
	n.start(t)
}

// waitConverged waits for n's own status to say converged with the
// catalog answering.
func waitConverged(t *testing.T, n *node) {
	t.Helper()
	testlab.Eventually(t, 60*time.Second, n.Name+" reports converged with the catalog reachable", func() bool {
		st, err := n.status(t)
		return err == nil && st.Converged && st.Catalog.Reachable
	})
}

// TestSurvivesConsul runs two hosts on a 3-server Consul cluster, each with
// its own client agent, and pings between them without losing an echo
// while the cluster and meshd itself fail in every way the design names.
func TestSurvivesConsul(t *testing.T) {
	lab := testlab.NewLab(t)
	servers := lab.StartConsulCluster(3)
	h1 := newNode(t, lab, servers, 1, "removal_grace: 1m\n")
	h2 := newNode(t, lab, servers, 2, "removal_grace: 1m\n")
	nodes := []*node{h1, h2}
	startAll(t, nodes...)
	pingAll(t, nodes)
	linkBefore, err := linkIndex(h1)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("the leader is killed", func(t *testing.T) {
		pingDuring(t, h1, h2, 20*time.Second, func() {
			leader := testlab.Leader(t, servers)
			leader.Kill()
			testlab.Leader(t, servers)
			leader.Start(t)
		})
	})

	t.Run("all servers stop for 30s", func(t *testing.T) {
		pingDuring(t, h1, h2, 60*time.Second, func() {
			for _, s := range servers {
				s.Stop()
			}
			testlab.Eventually(t, 30*time.Second, "meshd sees the catalog down", func() bool {
				st, err := h1.status(t)
				return err == nil && !st.Catalog.Reachable
			})
			time.Sleep(30 * time.Second)
			for _, s := range servers {
				s.Start(t)
			}
			testlab.Leader(t, servers)
		})
		waitConverged(t, h1)
		waitConverged(t, h2)
	})

	t.Run("meshd restarted by SIGTERM", func(t *testing.T) {
		pingDuring(t, h1, h2, 10*time.Second, func() {
			restart(t, h1, syscall.SIGTERM)
			waitConverged(t, h1)
		})
	})

	t.Run("meshd killed with SIGKILL and restarted; stale tagged routes cleaned up", func(t *testing.T) {
		pingDuring(t, h1, h2, 10*time.Second, func() {
			h1.proc.Signal(syscall.SIGKILL)
			h1.proc.Wait(10 * time.Second)
			// A tagged route meshd no longer wants, as a crash could leave.
			if out, err := h1.Exec("ip", "-6", "route", "add", "fdaa:0:77::/48", "dev", h1.iface, "proto", "77"); err != nil {
				t.Fatalf("add stale route: %v: %s", err, out)
			}
			h1.start(t)
			waitConverged(t, h1)
		})
		if strings.Contains(h1.meshRoutes(t), "fdaa:0:77::/48") {
			t.Error("the stale tagged route survived the restart")
		}
	})

	t.Run("meshd restarted while Consul is down re-applies its snapshot", func(t *testing.T) {
		pingDuring(t, h1, h2, 40*time.Second, func() {
			for _, s := range servers {
				s.Stop()
			}
			restart(t, h1, syscall.SIGTERM)
			testlab.Eventually(t, 20*time.Second, "h1 runs from its snapshot", func() bool {
				st, err := h1.status(t)
				return err == nil && st.Catalog.SnapshotInUse && !st.LastReconcile.IsZero()
			})
			for _, s := range servers {
				s.Start(t)
			}
			testlab.Leader(t, servers)
			waitConverged(t, h1)
		})
	})

	// Through all of it the link was never recreated and every peer stayed.
	if idx, err := linkIndex(h1); err != nil || idx != linkBefore {
		t.Errorf("h1's link index %d -> %d (%v): the link was recreated", linkBefore, idx, err)
	}
	converged(t, nodes)
}

func TestUnanswered(t *testing.T) {
	reply := func(seq int) string {
		return fmt.Sprintf("64 bytes from fdaa:0:2::1: icmp_seq=%d ttl=64 time=0.1 ms\n", seq)
	}
	stats := func(sent, got int) string {
		return fmt.Sprintf("\n--- ping statistics ---\n%d packets transmitted, %d received\n", sent, got)
	}
	for _, tc := range []struct {
		name string
		log  string
		sent int
		lost []int
	}{
		{"all answered", reply(1) + reply(2) + reply(3) + stats(3, 3), 3, nil},
		{"last in flight", reply(1) + reply(2) + stats(3, 2), 3, nil},
		{"one lost in the middle", reply(1) + reply(3) + stats(4, 2), 4, []int{2}},
		{"none answered", stats(3, 0), 3, []int{1, 2}},
		{"no statistics", reply(1), 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sent, lost := unanswered(tc.log)
			if sent != tc.sent {
				t.Errorf("sent = %d, want %d", sent, tc.sent)
			}
			if diff := cmp.Diff(tc.lost, lost); diff != "" {
				t.Errorf("lost (-want +got):\n%s", diff)
			}
		})
	}
}
