package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/peers"
)

func TestFleetView(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	entry := func(node, health string) peers.Entry {
		return peers.Entry{ServiceID: "meshd-" + node, Health: health, Meta: map[string]string{"node": node}}
	}
	sum := func(node string, mod func(*agent.Summary)) agent.Summary {
		s := agent.Summary{Node: node, Converged: true, PeersApplied: 4, CatalogReachable: true, LinkPresent: true, Updated: now.Add(-time.Minute)}
		if mod != nil {
			mod(&s)
		}
		return s
	}
	entries := []peers.Entry{
		entry("a-ok", "passing"), entry("b-cut", "critical"), entry("c-silent", "passing"),
		entry("d-rejects", "passing"), entry("e-stale", "passing"), entry("f-unconverged", "passing"),
	}
	summaries := map[string]agent.Summary{
		"a-ok":          sum("a-ok", func(s *agent.Summary) { s.StaleHandshakes = []string{"b-cut"} }),
		"b-cut":         sum("b-cut", nil),
		"d-rejects":     sum("d-rejects", func(s *agent.Summary) { s.Rejected = 2; s.StaleHandshakes = []string{"b-cut"} }),
		"e-stale":       sum("e-stale", func(s *agent.Summary) { s.Updated = now.Add(-time.Hour) }),
		"f-unconverged": sum("f-unconverged", func(s *agent.Summary) { s.Converged = false }),
	}
	rows := fleetView(entries, summaries, now)
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
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fleet view (-want +got):\n%s", diff)
	}
	if r := rows[0]; len(r.UnreachableFrom) != 2 || r.UnreachableFrom[0] != "a-ok" {
		t.Errorf("b-cut unreachable from %v, want a-ok and d-rejects", r.UnreachableFrom)
	}
}
