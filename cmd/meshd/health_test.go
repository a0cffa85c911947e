package main

import (
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/agent"
)

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
	for _, want := range []string{"NODE", "HANDSHAKE", "42s", "117.7MiB", "meshd-bad: prefix fdbb::/48", "converged: NO",
		"health: CRITICAL: WireGuard device wg0 missing"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}
