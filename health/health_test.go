package health

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var now = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) *time.Time { t := now.Add(-d); return &t }

func healthy() Host {
	return Host{
		Node: "h1", Interface: "wg0", LinkPresent: true, Converged: true,
		CatalogReachable: true, LastGoodRead: *ago(time.Second),
		Peers: []Peer{
			{Node: "h2", Applied: true, LatestHandshake: ago(time.Minute)},
			{Node: "h3", Applied: true, LatestHandshake: ago(2 * time.Minute)},
		},
	}
}

func TestCheck(t *testing.T) {
	th := Thresholds{CatalogStale: 10 * time.Minute, Handshake: 5 * time.Minute, NotConverged: 2 * time.Minute, SummaryStale: time.Hour}
	tests := []struct {
		name     string
		mod      func(*Host)
		code     Code
		contains string
	}{
		{"healthy", func(*Host) {}, OK, "OK: converged, 2 peers"},
		{"stale handshake", func(h *Host) { h.Peers[1].LatestHandshake = ago(6 * time.Minute) }, Warning, "1 peers without a handshake in 5m0s (h3)"},
		{"never a handshake", func(h *Host) { h.Peers[0].LatestHandshake = nil }, Warning, "(h2)"},
		{"catalog stale", func(h *Host) { h.LastGoodRead = *ago(11 * time.Minute) }, Warning, "catalog last read 11m0s ago"},
		{"catalog never read", func(h *Host) { h.LastGoodRead = time.Time{} }, Warning, "catalog never read"},
		{"rejected entries", func(h *Host) {
			h.Peers = append(h.Peers, Peer{ServiceID: "meshd-x", Rejected: true})
		}, Warning, "1 rejected catalog entries (meshd-x)"},
		{"many rejected", func(h *Host) {
			for _, n := range []string{"a", "b", "c", "d", "e"} {
				h.Peers = append(h.Peers, Peer{Node: n, Rejected: true})
			}
		}, Warning, "5 rejected catalog entries (a, b, c and 2 more)"},
		{"breaker holds", func(h *Host) { h.BreakerHeld = 4 }, Warning, "4 removals held"},
		{"not converged briefly", func(h *Host) { h.Converged, h.NotConvergedSince = false, ago(30*time.Second) }, OK, "OK"},
		{"not converged too long", func(h *Host) { h.Converged, h.NotConvergedSince = false, ago(3*time.Minute) }, Critical, "not converged for 3m0s"},
		{"link missing", func(h *Host) { h.LinkPresent = false }, Critical, "device wg0 missing"},
		{"credential valid for a year", func(h *Host) { h.CredentialExpires = now.Add(365 * 24 * time.Hour) }, OK, "OK"},
		{"credential expires within 30 days", func(h *Host) { h.CredentialExpires = now.Add(29 * 24 * time.Hour) }, Warning, "credential expires in 696h0m0s"},
		{"credential expired", func(h *Host) { h.CredentialExpires = now.Add(-time.Minute) }, Critical, "credential expired at"},
		{"critical also lists warnings", func(h *Host) {
			h.LinkPresent = false
			h.Peers[0].LatestHandshake = nil
		}, Critical, "missing; 1 peers without"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := healthy()
			tt.mod(&h)
			code, line := Check(h, th, now)
			if code != tt.code || !strings.Contains(line, tt.contains) || strings.Contains(line, "\n") {
				t.Errorf("Check = %d %q; want %d and one line containing %q", code, line, tt.code, tt.contains)
			}
			if !strings.HasPrefix(line, tt.code.String()+": ") {
				t.Errorf("line %q does not start with %s", line, tt.code)
			}
		})
	}
}

// TestOneThreshold: the host's verdict and the summary it publishes for
// the fleet call the same peers stale, by the same threshold.
func TestOneThreshold(t *testing.T) {
	h := healthy()
	h.Peers[1].LatestHandshake = ago(Defaults.Handshake + time.Second)
	h.Peers[0].LatestHandshake = ago(Defaults.Handshake - time.Second)
	s := Summarize(h, Defaults, now)
	if diff := cmp.Diff([]string{"h3"}, s.StaleHandshakes); diff != "" {
		t.Errorf("summary's stale handshakes (-want +got):\n%s", diff)
	}
	if code, line := Check(h, Defaults, now); code != Warning || !strings.Contains(line, "(h3)") || strings.Contains(line, "h2") {
		t.Errorf("Check = %d %q, want a warning naming h3 alone", code, line)
	}
}

func TestSummarize(t *testing.T) {
	h := healthy()
	h.Peers = append(h.Peers, Peer{Node: "h4", Applied: true}, Peer{ServiceID: "meshd-x", Rejected: true}, Peer{Node: "held"})
	h.BreakerHeld = 1
	got := Summarize(h, Defaults, now)
	want := Summary{Node: "h1", Converged: true, PeersApplied: 3, Rejected: 1, BreakerHeld: 1,
		CatalogReachable: true, LinkPresent: true, StaleHandshakes: []string{"h4"}, Updated: now}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Summarize (-want +got):\n%s", diff)
	}
	later := Summarize(h, Defaults, now.Add(time.Second))
	if !got.Same(later) {
		t.Error("the same summary a second later is not Same")
	}
	later.Rejected++
	if got.Same(later) {
		t.Error("summaries with different rejections are Same")
	}
}

func TestValidate(t *testing.T) {
	if err := Defaults.Validate(); err != nil {
		t.Fatal(err)
	}
	th := Defaults
	th.Handshake = 0
	if err := th.Validate(); err == nil || err.Error() != "--handshake-age = 0s: expected a positive duration" {
		t.Errorf("Validate = %v", err)
	}
}

func TestFleet(t *testing.T) {
	sum := func(node string, mod func(*Summary)) Summary {
		s := Summary{Node: node, Converged: true, PeersApplied: 4, CatalogReachable: true, LinkPresent: true, Updated: now.Add(-time.Minute)}
		if mod != nil {
			mod(&s)
		}
		return s
	}
	nodes := []Node{
		{Name: "a-ok", ConsulHealth: "passing"}, {Name: "b-cut", ConsulHealth: "critical"}, {Name: "c-silent", ConsulHealth: "passing"},
		{Name: "d-rejects", ConsulHealth: "passing"}, {Name: "e-stale", ConsulHealth: "passing"}, {Name: "f-unconverged", ConsulHealth: "passing"}, {Name: "g-fine", ConsulHealth: "passing"},
	}
	summaries := map[string]Summary{
		"a-ok":          sum("a-ok", func(s *Summary) { s.StaleHandshakes = []string{"b-cut"} }),
		"b-cut":         sum("b-cut", nil),
		"d-rejects":     sum("d-rejects", func(s *Summary) { s.Rejected = 2; s.StaleHandshakes = []string{"b-cut"} }),
		"e-stale":       sum("e-stale", func(s *Summary) { s.Updated = now.Add(-time.Hour) }),
		"f-unconverged": sum("f-unconverged", func(s *Summary) { s.Converged = false }),
		"g-fine":        sum("g-fine", nil),
	}
	rows := Fleet(nodes, summaries, Defaults, now)
	type brief struct{ Node, Verdict, Problems string }
	var got []brief
	for _, r := range rows {
		p := ""
		if len(r.Problems) > 0 {
			p = r.Problems[0]
		}
		got = append(got, brief{r.Node, r.Verdict, p})
	}
	want := []brief{
		{"b-cut", "broken", "Consul health critical"},
		{"c-silent", "broken", "no health summary published"},
		{"e-stale", "broken", "summary 1h0m0s old"},
		{"f-unconverged", "broken", "not converged"},
		{"a-ok", "warning", "1 peers without handshake"},
		{"d-rejects", "warning", "1 peers without handshake"},
		{"g-fine", "ok", ""},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fleet view (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a-ok", "d-rejects"}, rows[0].UnreachableFrom); diff != "" {
		t.Errorf("b-cut unreachable from (-want +got):\n%s", diff)
	}
}
