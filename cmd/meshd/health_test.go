package main

import (
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/health"
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

// TestPrintEscapesOutsideText: catalog strings with terminal escapes (a
// hostile entry's service ID, node, reason) reach the operator's terminal
// as visible escapes, not as control bytes.
func TestPrintEscapesOutsideText(t *testing.T) {
	now := time.Now()
	st := agent.Status{
		Node: "web-1", Interface: "wg0", LinkPresent: true, Converged: true,
		Catalog: agent.CatalogStatus{Reachable: false, LastError: "Unexpected response code: 500 (\x1b[2Jwiped)"},
		Peers: []agent.PeerStatus{
			{ServiceID: "meshd-\x1b]0;owned\x07", Node: "x\x1b[31m", State: agent.PeerRejected, Reason: "node \"x\x1b[31m\" is not a DNS label"},
			{Node: "h2\u202e", Endpoint: "192.0.2.1:1", State: agent.PeerApplied},
		},
	}
	var b strings.Builder
	printStatus(&b, st, now)
	var m strings.Builder
	printMesh(&m, []health.Row{{Node: "evil\x1b[8m", Verdict: "broken", Problems: []string{"\x07bell"}}})
	for name, out := range map[string]string{"status": b.String(), "mesh": m.String()} {
		if strings.ContainsAny(out, "\x1b\x07\u202e") {
			t.Errorf("%s output carries control characters:\n%q", name, out)
		}
		if !strings.Contains(out, `\x1b`) {
			t.Errorf("%s output does not show the escape:\n%s", name, out)
		}
	}
	if !strings.Contains(b.String(), `meshd-\x1b]0;owned\a: node \"x\x1b[31m\" is not a DNS label`) {
		t.Errorf("rejected line not escaped as expected:\n%s", b.String())
	}
}
