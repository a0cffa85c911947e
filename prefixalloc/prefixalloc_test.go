package prefixalloc

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"sync"
	"testing"

	"meshd.dev/meshd/internal/testlab"
)

func TestKeyRoundTrip(t *testing.T) {
	p := netip.MustParsePrefix("fdaa:0:1::/48")
	if got := Key(p); got != "meshd/prefixes/fdaa:0:1::_48" {
		t.Errorf("Key = %q", got)
	}
	back, err := ParseKey(Key(p))
	if err != nil || back != p {
		t.Errorf("ParseKey(Key(p)) = %v, %v", back, err)
	}
	if _, err := ParseKey("other/x"); err == nil {
		t.Error("ParseKey accepted a foreign key")
	}
}

func TestCandidates(t *testing.T) {
	super := netip.MustParsePrefix("fdaa::/112")
	seen := map[netip.Prefix]bool{}
	Candidates(super, 120, "h1", 1000, func(p netip.Prefix) bool {
		if !super.Contains(p.Addr()) || p.Bits() != 120 || p.Masked() != p {
			t.Errorf("candidate %s is not a /120 inside %s", p, super)
		}
		if p.Addr() == super.Addr() {
			t.Errorf("candidate %s is index 0", p)
		}
		if seen[p] {
			t.Errorf("candidate %s offered twice", p)
		}
		seen[p] = true
		return true
	})
	if len(seen) != 255 {
		t.Errorf("%d candidates in a /112 split into /120s, want 255", len(seen))
	}
	if got := Nth(netip.MustParsePrefix("fdaa::/16"), 48, big.NewInt(1)); got.String() != "fdaa:0:1::/48" {
		t.Errorf("Nth(1) = %s", got)
	}
	if DefaultBits(netip.MustParsePrefix("fdaa::/16")) != 48 || DefaultBits(netip.MustParsePrefix("fdaa::/104")) != 112 {
		t.Error("DefaultBits")
	}
}

// TestConcurrentClaims races 50 nodes for prefixes in a supernet with room
// for only 63, against a real Consul: every node gets a distinct prefix,
// and asking again returns the same one.
func TestConcurrentClaims(t *testing.T) {
	consul := testlab.StartDevConsul(t)
	kv := consul.Client(t).KV()
	super := netip.MustParsePrefix("fdaa::/114")
	ctx := context.Background()
	var mu sync.Mutex
	got := map[string]netip.Prefix{}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := fmt.Sprintf("n%d", i)
			p, claimed, err := Claim(ctx, kv, node, super, 120)
			if err != nil || !claimed {
				t.Errorf("Claim(%s) = %v, %v, %v", node, p, claimed, err)
				return
			}
			mu.Lock()
			got[node] = p
			mu.Unlock()
		}()
	}
	wg.Wait()
	owners := map[netip.Prefix]string{}
	for node, p := range got {
		if o, dup := owners[p]; dup {
			t.Errorf("%s given to both %s and %s", p, o, node)
		}
		owners[p] = node
		if !super.Contains(p.Addr()) {
			t.Errorf("%s outside %s", p, super)
		}
	}
	again, claimed, err := Claim(ctx, kv, "n7", super, 120)
	if err != nil || claimed || again != got["n7"] {
		t.Errorf("second Claim(n7) = %v, claimed=%v, %v; want %v unchanged", again, claimed, err, got["n7"])
	}
	if _, err := ClaimExact(ctx, kv, "n8", got["n7"]); !errors.Is(err, ErrClaimedByOther) {
		t.Errorf("ClaimExact of another node's prefix: %v, want ErrClaimedByOther", err)
	}
	if err := Release(ctx, kv, "n8", got["n7"]); !errors.Is(err, ErrClaimedByOther) {
		t.Errorf("Release of another node's prefix: %v, want ErrClaimedByOther", err)
	}
	if err := Release(ctx, kv, "n7", got["n7"]); err != nil {
		t.Fatal(err)
	}
	if claimed, err := ClaimExact(ctx, kv, "n8", got["n7"]); err != nil || !claimed {
		t.Errorf("a released prefix could not be claimed again: %v, %v", claimed, err)
	}
	// Exhaustion: 63 usable /120s in a /114; 50 taken (one moved), so 13 more fit.
	for i := range 13 {
		if _, _, err := Claim(ctx, kv, fmt.Sprintf("x%d", i), super, 120); err != nil {
			t.Fatalf("claim %d of the last 13: %v", i, err)
		}
	}
	if _, _, err := Claim(ctx, kv, "one-too-many", super, 120); !errors.Is(err, ErrExhausted) {
		t.Errorf("claim in a full supernet: %v, want ErrExhausted", err)
	}
}
