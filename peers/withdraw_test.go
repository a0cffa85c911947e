package peers

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestWithdraw: a host's own withdrawal takes its peer out at once (the
// grace still applies: here none); one that does not verify, is signed by
// another host, or is older than the entry changes nothing and is counted
// refused.
func TestWithdraw(t *testing.T) {
	f := newFleet(t, "authority")
	now := time.Unix(1_900_000_000, 0)
	h2, h3 := f.signed(2, 2, 100), f.signed(3, 3, 100)
	withdrawal := func(node string, by string, serial uint64) *Withdrawal {
		return &Withdrawal{Serial: serial, Signature: f.signers[by].SignWithdrawal(serial)}
	}
	with := func(e Entry, w *Withdrawal) Entry { e.Withdrawal = w; return e }
	tests := []struct {
		name    string
		h2      *Withdrawal
		want    map[string]wgtypes.Key
		refused uint64
	}{
		{"its own, newer than the entry", withdrawal("h2", "h2", 150), map[string]wgtypes.Key{"h3": mustKey(3)}, 0},
		{"signed by another host", withdrawal("h2", "h3", 150), map[string]wgtypes.Key{"h2": mustKey(2), "h3": mustKey(3)}, 1},
		{"older than the entry (a replay after a rejoin)", withdrawal("h2", "h2", 50), map[string]wgtypes.Key{"h2": mustKey(2), "h3": mustKey(3)}, 1},
		{"a bad signature", &Withdrawal{Serial: 150, Signature: make([]byte, 64)}, map[string]wgtypes.Key{"h2": mustKey(2), "h3": mustKey(3)}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl := &Planner{Rules: f.rules(), MaxFraction: 1}
			plan(t, pl, []Entry{h2, h3}, now)
			res := plan(t, pl, []Entry{with(h2, tt.h2), h3}, now.Add(time.Second))
			if diff := cmp.Diff(tt.want, keysOf(res.Desired)); diff != "" {
				t.Errorf("peers (-want +got):\n%s", diff)
			}
			if _, gone := tt.want["h2"]; !gone && len(res.Plan.Remove) != 1 {
				t.Errorf("plan removes %d peers, want h2's", len(res.Plan.Remove))
			}
			// The delta path brings it again: counted once.
			plan(t, pl, []Entry{with(h2, tt.h2), h3}, now.Add(2*time.Second))
			verified, refused := pl.Withdrawals()
			if refused != tt.refused || verified != 1-tt.refused {
				t.Errorf("withdrawals verified %d, refused %d; want %d, %d", verified, refused, 1-tt.refused, tt.refused)
			}
		})
	}
	// Remove slow still holds: with a grace the withdrawn peer is held.
	pl := &Planner{Rules: f.rules(), Grace: time.Hour, MaxFraction: 1}
	plan(t, pl, []Entry{h2, h3}, now)
	res := plan(t, pl, []Entry{with(h2, withdrawal("h2", "h2", 150)), h3}, now.Add(time.Second))
	if len(res.Plan.Remove) != 0 || len(res.Plan.Held) != 1 {
		t.Errorf("with a grace of an hour: removes %d, holds %d; want h2 held", len(res.Plan.Remove), len(res.Plan.Held))
	}
}
