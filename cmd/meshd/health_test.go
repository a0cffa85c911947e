package main

import (
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/agent"
)

func TestJudge(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) *time.Time { t := now.Add(-d); return &t }
	th := Thresholds{CatalogStale: 10 * time.Minute, Handshake: 5 * time.Minute, NotConverged: 2 * time.Minute}
	healthy := func() agent.Status {
		return agent.Status{
			Interface: "wg0", LinkPresent: true, Converged: true,
			Catalog: agent.CatalogStatus{Reachable: true, LastGoodRead: *ago(time.Second)},
			Peers: []agent.PeerStatus{
				{Node: "h2", State: agent.PeerApplied, LatestHandshake: ago(time.Minute)},
				{Node: "h3", State: agent.PeerApplied, LatestHandshake: ago(2 * time.Minute)},
			},
		}
	}
	tests := []struct {
		name     string
		mod      func(*agent.Status)
		code     int
		contains string
	}{
		{"healthy", func(*agent.Status) {}, healthOK, "OK: converged, 2 peers"},
		{"stale handshake", func(s *agent.Status) { s.Peers[1].LatestHandshake = ago(6 * time.Minute) }, healthWarning, "1 peers without a handshake in 5m0s (h3)"},
		{"never a handshake", func(s *agent.Status) { s.Peers[0].LatestHandshake = nil }, healthWarning, "(h2)"},
		{"catalog stale", func(s *agent.Status) { s.Catalog.LastGoodRead = *ago(11 * time.Minute) }, healthWarning, "catalog last read 11m0s ago"},
		{"catalog never read", func(s *agent.Status) { s.Catalog.LastGoodRead = time.Time{} }, healthWarning, "catalog never read"},
		{"rejected entries", func(s *agent.Status) {
			s.Peers = append(s.Peers, agent.PeerStatus{ServiceID: "meshd-x", State: agent.PeerRejected, Reason: "bad"})
		}, healthWarning, "1 rejected catalog entries (meshd-x)"},
		{"breaker holds", func(s *agent.Status) { s.Breaker.Held = 4 }, healthWarning, "4 removals held"},
		{"not converged briefly", func(s *agent.Status) { s.Converged, s.NotConvergedSince = false, ago(30*time.Second) }, healthOK, "OK"},
		{"not converged too long", func(s *agent.Status) { s.Converged, s.NotConvergedSince = false, ago(3*time.Minute) }, healthCritical, "not converged for 3m0s"},
		{"link missing", func(s *agent.Status) { s.LinkPresent = false }, healthCritical, "device wg0 missing"},
		{"critical also lists warnings", func(s *agent.Status) {
			s.LinkPresent = false
			s.Peers[0].LatestHandshake = nil
		}, healthCritical, "missing; 1 peers without"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := healthy()
			tt.mod(&st)
			code, line := judge(st, th, now)
			if code != tt.code || !strings.Contains(line, tt.contains) || strings.Contains(line, "\n") {
				t.Errorf("judge = %d %q; want %d and one line containing %q", code, line, tt.code, tt.contains)
			}
		})
	}
}

func TestPrintStatusFits100Columns(t *testing.T) {
	now := time.Now()
	hs := now.Add(-42 * time.Second)
	st := agent.Status{
		Node: "web-1", Interface: "wg0", Mode: "kernel", ListenPort: 51820, MeshAddress: "fdaa:0:1::1", Prefix: "fdaa:0:1::/48",
		PublicKey: "VTB0B5JuBoSXJIbV2MJoprB+nKCjbYAYoQIrZ5T+UAo=",
		Peers: []agent.PeerStatus{
			{Node: "db-with-a-rather-long-name-17", Endpoint: "[2001:db8:1234:5678::10]:51820", Prefix: "fdaa:1234:5678::/48", State: agent.PeerApplied, LatestHandshake: &hs, RxBytes: 123456789, TxBytes: 42},
			{ServiceID: "meshd-bad", Node: "bad", State: agent.PeerRejected, Reason: "prefix fdbb::/48 is outside the mesh supernet fdaa::/16"},
		},
		Differences: []string{strings.Repeat("a very long difference ", 10)},
	}
	var b strings.Builder
	printStatus(&b, st, now)
	for _, line := range strings.Split(b.String(), "\n") {
		if len(line) > 100 {
			t.Errorf("line of %d columns: %q", len(line), line)
		}
	}
	for _, want := range []string{"NODE", "HANDSHAKE", "42s", "117.7MiB", "meshd-bad: prefix fdbb::/48", "converged: NO"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}
