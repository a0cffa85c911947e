package catalogsync

import (
	"context"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/peers"
)

func TestAtLeast(t *testing.T) {
	for _, tc := range []struct {
		n    uint64
		want string
	}{
		{0, `^(0|[1-9]|[1-9][0-9]{1,})$`},
		{9, `^(9|[1-9][0-9]{1,})$`},
		{10, `^(10|[2-9][0-9]{1}|1[1-9]|[1-9][0-9]{2,})$`},
		{1796, `^(1796|[2-9][0-9]{3}|1[8-9][0-9]{2}|179[7-9]|[1-9][0-9]{4,})$`},
	} {
		if diff := cmp.Diff(tc.want, atLeast(tc.n)); diff != "" {
			t.Errorf("atLeast(%d) (-want +got):\n%s", tc.n, diff)
		}
	}
	// Against the numbers' order, near each bound and far from it.
	rng := rand.New(rand.NewPCG(1, 2))
	bounds := []uint64{0, 1, 9, 10, 99, 100, 1796, 1e18, 1796400000000000000, 1<<64 - 1}
	for range 200 {
		bounds = append(bounds, rng.Uint64()>>rng.UintN(64))
	}
	for _, n := range bounds {
		re := regexp.MustCompile(atLeast(n))
		tries := []uint64{n, n - 1, n + 1, n / 10, n * 10, n + 9, n - 9, 1<<64 - 1}
		for range 50 {
			tries = append(tries, rng.Uint64()>>rng.UintN(64))
		}
		for _, m := range tries {
			s := strconv.FormatUint(m, 10)
			if got, want := re.MatchString(s), m >= n; got != want {
				t.Fatalf("atLeast(%d) matches %s: %v, want %v", n, s, got, want)
			}
		}
		for _, s := range []string{"", "0" + strconv.FormatUint(n, 10), strconv.FormatUint(n, 10) + "x", "-1"} {
			if s != "0" && re.MatchString(s) {
				t.Fatalf("atLeast(%d) matches %q", n, s)
			}
		}
	}
}

// TestCatchUp misses hints beyond the ring, against a real Consul: the
// changes signed since the last list come in one filtered read, as a
// delta, before the whole list (read right after) brings the rest: a
// change dated long before the list, and an unsigned one.
func TestCatchUp(t *testing.T) {
	c := testlab.StartDevConsul(t).Client(t)
	reader := &Catalog{Client: c, Service: "meshd", HintKey: "meshd/hint", FullReadInterval: time.Hour}
	register := func(id string, meta map[string]string) {
		t.Helper()
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "meshd", Meta: meta}); err != nil {
			t.Fatal(err)
		}
	}
	register("meshd-before", map[string]string{peers.MetaSerial: strconv.FormatInt(time.Now().UnixNano(), 10)})
	testlab.Eventually(t, 10*time.Second, "the first instance in the catalog", func() bool {
		got, _, err := c.Health().Service("meshd", "", false, nil)
		return err == nil && len(got) == 1
	})
	seen := watchViews(t, reader, "h1")
	testlab.Eventually(t, 10*time.Second, "the first list", func() bool { return len(seen()) > 0 })

	// Changes whose hints are lost: two signed now, one signed long ago,
	// one unsigned, and a newer version of the instance the list has.
	now := time.Now()
	for _, id := range []string{"meshd-a", "meshd-b"} {
		register(id, map[string]string{peers.MetaSerial: strconv.FormatInt(now.UnixNano(), 10)})
	}
	register("meshd-old", map[string]string{peers.MetaSerial: strconv.FormatInt(now.Add(-time.Hour).UnixNano(), 10)})
	register("meshd-unsigned", map[string]string{"v": "1"})
	register("meshd-before", map[string]string{peers.MetaSerial: strconv.FormatInt(now.Add(time.Millisecond).UnixNano(), 10)})
	testlab.Eventually(t, 10*time.Second, "the changes in the catalog", func() bool {
		got, _, err := c.Health().Service("meshd", "", false, nil)
		return err == nil && len(got) == 5
	})
	n := len(seen())
	// A hint numbered far past the last: the ring cannot give back the
	// ones between.
	gap := Hint{Seq: 10 * HintRing, ConsulNode: "nowhere", ServiceID: "meshd-nothing", Index: 1}
	if _, err := c.KV().Put(&api.KVPair{Key: "meshd/hint", Value: gap.Value()}, nil); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 10*time.Second, "the whole list after the gap", func() bool {
		return slices.ContainsFunc(seen()[n:], func(s Snapshot) bool { return !s.Delta })
	})
	after := seen()[n:]
	first := after[0]
	if !first.Delta {
		t.Fatalf("the first view after the gap is the whole list (%d entries), not the catch-up's delta", len(first.Entries))
	}
	if diff := cmp.Diff([]string{"meshd-a", "meshd-b", "meshd-before"}, first.Changed); diff != "" {
		t.Errorf("the catch-up's changed IDs (-want +got):\n%s", diff)
	}
	last := after[len(after)-1]
	var ids []string
	for _, e := range last.Entries {
		ids = append(ids, e.ServiceID)
	}
	if diff := cmp.Diff([]string{"meshd-a", "meshd-b", "meshd-before", "meshd-old", "meshd-unsigned"}, ids); diff != "" {
		t.Errorf("the view after the whole list (-want +got):\n%s", diff)
	}
	if st := reader.State(); st.Gaps != 1 || st.CatchUps != 1 {
		t.Errorf("gaps %d, catch-ups %d; want 1 and 1", st.Gaps, st.CatchUps)
	}

	// A second gap within 5 s: no second catch-up (a writer flooding the
	// hint key with skipped numbers costs one per 5 s); the whole list,
	// as spaced, brings the change.
	register("meshd-c", map[string]string{peers.MetaSerial: strconv.FormatInt(time.Now().UnixNano(), 10)})
	n = len(seen())
	gap.Seq += 10 * HintRing
	if _, err := c.KV().Put(&api.KVPair{Key: "meshd/hint", Value: gap.Value()}, nil); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 15*time.Second, "meshd-c in a whole list", func() bool {
		return slices.ContainsFunc(seen()[n:], func(s Snapshot) bool {
			return !s.Delta && slices.ContainsFunc(s.Entries, func(e peers.Entry) bool { return e.ServiceID == "meshd-c" })
		})
	})
	if st := reader.State(); st.Gaps != 2 || st.CatchUps != 1 {
		t.Errorf("after a second gap at once: gaps %d, catch-ups %d; want 2 and 1", st.Gaps, st.CatchUps)
	}
}

// TestRevocationsFolder: against a real Consul, a host's watch of an empty
// revocations folder returns at every KV write (here, hints); once the
// folder key is there, hints no longer wake it, and the folder key is not
// taken for a revocation.
func TestRevocationsFolder(t *testing.T) {
	c := testlab.StartDevConsul(t).Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{Client: c}
	var mu sync.Mutex
	var delivered [][][]byte
	var wg sync.WaitGroup
	wg.Go(func() {
		w.RunRevocations(ctx, func(v [][]byte) {
			mu.Lock()
			delivered = append(delivered, v)
			mu.Unlock()
		})
	})
	defer func() {
		cancel()
		wg.Wait()
	}()
	testlab.Eventually(t, 10*time.Second, "the first read", func() bool { return w.State().Reads > 0 })
	hints := func() uint64 {
		t.Helper()
		before := w.State().Reads
		for i := range 5 {
			if _, err := WriteHint(ctx, c, "meshd/hint", Hint{ConsulNode: "n", ServiceID: "meshd-x" + strconv.Itoa(i), Index: 1}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
		return w.State().Reads - before
	}
	if n := hints(); n < 5 {
		t.Fatalf("without the folder key, 5 hints woke the watch %d times; want every one (Consul answers an empty prefix with the store's index)", n)
	}
	for i, want := range []bool{true, false} {
		created, err := EnsureRevocationsFolder(ctx, c)
		if err != nil || created != want {
			t.Fatalf("EnsureRevocationsFolder call %d = %v, %v; want %v", i+1, created, err, want)
		}
	}
	time.Sleep(500 * time.Millisecond) // the folder's own write wakes it once
	if n := hints(); n != 0 {
		t.Errorf("with the folder key, 5 hints woke the watch %d times; want none", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, v := range delivered {
		if len(v) != 0 {
			t.Errorf("delivered revocations %q; want none (the folder key is not one)", v)
		}
	}
}
