package peers

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// benchFleet is n entries, signed by f when f is set.
func benchFleet(b testing.TB, f *fleet, n int) []Entry {
	entries := make([]Entry, n)
	for i := range entries {
		e := Entry{ServiceID: fmt.Sprintf("meshd-n%05d", i), CreateIndex: uint64(10 + i), ModifyIndex: uint64(10 + i), Health: HealthPassing,
			Meta: map[string]string{MetaVersion: "1", MetaNode: fmt.Sprintf("n%05d", i), MetaPublicKey: mustKey(byte(i)).String(),
				MetaEndpoint: fmt.Sprintf("198.18.%d.%d:51820", i/256, i%256), MetaPrefix: fmt.Sprintf("fdaa:1:%x::/48", i)}}
		k := mustKey(byte(i))
		k[0], k[1], k[2] = 1, byte(i>>8), byte(i)
		e.Meta[MetaPublicKey] = k.String()
		if f != nil {
			p, err := ParseEntry(e, Rules{Supernet: netip.MustParsePrefix("fdaa::/16")})
			if err != nil {
				b.Fatal(err)
			}
			s := f.signer(p.Node, e.Meta[MetaPrefix], time.Unix(2_000_000_000, 0))
			if e.Meta, err = Sign(e.Meta, p, s, 1); err != nil {
				b.Fatal(err)
			}
		}
		entries[i] = e
	}
	return entries
}

// benchRules are the rules of a benchmark, with a fleet that signs when
// signed.
func benchRules(signed bool) (*fleet, Rules) {
	if !signed {
		return nil, Rules{Supernet: netip.MustParsePrefix("fdaa::/16")}
	}
	f := newFleet(&testing.T{}, "bench")
	return f, f.rules()
}

// BenchmarkInitialPlan is a host's first plan of a catalog of 10,000
// entries (every entry parsed, and verified when signed): the planning
// share of an initial sync, with and without trust.
func BenchmarkInitialPlan(b *testing.B) {
	const n = 10000
	for _, signed := range []bool{false, true} {
		b.Run(fmt.Sprintf("signed=%v/entries=%d", signed, n), func(b *testing.B) {
			f, rules := benchRules(signed)
			entries := benchFleet(b, f, n)
			now := time.Unix(1_900_000_000, 0)
			b.ResetTimer()
			for b.Loop() {
				pl := &Planner{Rules: rules}
				res, err := pl.Plan(entries, Self{Node: "self"}, func() (Observed, error) { return Observed{}, nil }, now)
				if err != nil || len(res.Desired) != n {
					b.Fatalf("%d peers, %v", len(res.Desired), err)
				}
			}
		})
	}
}

// BenchmarkChangedEntry is one entry changed (a new key, signed) in a
// catalog of 10,000, planned from the change (PlanChanged, as the agent
// plans a hint's delta): the per-event planning cost with trust (one
// verification) and without.
func BenchmarkChangedEntry(b *testing.B) {
	const n = 10000
	for _, signed := range []bool{false, true} {
		b.Run(fmt.Sprintf("signed=%v/entries=%d", signed, n), func(b *testing.B) {
			f, rules := benchRules(signed)
			entries := benchFleet(b, f, n)
			// Two versions of entry 0 to alternate between.
			versions := [2]Entry{entries[0], benchFleet(b, f, 1)[0]}
			versions[1].ModifyIndex = 1 << 40
			if signed {
				k := mustKey(200)
				versions[1].Meta[MetaPublicKey] = k.String()
				p, err := ParseEntry(versions[1], Rules{Supernet: rules.Supernet})
				if err != nil {
					b.Fatal(err)
				}
				if versions[1].Meta, err = Sign(versions[1].Meta, p, f.signers["n00000"], 1<<40); err != nil {
					b.Fatal(err)
				}
			} else {
				versions[1].Meta[MetaPublicKey] = mustKey(200).String()
			}
			pl := &Planner{Rules: rules}
			now := time.Unix(1_900_000_000, 0)
			plan := func(i int) {
				// One list changed in place, as the agent's view is, and
				// the changed ID named (PlanChanged).
				entries[0] = versions[i%2]
				if i%2 == 0 {
					entries[0].ModifyIndex = uint64(1<<41 + i) // a new version each time
				}
				changed := []string{entries[0].ServiceID}
				if i <= 1 {
					changed = nil // the first plan: every entry
				}
				res, err := pl.PlanChanged(entries, changed, Self{Node: "self"}, func() (Observed, error) { return Observed{}, nil }, now)
				if err != nil || len(res.Desired) != n {
					b.Fatalf("%d peers, %v", len(res.Desired), err)
				}
				pl.Commit(res)
			}
			plan(1)
			i := 0
			b.ResetTimer()
			for b.Loop() {
				i++
				plan(i)
			}
		})
	}
}
