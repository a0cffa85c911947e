package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/internal/testlab"
)

// TestGatewayIsolation tries, with real tunnels and the gateways' real
// nftables, what users of one gateway must not reach: users of another
// organization (defaults or not), the gateway hosts (unless named), and a
// second gateway's users; and checks that what is named still works.
func TestGatewayIsolation(t *testing.T) {
	lab := testlab.NewLab(t)
	server := lab.StartConsulServer("consul")
	servers := []*testlab.Consul{server}
	gwConf := func(n int) string {
		return fmt.Sprintf("gateway:\n  enabled: true\n  interface: wg%dg%d\n  pool: fdaa:0:%d:ffff::/120\n", os.Getpid()%10000, n, n)
	}
	// The first gateway resyncs only every 10 minutes: what it does in
	// the test it does because something told it.
	gw := newNode(t, lab, servers, 1, gwConf(1))
	slowResync(t, gw)
	b := newNode(t, lab, servers, 2, "")
	gw2 := newNode(t, lab, servers, 3, gwConf(3))
	nodes := []*node{gw, b, gw2}
	for _, n := range nodes {
		n.start(t)
	}
	defer checkNoRace(t, nodes)
	converged(t, nodes)
	pingAll(t, nodes) // the mesh's own sessions are up before users use them
	kv := server.Client(t)
	for _, g := range []*node{gw, gw2} {
		testlab.Eventually(t, 30*time.Second, "gateway "+g.Name+" is in the catalog", func() bool {
			_, err := gateway.Lookup(context.Background(), kv, "meshd", g.Name, meshRules)
			return err == nil
		})
	}
	pool := "fdaa:0:1:ffff::/120"
	laptopOn := func(g *node, name string, args ...string) *laptop {
		l := &laptop{Host: lab.AddHost(name), iface: fmt.Sprintf("wl%d%s", os.Getpid()%10000, name)}
		res := createPeer(t, b, append([]string{"--gateway", g.Name, "--name", name}, args...)...)
		l.up(t, res.Config)
		l.addr = netip.MustParseAddr(res.Address)
		if !l.pingWithin(b.meshAddr(), 10*time.Second) {
			nftOut, _ := g.Exec("nft", "list", "ruleset")
			wgOut, _ := g.Exec("wg", "show")
			lwg, _ := l.Exec("wg", "show")
			bRoutes, _ := b.Exec("ip", "-6", "route")
			t.Fatalf("%s (%v) cannot reach the mesh host %s\nnft:\n%s\nwg on %s:\n%s\nwg on laptop:\n%s\nroutes on %s:\n%s", name, args, b.Name, nftOut, g.Name, wgOut, lwg, b.Name, bRoutes)
		}
		return l
	}
	// Defaults: mesh hosts only.
	acme := laptopOn(gw, "acme1", "--org", "acme")
	globex := laptopOn(gw, "globex1", "--org", "globex")
	// Named pool: the organization's own peers there.
	team1 := laptopOn(gw, "team1", "--org", "acme", "--allow", "fdaa::/16", "--allow", pool, "--allow", gw.meshAddr().String()+"/128")
	team2 := laptopOn(gw, "team2", "--org", "acme", "--allow", "fdaa::/16", "--allow", pool)
	rival := laptopOn(gw, "rival", "--org", "globex", "--allow", "fdaa::/16", "--allow", pool)
	// A user of the second gateway who names the first gateway's whole
	// host prefix.
	remote := laptopOn(gw2, "remote", "--org", "acme", "--allow", "fdaa::/16", "--allow", gw.prefix.String())

	for _, c := range []struct {
		from    *laptop
		to      netip.Addr
		reaches bool
		what    string
	}{
		{acme, globex.addr, false, "a user of another organization, both with defaults"},
		{globex, acme.addr, false, "a user of another organization, both with defaults"},
		{acme, team1.addr, false, "a user of its own organization without naming the pool"},
		{acme, gw.meshAddr(), false, "its gateway's host without naming it"},
		{acme, gw2.meshAddr(), false, "another gateway's host without naming it"},
		{team1, rival.addr, false, "a user of another organization in a named pool"},
		{rival, team1.addr, false, "a user of another organization in a named pool"},
		{remote, team1.addr, false, "another gateway's user, naming that gateway's prefix"},
		{team1, team2.addr, true, "a user of its own organization, both naming the pool"},
		{team2, team1.addr, true, "a user of its own organization, both naming the pool"},
		{team1, gw.meshAddr(), true, "its gateway's host, named"},
		{remote, gw.meshAddr(), true, "another gateway's host, named"},
		{acme, b.meshAddr(), true, "a mesh host, by default"},
	} {
		switch {
		case c.reaches && !c.from.pingWithin(c.to, 5*time.Second):
			t.Errorf("%s cannot reach %s: %s", c.from.Name, c.to, c.what)
		case !c.reaches && !c.from.cannotPing(c.to):
			t.Errorf("%s reached %s: %s", c.from.Name, c.to, c.what)
		}
	}

	// Someone flushes the whole ruleset: the gateway's check rebuilds its
	// table within seconds (a resync is 10 minutes away), and users of
	// different organizations are apart again.
	if out, err := gw.Exec("nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v: %s", err, out)
	}
	testlab.Eventually(t, 3*gateway.FirewallCheck, "the gateway's table rebuilt after nft flush ruleset", func() bool {
		out, err := gw.Exec("nft", "list", "table", "ip6", "meshd")
		return err == nil && strings.Contains(out, "jump users")
	})
	if !acme.cannotPing(globex.addr) {
		t.Errorf("after the flush, %s reached %s of another organization", acme.Name, globex.Name)
	}
}

// slowResync sets n's resync_interval to 10 minutes.
func slowResync(t *testing.T, n *node) {
	t.Helper()
	b, err := os.ReadFile(n.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "resync_interval: 1s\n", "resync_interval: 10m\n", 1)
	if cfg == string(b) {
		t.Fatalf("no resync_interval in %s", n.config)
	}
	if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}
