package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/testlab"
)

// kvTree is every record and address claim under KVRoot (the change
// hints left out), key -> value.
func kvTree(t *testing.T, c *api.Client) map[string]string {
	t.Helper()
	pairs, _, err := c.KV().List(KVRoot, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pairs {
		if strings.HasPrefix(p.Key, ChangesKey("gw")) {
			continue
		}
		out[p.Key] = string(p.Value)
	}
	return out
}

// TestStore runs the record operations against a real Consul: one address
// and one record per create, written together or not at all.
func TestStore(t *testing.T) {
	c := testlab.StartDevConsul(t).Client(t)
	ctx := context.Background()
	gw := Info{Node: "gw", PublicKey: key(1), Endpoint: netip.MustParseAddrPort("192.0.2.1:51821"),
		Pool: netip.MustParsePrefix("fdaa:0:1:ffff::/123"), Prefix: netip.MustParsePrefix("fdaa:0:1::/48")}
	req := func(org, name string, n byte) Request {
		return Request{Org: org, Name: name, PublicKey: key(n), Allow: []netip.Prefix{supernet}}
	}

	// The same name created by 10 callers at once: one wins, the others
	// get ErrNameTaken, and exactly one address is claimed.
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = Create(ctx, c, gw, req("acme", "same", byte(10+i)), t0)
		})
	}
	wg.Wait()
	var won int
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrNameTaken):
			t.Errorf("racing create: %v, want nil or ErrNameTaken", err)
		}
	}
	tree := kvTree(t, c)
	if won != 1 || len(tree) != 2 {
		t.Fatalf("racing creates: %d won, KV holds %v; want 1 winner with one record and one claim", won, tree)
	}
	// The winner hinted its change to the gateway, the losers nothing.
	lastChange := func() catalogsync.Hint {
		t.Helper()
		p, _, err := c.KV().Get(ChangesKey("gw"), nil)
		if err != nil || p == nil {
			t.Fatalf("no change hint: %v", err)
		}
		h, err := catalogsync.ParseHint(p.Value)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	if h := lastChange(); h.Seq != 1 || h.ConsulNode != "gw" || h.ServiceID != "acme/same" {
		t.Errorf("change hint after the racing creates: %+v, want number 1 naming acme/same on gw", h)
	}

	// Concurrent creates of distinct names get distinct addresses.
	addrs := make([]netip.Addr, 20)
	for i := range addrs {
		wg.Go(func() {
			r, err := Create(ctx, c, gw, req("burst", fmt.Sprintf("p%d", i), byte(30+i)), t0)
			if err != nil {
				t.Errorf("create p%d: %v", i, err)
			}
			addrs[i] = r.Address
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		if seen[a] || !gw.Pool.Contains(a) || a == gw.Pool.Addr() {
			t.Errorf("address %s duplicated or outside the usable pool (all: %v)", a, addrs)
		}
		seen[a] = true
	}

	// Replace keeps the address and takes the new key.
	old, _, err := c.KV().Get(RecordKey("gw", "burst", "p0"), nil)
	if err != nil || old == nil {
		t.Fatal(err)
	}
	prev, _ := Decode("gw", old.Key, old.Value)
	r := req("burst", "p0", 99)
	r.Replace = true
	replaced, err := Create(ctx, c, gw, r, t0)
	if err != nil || replaced.Address != prev.Address || replaced.PublicKey != key(99).String() {
		t.Errorf("replace: %+v, %v; want address %s and the new key", replaced, err, prev.Address)
	}

	// Remove frees the address (and hints it); removing again is
	// ErrNotFound.
	if _, err := Remove(ctx, c, "gw", "burst", "p1"); err != nil {
		t.Fatal(err)
	}
	if h := lastChange(); h.Seq != 23 || h.ServiceID != "burst/p1" {
		t.Errorf("change hint after 1 + 20 creates, a replace and a remove: %+v, want number 23 naming burst/p1", h)
	}
	if _, ok := kvTree(t, c)[AddressKey("gw", addrs[1])]; ok {
		t.Errorf("address %s still claimed after remove", addrs[1])
	}
	if _, err := Remove(ctx, c, "gw", "burst", "p1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v, want ErrNotFound", err)
	}

	// Fill the pool (31 usable), then one more is ErrExhausted and
	// writes nothing.
	for i := 0; len(kvTree(t, c)) < 2*31; i++ {
		if _, err := Create(ctx, c, gw, req("fill", fmt.Sprintf("f%d", i), byte(100+i)), t0); err != nil {
			t.Fatalf("fill %d: %v", i, err)
		}
	}
	before := kvTree(t, c)
	if _, err := Create(ctx, c, gw, req("acme", "one-more", 200), t0); !errors.Is(err, ErrExhausted) {
		t.Errorf("create in a full pool: %v, want ErrExhausted", err)
	}
	if after := kvTree(t, c); len(after) != len(before) {
		t.Errorf("a refused create wrote: %d keys before, %d after", len(before), len(after))
	}

	// Delete is a check-and-set: a record changed since it was read stays.
	pairs, err := List(ctx, c, "gw")
	if err != nil {
		t.Fatal(err)
	}
	st := Desire(NewDecoder("gw"), pairs, gw.Pool, supernet, t0)
	stale := st.Records[0]
	stale.ModifyIndex--
	if err := Delete(ctx, c, "gw", stale); err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Errorf("delete of a stale read: %v, want a rolled-back transaction", err)
	}
	if err := Delete(ctx, c, "gw", st.Records[0]); err != nil {
		t.Errorf("delete: %v", err)
	}

	// Expiry is relative to creation.
	r = req("acme", "temp", 201)
	r.Expires = time.Hour
	if _, err := Remove(ctx, c, "gw", "fill", "f0"); err != nil {
		t.Fatal(err)
	}
	tmp, err := Create(ctx, c, gw, r, t0)
	if err != nil || tmp.Expires == nil || !tmp.Expires.Equal(t0.Add(time.Hour)) {
		t.Errorf("create with expiry: %+v, %v", tmp, err)
	}

	if err := RemoveAll(ctx, c, "gw"); err != nil {
		t.Fatal(err)
	}
	if tree := kvTree(t, c); len(tree) != 0 {
		t.Errorf("RemoveAll left %v", tree)
	}
}
