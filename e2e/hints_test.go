package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/testlab"
)

// TestMissedHints: every host reads the whole list only every 10 minutes
// (catalog.full_read_interval), so changes reach it as hints alone. A host
// whose meshd is stopped (SIGSTOP) for 30s while a host joins, another
// rotates its key and a third leaves, then continued, holds exactly the
// catalog long before its next full read: it reads the hints it skipped
// back from the ring, without a list read. Stopped again while more hints
// are written than the ring holds, it knows it lost some, reads what was
// signed since its last list (h4's new key), then the whole list.
func TestMissedHints(t *testing.T) {
	const extra = "removal_grace: 2s\ncatalog:\n  full_read_interval: 10m\n"
	lab, server, nodes := startHosts(t, 3, extra)
	h1, h2, h3 := nodes[0], nodes[1], nodes[2]
	pingAll(t, nodes)
	status := func(n *node) agent.CatalogStatus {
		t.Helper()
		st, err := n.status(t)
		if err != nil {
			t.Fatalf("status of %s: %v", n.Name, err)
		}
		return st.Catalog
	}

	before := status(h3)
	h3.proc.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	h4 := newNode(t, lab, []*testlab.Consul{server}, 4, extra)
	h4.start(t)
	if out, err := h2.Exec(meshd(t), "rotate-key", "--config", h2.config); err != nil {
		t.Fatalf("meshd rotate-key on h2: %v: %s", err, out)
	}
	if out, err := h1.Exec(meshd(t), "leave", "--config", h1.config); err != nil {
		t.Fatalf("meshd leave on h1: %v: %s", err, out)
	}
	live := []*node{h2, h3, h4}
	for _, n := range []*node{h2, h4} {
		holds(t, n, live, 30*time.Second)
	}
	time.Sleep(time.Until(stopped.Add(30 * time.Second)))
	h2Key, h4Key := h2.publicKey(t), h4.publicKey(t)
	h3.proc.Signal(syscall.SIGCONT)
	continued := time.Now()
	testlab.Eventually(t, 20*time.Second, "h3 holds h4 and h2's new key", func() bool {
		return h3.hasPeer(t, h4Key, h4.prefix) && h3.hasPeer(t, h2Key, h2.prefix)
	})
	added := time.Since(continued)
	holds(t, h3, live, 20*time.Second)
	t.Logf("h3, stopped 30s while h4 joined, h2 rotated its key and h1 left: held h4 and h2's new key %s after SIGCONT, exactly the catalog %s after (h1 removed after its 2s grace)",
		added.Round(time.Millisecond), time.Since(continued).Round(time.Millisecond))
	after := status(h3)
	if after.Reads != before.Reads || after.HintGaps != before.HintGaps || after.HintRingReads == before.HintRingReads {
		t.Errorf("h3 caught up with %d list reads, %d gaps, %d ring reads; want the ring alone (no list read, no gap)",
			after.Reads-before.Reads, after.HintGaps-before.HintGaps, after.HintRingReads-before.HintRingReads)
	}

	// More hints than the ring holds while h3 is stopped: h2's key
	// rotation (it wakes h3's list query, whose answer waits for h3 to
	// continue), h4's, then 2*HintRing hints naming nothing (h2's agent
	// writes them, as any host's token may).
	before = status(h3)
	h3.proc.Signal(syscall.SIGSTOP)
	if out, err := h2.Exec(meshd(t), "rotate-key", "--config", h2.config); err != nil {
		t.Fatalf("meshd rotate-key on h2: %v: %s", err, out)
	}
	holds(t, h4, live, 30*time.Second)
	if out, err := h4.Exec(meshd(t), "rotate-key", "--config", h4.config); err != nil {
		t.Fatalf("meshd rotate-key on h4: %v: %s", err, out)
	}
	holds(t, h2, live, 30*time.Second)
	c := h2.Consul.Client(t)
	ctx := context.Background()
	for i := range 2 * catalogsync.HintRing {
		if _, err := catalogsync.WriteHint(ctx, c, "meshd/hint", catalogsync.Hint{ConsulNode: "nowhere", ServiceID: fmt.Sprintf("meshd-none%d", i), Index: 1}); err != nil {
			t.Fatal(err)
		}
	}
	h3.proc.Signal(syscall.SIGCONT)
	continued = time.Now()
	holds(t, h3, live, 20*time.Second)
	t.Logf("h3, stopped while more hints than the ring holds were written, held the catalog %s after SIGCONT", time.Since(continued).Round(time.Millisecond))
	after = status(h3)
	if after.HintGaps == before.HintGaps {
		t.Errorf("h3 caught up with %d gaps; want the gap seen", after.HintGaps-before.HintGaps)
	}
	// h4's new key came with the read of what was signed since h3's last
	// list, before the whole list was read again.
	if after.Reads > before.Reads+1 {
		t.Errorf("h3 read the whole list %d times before it held the catalog; want only the answer in flight while stopped", after.Reads-before.Reads)
	}
	caught := regexp.MustCompile(`msg="caught up" .* changed=([1-9][0-9]*) `)
	testlab.Eventually(t, 10*time.Second, "h3's catch-up read, with h4's new key", func() bool {
		return status(h3).HintCatchUps > before.HintCatchUps && caught.MatchString(h3.proc.Log())
	})
	testlab.Eventually(t, 20*time.Second, "the whole list read after the catch-up", func() bool {
		return status(h3).Reads > after.Reads
	})
	testlab.Eventually(t, 10*time.Second, "h3 reports the gap in its log", func() bool {
		return strings.Contains(h3.proc.Log(), "hints missed; reading the whole list")
	})
	// A host sees its own entry through its own announcement, not only in
	// the whole list read every 10 minutes: none registered again.
	for _, n := range []*node{h2, h3, h4} {
		if strings.Contains(n.proc.Log(), "registering it again") {
			t.Errorf("%s registered its entry again:\n%s", n.Name, tail(n.proc.Log(), 30))
		}
	}
}
