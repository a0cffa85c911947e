package e2e

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/internal/testlab"
)

// valueRE matches the values inside a rejection reason.
var valueRE = regexp.MustCompile(`"[^"]*"|[0-9a-f]*[:.][0-9a-f:./]*|BAD_[0-9]+|h[0-9]+`)

// hostileMeta returns the Meta of the i-th hostile entry: a well-formed
// entry with one thing wrong, cycling through every rule of DESIGN.md's
// "Desired state". h2Key is a live node's key, for duplicates.
func hostileMeta(t *testing.T, i int, h2Key wgtypes.Key) map[string]string {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{
		"v": "1", "node": fmt.Sprintf("bad-%d", i), "public_key": k.PublicKey().String(),
		"endpoint": fmt.Sprintf("198.18.1.%d:51820", i%250+1), "prefix": fmt.Sprintf("fdaa:1:%x::/48", i),
	}
	switch i % 11 {
	case 0:
		m["public_key"] = "not-base64!!"
	case 1:
		m["public_key"] = base64.StdEncoding.EncodeToString(make([]byte, 16))
	case 2:
		m["prefix"] = "10.1.0.0/16"
	case 3:
		m["prefix"] = fmt.Sprintf("fdbb:%x::/48", i) // outside the supernet
	case 4:
		m["prefix"] = fmt.Sprintf("fdaa:0:1:%x::/64", i) // inside h1's prefix
	case 5:
		m["public_key"] = h2Key.String() // duplicate of a live node's key
	case 6:
		m["endpoint"] = "evil.example:51820"
	case 7:
		m["node"] = fmt.Sprintf("BAD_%d", i)
	case 8:
		m["v"] = "9"
	case 9:
		m["prefix"] = fmt.Sprintf("fdaa:1:%x::/124", i)
	case 10:
		m["prefix"] = fmt.Sprintf("fdaa:0:2:%x::/64", i) // inside h2's prefix
	}
	return m
}

// TestHostileCatalog fills the catalog with 1,000 malformed or hostile
// entries: every valid peer must stay applied and reachable, and every
// hostile entry must be listed as rejected with its reason. It also puts
// foreign routes to mesh prefixes on a host, which must survive.
func TestHostileCatalog(t *testing.T) {
	_, server, nodes := startHosts(t, 3, "removal_grace: 1m\n")
	h1, h2 := nodes[0], nodes[1]

	// Foreign routes, added by hand: one to a live peer's prefix (at
	// another metric, so both can exist) and one to an unused mesh prefix.
	foreign := [][]string{
		{"fdaa:0:2::/48", "dev", "eth0", "metric", "2048", "proto", "static"},
		{"fdaa:0:99::/48", "dev", "eth0", "proto", "static"},
	}
	for _, r := range foreign {
		if out, err := h1.Exec(append([]string{"ip", "-6", "route", "add"}, r...)...); err != nil {
			t.Fatalf("add foreign route %v: %v: %s", r, err, out)
		}
	}

	c := server.Client(t)
	const hostile = 1000
	h2Key := h2.publicKey(t)
	for start := 0; start < hostile; start += 32 {
		var ops api.TxnOps
		for i := start; i < min(start+32, hostile); i++ {
			name := fmt.Sprintf("bad-%d", i)
			ops = append(ops,
				&api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: name, Address: "198.18.1.1"}}},
				&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: name, Service: api.AgentService{
					ID: "meshd-" + name, Service: "meshd", Meta: hostileMeta(t, i, h2Key),
				}}})
		}
		ok, resp, _, err := c.Txn().Txn(ops, nil)
		if err != nil || !ok {
			t.Fatalf("register hostile entries %d-: ok=%v err=%v errors=%v", start, ok, err, resp)
		}
	}
	// Values beyond Consul's own limits never reach meshd: Consul refuses
	// them (meshd's own check of them is in the peers unit tests).
	_, err := c.Catalog().Register(&api.CatalogRegistration{Node: "oversize", Address: "198.18.1.2",
		Service: &api.AgentService{ID: "meshd-oversize", Service: "meshd", Meta: map[string]string{"v": "1", "junk": strings.Repeat("x", 600)}}}, nil)
	oversizeAccepted := err == nil
	if oversizeAccepted {
		t.Log("Consul accepted a 600-character meta value; meshd must reject it")
	}
	wantRejected := hostile
	if oversizeAccepted {
		wantRejected++
	}

	for _, n := range nodes {
		var why string
		testlab.Eventually(t, 60*time.Second, n.Name+" lists every hostile entry as rejected", func() bool {
			st, err := n.status(t)
			if err != nil {
				why = err.Error()
				return false
			}
			rejected, applied := 0, 0
			for _, p := range st.Peers {
				switch p.State {
				case agent.PeerRejected:
					if p.Reason == "" {
						why = "rejection without a reason: " + p.ServiceID
						return false
					}
					rejected++
				case agent.PeerApplied:
					applied++
				}
			}
			why = fmt.Sprintf("%d rejected, %d applied", rejected, applied)
			return rejected == wantRejected && applied == len(nodes)-1 && st.Converged
		}, &why)
	}
	st, err := h1.status(t)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, p := range st.Peers {
		if p.State == agent.PeerRejected {
			// Group by the reason's shape, values left out.
			reasons[valueRE.ReplaceAllString(p.Reason, "_")]++
		}
	}
	t.Logf("h1 rejected %d entries: %v", wantRejected, reasons)

	// The valid mesh is untouched: same peers in every kernel, every host
	// reaches every other.
	converged(t, nodes)
	pingAll(t, nodes)

	// Foreign routes survive many reconciles (resync_interval is 1s) and a
	// restart.
	time.Sleep(3 * time.Second)
	restart(t, h1, syscall.SIGTERM)
	waitConverged(t, h1)
	time.Sleep(2 * time.Second)
	out, err := h1.Exec("ip", "-6", "route", "show", "proto", "static")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range foreign {
		if !strings.Contains(out, r[0]) {
			t.Errorf("foreign route to %s is gone; static routes now:\n%s", r[0], out)
		}
	}
	pingAll(t, nodes)
}
