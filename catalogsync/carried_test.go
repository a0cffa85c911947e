package catalogsync

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/peers"
)

// TestCarriedHints runs the carried path against a real Consul, with the
// attacks a host's ordinary token allows on it. A change's hint carries
// the entry and readers read nothing more; a hint that carries a forged
// entry under a real instance's ID, or a new one, with an index far
// ahead, is dated by Consul's index of the hint's write instead, keeps
// the real instance's CreateIndex (a new one gets the hint's write: the
// youngest), does not hold off a later honest hint naming a lower index,
// and is gone at the next list newer than the hint; two carried versions
// of one instance in one batch make the reader read the catalog's.
func TestCarriedHints(t *testing.T) {
	c, consulNode, reg, writer := h2Writer(t)
	reader := &Catalog{Client: c, Service: "meshd", HintKey: "meshd/hint", FullReadInterval: time.Hour}
	ctx := t.Context()
	seen := watchViews(t, reader, "h1")
	testlab.Eventually(t, 10*time.Second, "the first list", func() bool { return len(seen()) > 0 })
	view := func() map[string]peers.Entry {
		vs := seen()
		out := map[string]peers.Entry{}
		for _, s := range vs {
			if !s.Delta {
				clear(out)
			}
			for _, id := range s.Changed {
				delete(out, id)
			}
			for _, e := range s.Entries {
				out[e.ServiceID] = e
			}
		}
		return out
	}
	hintPair := func() *api.KVPair {
		t.Helper()
		p, _, err := c.KV().Get("meshd/hint", nil)
		if err != nil || p == nil {
			t.Fatalf("read the hint key: %v", err)
		}
		return p
	}

	// An honest change: the hint carries the entry, and the reader takes it
	// from there.
	if err := writer.Publish(ctx, reg, false); err != nil {
		t.Fatal(err)
	}
	writer.Wait()
	h, err := ParseHint(hintPair().Value)
	if err != nil || h.Carried == nil || !reg.Matches(peers.Entry{ServiceID: h.ServiceID, Meta: h.Carried.Meta, Tags: h.Carried.Tags}) {
		t.Fatalf("the hint of a publish = %+v, %v; want it to carry the entry", h, err)
	}
	testlab.Eventually(t, 10*time.Second, "the published entry in the reader's view", func() bool {
		e, ok := view()[reg.ID()]
		return ok && reg.Matches(e)
	})
	if st := reader.State(); st.HintsCarried != 1 || st.HintReads != 0 {
		t.Errorf("after one carried hint: %d carried, %d instance reads; want 1 and 0", st.HintsCarried, st.HintReads)
	}
	// The whole list, so that it holds the instance (its real indexes).
	reader.watcher.ReadNow()
	var real peers.Entry
	testlab.Eventually(t, 10*time.Second, "a list holding the instance", func() bool {
		vs := seen()
		s := vs[len(vs)-1]
		if s.Delta || len(s.Entries) != 1 {
			return false
		}
		real = s.Entries[0]
		return true
	})

	// h2 changes its endpoint; the catalog shows it at index changedAt,
	// and before h2's hint, the attacker writes its own.
	reg2 := reg
	reg2.Endpoint = netip.MustParseAddrPort("192.0.2.22:51820")
	if err := Register(ctx, c, reg2); err != nil {
		t.Fatal(err)
	}
	var changed *peers.Entry
	changedAt, err := WaitInstance(ctx, c, "meshd", Hint{ConsulNode: consulNode, ServiceID: reg.ID()}, func(e *peers.Entry) bool {
		changed = e
		return e != nil && reg2.Matches(*e)
	})
	if err != nil {
		t.Fatal(err)
	}

	// The attacker's hints: a forged version of h2's instance and a new
	// instance, both claiming an index far ahead of the catalog's.
	forged := maps.Clone(real.Meta)
	fake, _ := wgtypes.GeneratePrivateKey()
	forged[peers.MetaPublicKey] = fake.PublicKey().String()
	attack := func(id string, meta map[string]string) uint64 {
		t.Helper()
		if _, err := WriteHint(ctx, c, "meshd/hint", Hint{ConsulNode: consulNode, ServiceID: id, Index: 1 << 40, Carried: &Carried{Meta: meta}}); err != nil {
			t.Fatal(err)
		}
		return hintPair().ModifyIndex
	}
	w1 := attack(reg.ID(), forged)
	w2 := attack("meshd-evil", forged)
	testlab.Eventually(t, 10*time.Second, "both carried entries in the reader's view", func() bool {
		v := view()
		return v[reg.ID()].Meta[peers.MetaPublicKey] == fake.PublicKey().String() && v["meshd-evil"].Meta != nil
	})
	v := view()
	if got := v[reg.ID()]; got.CreateIndex != real.CreateIndex || got.ModifyIndex != w1 {
		t.Errorf("the forged version of %s: CreateIndex %d, ModifyIndex %d; want the instance's %d and the hint's write %d", reg.ID(), got.CreateIndex, got.ModifyIndex, real.CreateIndex, w1)
	}
	if got := v["meshd-evil"]; got.CreateIndex != w2 || got.ModifyIndex != w2 || got.Health != peers.HealthPassing {
		t.Errorf("a new carried instance: CreateIndex %d, ModifyIndex %d, health %q; want the hint's write %d for both, passing", got.CreateIndex, got.ModifyIndex, got.Health, w2)
	}
	reader.mu.Lock()
	idx := reader.hinted[reg.ID()].Index
	reader.mu.Unlock()
	if idx != w1 {
		t.Errorf("the forged version is dated %d; want the hint's write %d, not the index it claimed", idx, w1)
	}

	// h2's hint, written after the forged one, naming the catalog's index
	// of its change (below the forged hint's write), replaces it.
	if changedAt >= w1 {
		t.Fatalf("the change's index %d is not below the forged hint's write %d: the case is not made", changedAt, w1)
	}
	if _, err := WriteHint(ctx, c, "meshd/hint", Hint{ConsulNode: consulNode, ServiceID: reg.ID(), Index: changedAt, Carried: Carry(*changed)}); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 10*time.Second, "h2's change over the forged version", func() bool {
		return reg2.Matches(view()[reg.ID()])
	})

	// Two carried versions of one instance in one batch: the catalog's is
	// read.
	if changed := reader.readHints(ctx, "h1", []Hint{
		{Seq: 1, ConsulNode: consulNode, ServiceID: reg.ID(), Index: 1 << 40, Written: w1 + 100, Carried: &Carried{Meta: forged}},
		{Seq: 2, ConsulNode: consulNode, ServiceID: reg.ID(), Index: 1 << 40, Written: w1 + 101, Carried: &Carried{Meta: forged}},
	}); !slices.Equal(changed, []string{reg.ID()}) {
		t.Errorf("a batch with two carried versions changed %q, want %s", changed, reg.ID())
	}
	reader.mu.Lock()
	got := reader.hinted[reg.ID()]
	reader.mu.Unlock()
	if got.Carried || got.Entry == nil || !reg2.Matches(*got.Entry) {
		t.Errorf("after a batch with two carried versions, the view holds %+v; want the catalog's instance, read", got)
	}

	// A catalog change past the hints' writes, and a list: the list is the
	// authority again, the new instance gone.
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "other", Name: "meshd-other"}); err != nil {
		t.Fatal(err)
	}
	if err := writer.Publish(ctx, reg, true); err != nil {
		t.Fatal(err)
	}
	writer.Wait()
	reader.watcher.ReadNow()
	testlab.Eventually(t, 10*time.Second, "a list past the hints, without the carried instance", func() bool {
		vs := seen()
		s := vs[len(vs)-1]
		return !s.Delta && s.Index > w2 && len(s.Entries) == 1 && reg.Matches(s.Entries[0])
	})
	reader.mu.Lock()
	left := len(reader.hinted)
	reader.mu.Unlock()
	if left != 0 {
		t.Errorf("%d hinted instances left after a list past them", left)
	}
}
