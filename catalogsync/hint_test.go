package catalogsync_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/peers"
)

// sig64 is the base64 of a signature of zeros.
var sig64 = base64.StdEncoding.EncodeToString(make([]byte, 64))

func TestParseHint(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    catalogsync.Hint
		wantErr bool
	}{
		{in: "7 node-1 meshd-h1 42", want: catalogsync.Hint{Seq: 7, ConsulNode: "node-1", ServiceID: "meshd-h1", Index: 42}},
		{in: "node-1 meshd-h1 42", wantErr: true}, // no sequence number
		{in: "0 node-1 meshd-h1 42", wantErr: true},
		{in: "07 node-1 meshd-h1 42", wantErr: true},
		{in: "x node-1 meshd-h1 42", wantErr: true},
		{in: "7 node-1 meshd-h1", wantErr: true},
		{in: "7 node-1", wantErr: true},
		{in: "7  meshd-h1 42", wantErr: true},
		{in: "7 node-1  42", wantErr: true},
		{in: "7 node-1 meshd-h1 ", wantErr: true},
		{in: "7 node-1 meshd h1 42", wantErr: true},
		{in: "7 node-1 meshd-h1 42\n", wantErr: true},
		{in: "7 node-1 meshd-h1 0", wantErr: true},
		{in: "7 node-1 meshd-h1 042", wantErr: true},
		{in: "7 node-1 meshd-h1 -1", wantErr: true},
		{in: "7 node-1 meshd-h1 18446744073709551616", wantErr: true},
		{in: "", wantErr: true},
		{in: "7 node-1 meshd-h1 42 77 " + sig64, want: catalogsync.Hint{Seq: 7, ConsulNode: "node-1", ServiceID: "meshd-h1", Index: 42,
			Withdrawal: &peers.Withdrawal{Serial: 77, Signature: make([]byte, 64)}}},
		{in: "7 node-1 meshd-h1 42 77", wantErr: true},
		{in: "7 node-1 meshd-h1 42 0 " + sig64, wantErr: true},
		{in: "7 node-1 meshd-h1 42 77 " + sig64[:84] + "==", wantErr: true},
		{in: "7 node-1 meshd-h1 42 77 not-base64!", wantErr: true},
		{in: "7 node-1 meshd-h1 42 77 " + sig64 + " x", wantErr: true},
		// A carried entry: a newline, then its Meta and Tags as JSON.
		{in: "7 node-1 meshd-h1 42\n" + `{"meta":{"node":"h1","v":"1"},"tags":["gw"]}`, want: catalogsync.Hint{Seq: 7, ConsulNode: "node-1", ServiceID: "meshd-h1", Index: 42,
			Carried: &catalogsync.Carried{Meta: map[string]string{"node": "h1", "v": "1"}, Tags: []string{"gw"}}}},
		{in: "7 node-1 meshd-h1 42\n" + `{"meta":{}}` + "\n", want: catalogsync.Hint{Seq: 7, ConsulNode: "node-1", ServiceID: "meshd-h1", Index: 42,
			Carried: &catalogsync.Carried{Meta: map[string]string{}}}},
		{in: "7 node-1 meshd-h1 42\n", wantErr: true},                                                         // nothing carried after the newline
		{in: "7 node-1 meshd-h1 42\n" + `{"tags":["gw"]}`, wantErr: true},                                     // no meta
		{in: "7 node-1 meshd-h1 42\n" + `{"meta":null}`, wantErr: true},                                       // no meta
		{in: "7 node-1 meshd-h1 42\n" + `{"meta":{"v":1}}`, wantErr: true},                                    // a value not a string
		{in: "7 node-1 meshd-h1 42\n" + `{"meta":{},"health":"passing"}`, wantErr: true},                      // a field not carried
		{in: "7 node-1 meshd-h1 42\n" + `{"meta":{}} {"meta":{}}`, wantErr: true},                             // two entries
		{in: "7 node-1 meshd-h1 42\n" + `{"meta":{}}x`, wantErr: true},                                        // data after it
		{in: "7 node-1 meshd-h1 42\n" + `["meta"]`, wantErr: true},                                            // not an object
		{in: "7 node-1 meshd-h1 42 77 " + sig64 + "\n" + `{"meta":{}}`, wantErr: true},                        // an entry with a withdrawal
		{in: "7 node-1 meshd-h1 42\n" + `{"meta":{"k":"` + strings.Repeat("x", 6<<10) + `"}}`, wantErr: true}, // too large
		{in: "7 node-1\r meshd-h1 42", wantErr: true},
	} {
		got, err := catalogsync.ParseHint([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseHint(%q) error %v, want error: %t", tc.in, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseHint(%q) (-want +got):\n%s", tc.in, diff)
		}
		if err == nil {
			if back, _ := catalogsync.ParseHint(got.Value()); !cmp.Equal(back, got) {
				t.Errorf("Value of %+v does not parse back: %+v", got, back)
			}
		}
	}
}

// FuzzParseHint: a value that parses is a hint whose value parses back
// to the same hint, and is the value itself when it carries no entry
// (JSON may be written more than one way).
func FuzzParseHint(f *testing.F) {
	f.Add([]byte("1 node-1 meshd-h1 42"))
	f.Add([]byte("a b c d"))
	f.Add([]byte("9 node-1 meshd-h1 42 77 " + sig64))
	f.Add([]byte("9 node-1 meshd-h1 42\n" + `{"meta":{"node":"h1","a\u0000":"\ud800"},"tags":["x",""]}`))
	f.Add([]byte("9 node-1 meshd-h1 42\n" + `{"meta":{"k":"` + strings.Repeat("<", 3000) + `"},"tags":[]}`)) // grows when written again
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := catalogsync.ParseHint(b)
		if err != nil {
			return
		}
		if h.Seq == 0 || h.ConsulNode == "" || h.ServiceID == "" || h.Index == 0 || h.Carried == nil && string(h.Value()) != string(b) {
			t.Fatalf("ParseHint(%q) = %+v, value %q", b, h, h.Value())
		}
		v := h.Value()
		back, err := catalogsync.ParseHint(v)
		if err != nil && h.Carried != nil && len(v) > len(b) && len(v) > 6<<10 {
			// The decoder turns an invalid byte into U+FFFD and the encoder
			// writes U+2028 or "<" escaped: written again, the entry may
			// pass the 6 KiB bound it was within.
			return
		}
		if err != nil || !cmp.Equal(back, h) {
			t.Fatalf("ParseHint(%q) = %+v; its value %q parses to %+v, %v", b, h, h.Value(), back, err)
		}
	})
}

// TestSequence: which hint numbers a reader skipped, and when it cannot
// read them back from the ring.
func TestSequence(t *testing.T) {
	type step struct {
		seq      uint64
		wantFrom uint64
		wantLost bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"in order", []step{{5, 5, false}, {6, 6, false}, {7, 7, false}}},
		{"first is the start", []step{{900, 900, false}, {901, 901, false}}},
		{"no key at first", []step{{0, 0, false}, {1, 1, false}}},
		{"skipped two", []step{{5, 5, false}, {8, 6, false}}},
		{"skipped the whole ring but one", []step{{1, 1, false}, {1 + catalogsync.HintRing, 2, false}}},
		{"skipped more than the ring", []step{{1, 1, false}, {2 + catalogsync.HintRing, 2 + catalogsync.HintRing, true}}},
		{"went back", []step{{10, 10, false}, {3, 3, true}, {4, 4, false}}},
		{"same number again", []step{{10, 10, false}, {10, 10, true}}},
		{"overwritten, then restarted", []step{{10, 10, false}, {0, 0, true}, {1, 1, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s catalogsync.Sequence
			for i, st := range tc.steps {
				from, lost := s.Next(st.seq)
				if from != st.wantFrom || lost != st.wantLost {
					t.Errorf("step %d: Next(%d) = %d, %t; want %d, %t", i, st.seq, from, lost, st.wantFrom, st.wantLost)
				}
			}
		})
	}
}

func entry(id string, modify uint64, health string) peers.Entry {
	return peers.Entry{ServiceID: id, ModifyIndex: modify, Health: health, Meta: map[string]string{"node": id}}
}

func TestOverlay(t *testing.T) {
	base := &catalogsync.Snapshot{Index: 100, Entries: []peers.Entry{
		entry("meshd-a", 10, peers.HealthPassing), entry("meshd-c", 20, peers.HealthCritical), entry("meshd-e", 30, peers.HealthPassing),
	}}
	changedC := entry("meshd-c", 120, "")
	newB, newF := entry("meshd-b", 130, ""), entry("meshd-f", 140, "")
	withdrawal := peers.Withdrawal{Serial: 9, Signature: []byte("sig")}
	withdrawn := func(e peers.Entry) peers.Entry { e.Withdrawal = &withdrawal; return e }
	for _, tc := range []struct {
		name   string
		hinted map[string]catalogsync.Hinted
		want   []peers.Entry
	}{
		{name: "nothing hinted", want: base.Entries},
		{name: "changed, keeps its health", hinted: map[string]catalogsync.Hinted{"meshd-c": {Entry: &changedC, Index: 120}},
			want: []peers.Entry{base.Entries[0], entry("meshd-c", 120, peers.HealthCritical), base.Entries[2]}},
		{name: "added in order, passing", hinted: map[string]catalogsync.Hinted{"meshd-b": {Entry: &newB, Index: 130}, "meshd-f": {Entry: &newF, Index: 140}},
			want: []peers.Entry{base.Entries[0], entry("meshd-b", 130, peers.HealthPassing), base.Entries[1], base.Entries[2], entry("meshd-f", 140, peers.HealthPassing)}},
		{name: "a read that found nothing removes nothing", hinted: map[string]catalogsync.Hinted{"meshd-a": {Index: 101}, "meshd-e": {Index: 150}},
			want: base.Entries},
		{name: "a withdrawal goes on the entry the list has", hinted: map[string]catalogsync.Hinted{"meshd-c": {Index: 150, Withdrawal: &withdrawal}},
			want: []peers.Entry{base.Entries[0], withdrawn(base.Entries[1]), base.Entries[2]}},
		{name: "a withdrawal of what the list lacks adds nothing", hinted: map[string]catalogsync.Hinted{"meshd-d": {Index: 150, Withdrawal: &withdrawal}},
			want: base.Entries},
		{name: "gone but never there", hinted: map[string]catalogsync.Hinted{"meshd-d": {Index: 150}}, want: base.Entries},
		{name: "a read no newer than the list is left out", hinted: map[string]catalogsync.Hinted{"meshd-c": {Entry: &changedC, Index: 100}, "meshd-a": {Index: 90}},
			want: base.Entries},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := append([]peers.Entry(nil), base.Entries...)
			got := catalogsync.Overlay(base, tc.hinted)
			if got.Index != base.Index {
				t.Errorf("index %d, want the list's %d", got.Index, base.Index)
			}
			if diff := cmp.Diff(tc.want, got.Entries); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, base.Entries); diff != "" {
				t.Errorf("the list itself changed (-before +after):\n%s", diff)
			}
			// A delta of any IDs, put into the view without the hints,
			// makes the view with them.
			all := []string{"meshd-a", "meshd-b", "meshd-c", "meshd-d", "meshd-e", "meshd-f"}
			for mask := range 1 << len(all) {
				var ids []string
				for i, id := range all {
					if mask&(1<<i) != 0 {
						ids = append(ids, id)
					}
				}
				hinted := map[string]catalogsync.Hinted{}
				for id, h := range tc.hinted {
					if slices.Contains(ids, id) {
						hinted[id] = h
					}
				}
				view := slices.Clone(catalogsync.Overlay(base, nil).Entries)
				got := catalogsync.ApplyDelta(view, ids, catalogsync.OverlayIDs(base, hinted, ids))
				if diff := cmp.Diff(catalogsync.Overlay(base, hinted).Entries, got); diff != "" {
					t.Errorf("ids %v: the view with the delta put in differs from Overlay (-Overlay +delta):\n%s", ids, diff)
				}
			}
		})
	}
	if catalogsync.Overlay(nil, map[string]catalogsync.Hinted{"meshd-b": {Entry: &newB, Index: 130}}) != nil {
		t.Error("Overlay of no list is not nil")
	}
}

// TestPrune: a list drops the reads no newer than its index, and the
// carried entries taken a window or more before the list's read was sent,
// whatever their index.
func TestPrune(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	hinted := map[string]catalogsync.Hinted{"a": {Index: 5}, "b": {Index: 10}, "c": {Index: 11},
		"d": {Index: 1 << 40, Carried: true, Taken: t0}, "e": {Index: 1 << 40, Carried: true, Taken: t0.Add(time.Second)},
		"f": {Index: 1 << 40, Taken: t0}}
	catalogsync.Prune(hinted, 10, t0.Add(time.Minute), time.Minute)
	want := map[string]catalogsync.Hinted{"c": {Index: 11}, "e": {Index: 1 << 40, Carried: true, Taken: t0.Add(time.Second)}, "f": {Index: 1 << 40, Taken: t0}}
	if diff := cmp.Diff(want, hinted); diff != "" {
		t.Errorf("after Prune(10, a minute after) (-want +got):\n%s", diff)
	}
	catalogsync.Prune(hinted, 10, time.Time{}, time.Minute)
	if diff := cmp.Diff(want, hinted); diff != "" {
		t.Errorf("after Prune(10) of a list read at an unknown time (-want +got):\n%s", diff)
	}
}

// TestHints runs hints through a real agent: hint key values reach a
// watcher of the key (the one there when it started too), a value that is
// not a hint is reported lost and restarts the sequence, and ReadInstance
// and WaitInstance see one instance come and go.
func TestHints(t *testing.T) {
	testlab.RequireRoot(t)
	c := testlab.StartDevConsul(t).Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	node, err := c.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	const key = "meshd/hint"
	old, err := catalogsync.WriteHint(ctx, c, key, catalogsync.Hint{ConsulNode: node, ServiceID: "meshd-old", Index: 1})
	if err != nil || old.Seq != 1 {
		t.Fatalf("first WriteHint = %+v, %v; want number 1", old, err)
	}
	got := make(chan catalogsync.Hint, 10)
	lost := make(chan string, 10)
	w := &catalogsync.Watcher{Client: c}
	go w.RunHints(ctx, key, func(hs []catalogsync.Hint) {
		for _, h := range hs {
			got <- h
		}
	}, func(why string, _ bool) { lost <- why })
	// A delivered hint is dated by Consul's write of the key.
	written := func() uint64 {
		t.Helper()
		p, _, err := c.KV().Get(key, nil)
		if err != nil || p == nil {
			t.Fatalf("read %s: %v", key, err)
		}
		return p.ModifyIndex
	}
	old.Written = written()
	select {
	case g := <-got:
		if diff := cmp.Diff(old, g); diff != "" {
			t.Errorf("the hint there at start (-want +got):\n%s", diff)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hint there at start was not delivered within 10s")
	}

	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte("not a hint")}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case why := <-lost:
		if !strings.Contains(why, "something else") {
			t.Errorf("lost %q, want it to say the key holds something else", why)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a value that is not a hint was not reported lost within 10s")
	}
	r := registration(t, "h7", 7)
	h := catalogsync.Hint{ConsulNode: node, ServiceID: r.ID()}
	if err := catalogsync.Register(ctx, c, r); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if h.Index, err = catalogsync.WaitInstance(wctx, c, "meshd", h, func(e *peers.Entry) bool { return e != nil && r.Matches(*e) }); err != nil || h.Index == 0 {
		t.Fatalf("WaitInstance (registered) = %d, %v", h.Index, err)
	}
	if h, err = catalogsync.WriteHint(ctx, c, key, h); err != nil || h.Seq != 1 {
		t.Fatalf("WriteHint over a value that is not a hint = %+v, %v; want number 1", h, err)
	}
	h.Written = written()
	select {
	case g := <-got:
		if diff := cmp.Diff(h, g); diff != "" {
			t.Errorf("hint delivered (-want +got):\n%s", diff)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no hint delivered within 10s")
	}
	e, index, err := catalogsync.ReadInstance(ctx, c, "meshd", h, nil)
	if err != nil || e == nil || !r.Matches(*e) || index == 0 {
		t.Fatalf("ReadInstance = %+v, %d, %v; want %s at a nonzero index", e, index, err, r.ID())
	}
	if e, _, err := catalogsync.ReadInstance(ctx, c, "other", h, nil); err != nil || e != nil {
		t.Errorf("ReadInstance of another service = %+v, %v; want none", e, err)
	}
	if err := catalogsync.Deregister(ctx, c, r.Node); err != nil {
		t.Fatal(err)
	}
	if gone, err := catalogsync.WaitInstance(wctx, c, "meshd", h, func(e *peers.Entry) bool { return e == nil }); err != nil || gone <= index {
		t.Fatalf("WaitInstance (gone) = %d, %v; want an index above %d", gone, err, index)
	}
	if e, index2, err := catalogsync.ReadInstance(ctx, c, "meshd", h, nil); err != nil || e != nil || index2 <= index {
		t.Errorf("ReadInstance after deregistering = %+v, %d, %v; want none at an index above %d", e, index2, err, index)
	}
	unknown := catalogsync.Hint{ConsulNode: "no-such-node", ServiceID: r.ID()}
	if e, _, err := catalogsync.ReadInstance(ctx, c, "meshd", unknown, nil); err != nil || e != nil {
		t.Errorf("ReadInstance on an unknown node = %+v, %v; want none", e, err)
	}
	select {
	case g := <-got:
		t.Errorf("hint delivered for a value that is none, or twice: %+v", g)
	case why := <-lost:
		t.Errorf("lost reported for hints in order: %s", why)
	default:
	}
}

// TestHintRing: hints a reader's wake skipped come back from the ring, in
// order; more than the ring holds is reported lost. Concurrent writers
// each get their own number. The reader is made slow by its limiter (one
// wake per 6s), so that writes pile up between its wakes (HintRing + 8 of
// them must fit in one pause).
func TestHintRing(t *testing.T) {
	testlab.RequireRoot(t)
	c := testlab.StartDevConsul(t).Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const key = "meshd/hint"
	write := func(id string) catalogsync.Hint {
		t.Helper()
		h, err := catalogsync.WriteHint(ctx, c, key, catalogsync.Hint{ConsulNode: "n", ServiceID: id, Index: 1})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	write("meshd-start")
	got := make(chan catalogsync.Hint, 4*catalogsync.HintRing)
	lost := make(chan string, 10)
	w := &catalogsync.Watcher{Client: c, Limiter: rate.NewLimiter(rate.Every(6*time.Second), 1)}
	var batched atomic.Int32 // deliveries of more than one hint: a wake's and the ring's
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.RunHints(ctx, key, func(hs []catalogsync.Hint) {
			if len(hs) > 1 {
				batched.Add(1)
			}
			for _, h := range hs {
				got <- h
			}
		}, func(why string, _ bool) { lost <- why })
	}()
	defer func() { cancel(); <-done }()
	if h := <-got; h.ServiceID != "meshd-start" {
		t.Fatalf("first hint %+v", h)
	}

	// Five writers at once, three hints each: 15 distinct numbers.
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			for j := range 3 {
				write(fmt.Sprintf("meshd-w%d-%d", i, j))
			}
		})
	}
	wg.Wait()
	var seqs []uint64
	for len(seqs) < 15 {
		select {
		case h := <-got:
			seqs = append(seqs, h.Seq)
		case why := <-lost:
			t.Fatalf("lost with 15 hints skipped: %s", why)
		case <-time.After(30 * time.Second):
			t.Fatalf("after 30s, delivered %v of 15 hints", seqs)
		}
	}
	if want := []uint64{2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}; !slices.Equal(seqs, want) {
		t.Errorf("delivered numbers %v, want %v", seqs, want)
	}
	if w.State().RingReads == 0 {
		t.Error("no ring read counted")
	}
	if batched.Load() == 0 {
		t.Error("the hints read back from the ring were not delivered with the one that woke the reader")
	}

	// More than the ring holds between two wakes (the first write wakes
	// the reader, the rest come within its 6s pause): lost, and the last
	// hint is still delivered.
	var last catalogsync.Hint
	for i := range catalogsync.HintRing + 8 {
		last = write(fmt.Sprintf("meshd-x%d", i))
	}
	select {
	case why := <-lost:
		t.Logf("lost: %s", why)
	case <-time.After(30 * time.Second):
		t.Fatal("more hints skipped than the ring holds, and nothing reported lost")
	}
	testlab.Eventually(t, 15*time.Second, "the last hint delivered", func() bool {
		for {
			select {
			case h := <-got:
				if h.Seq == last.Seq {
					return true
				}
			default:
				return false
			}
		}
	})
}
