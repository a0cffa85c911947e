package main

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/health"
	"meshd.dev/meshd/internal/testlab"
)

// TestLeaveWithoutAgent: `meshd leave` with no agent running leaves the
// traces the agent's own leave leaves (both run agent.Leave): the instance
// deregistered, the health summary deleted, and the hint naming the
// instance written once the catalog no longer shows it.
func TestLeaveWithoutAgent(t *testing.T) {
	bin := meshdBin(t)
	consul := testlab.StartDevConsul(t)
	h := newInitHost(t, "leaver", consul.HTTPAddr)
	res, err := h.init(t, bin)
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(&api.Config{Address: consul.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := wgtypes.GeneratePrivateKey()
	reg := catalogsync.Registration{Service: "meshd", Node: "leaver", PublicKey: key.PublicKey(),
		Endpoint: netip.MustParseAddrPort("192.0.2.7:51820"), Prefix: netip.MustParsePrefix(res.Prefix)}
	ctx := context.Background()
	if err := catalogsync.Register(ctx, c, reg); err != nil {
		t.Fatal(err)
	}
	summary := health.SummaryPrefix + "leaver"
	if _, err := c.KV().Put(&api.KVPair{Key: summary, Value: []byte(`{"node":"leaver"}`)}, nil); err != nil {
		t.Fatal(err)
	}
	consulNode, err := c.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 10*time.Second, "the instance in the catalog", func() bool {
		e, _, err := catalogsync.ReadInstance(ctx, c, "meshd", catalogsync.Hint{ConsulNode: consulNode, ServiceID: reg.ID()}, nil)
		return err == nil && e != nil
	})

	out, err := exec.Command(bin, "leave", "--config", h.config, "--interface", "wgnone0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "left the mesh (no agent was running)") {
		t.Fatalf("leave: %v\n%s", err, out)
	}
	e, index, err := catalogsync.ReadInstance(ctx, c, "meshd", catalogsync.Hint{ConsulNode: consulNode, ServiceID: reg.ID()}, nil)
	if err != nil || e != nil {
		t.Errorf("after leave the catalog shows %+v (%v)", e, err)
	}
	if kv, _, err := c.KV().Get(summary, nil); err != nil || kv != nil {
		t.Errorf("after leave the health summary is %+v (%v)", kv, err)
	}
	kv, _, err := c.KV().Get("meshd/hint", nil)
	if err != nil || kv == nil {
		t.Fatalf("after leave no hint: %v", err)
	}
	hint, err := catalogsync.ParseHint(kv.Value)
	if err != nil {
		t.Fatal(err)
	}
	if hint.ConsulNode != consulNode || hint.ServiceID != reg.ID() || hint.Index == 0 || hint.Index > index {
		t.Errorf("hint %+v, want node %s, service %s, an index at most %d", hint, consulNode, reg.ID(), index)
	}
}
