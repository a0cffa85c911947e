package peers

import (
	"crypto/ed25519"

	"meshd.dev/meshd/trust"
)

// withdraw returns entries without those their own host withdrew: the
// withdrawal verifies under the identity of the entry's credential, for
// the entry's node, at a serial above the entry's. The entry is then as
// good as gone from the catalog, so its peer's removal starts now, under
// the same grace and breaker as any other. A withdrawal that does not
// verify (anyone may write the delta path) leaves the entry as it is and
// is counted refused.
func (pl *Planner) withdraw(entries []Entry) []Entry {
	first := -1
	for i := range entries {
		if entries[i].Withdrawal != nil {
			first = i
			break
		}
	}
	if first < 0 {
		return entries
	}
	if pl.withdrawn == nil {
		pl.withdrawn, pl.refused = map[string]uint64{}, map[string]uint64{}
	}
	out := append(make([]Entry, 0, len(entries)), entries[:first]...)
	for _, e := range entries[first:] {
		if e.Withdrawal == nil {
			out = append(out, e)
			continue
		}
		if pl.withdrawn1(&e) {
			continue
		}
		out = append(out, e)
	}
	return out
}

// withdrawn1 is withdraw for one entry with a withdrawal: true when it
// verifies (the entry is dropped); otherwise it takes the withdrawal off
// the entry. Each serial is counted once, verified or refused.
func (pl *Planner) withdrawn1(e *Entry) bool {
	if pl.withdrawn == nil {
		pl.withdrawn, pl.refused = map[string]uint64{}, map[string]uint64{}
	}
	w := e.Withdrawal
	if pl.verifyWithdrawal(*e) {
		if pl.withdrawn[e.ServiceID] != w.Serial {
			pl.withdrawn[e.ServiceID] = w.Serial
			pl.withdrawnN++
		}
		return true
	}
	if pl.refused[e.ServiceID] != w.Serial {
		pl.refused[e.ServiceID] = w.Serial
		pl.refusedN++
	}
	e.Withdrawal = nil
	return false
}

// verifyWithdrawal reports whether e's withdrawal is its host's: e itself
// verifies (its credential names the identity), and that identity signed
// the withdrawal of e's node at a serial above e's.
func (pl *Planner) verifyWithdrawal(e Entry) bool {
	w := e.Withdrawal
	if pl.Rules.Trust == nil || w == nil {
		return false
	}
	p, err := ParseEntry(e, pl.Rules)
	if err != nil || p.NotAfter.IsZero() || w.Serial <= p.Serial {
		return false
	}
	return trust.VerifyWithdrawal(ed25519.PublicKey(p.Identity[:]), p.Node, w.Serial, w.Signature)
}

// Withdrawals counts the withdrawals the delta path brought: verified
// (their entries dropped) and refused.
func (pl *Planner) Withdrawals() (verified, refused uint64) { return pl.withdrawnN, pl.refusedN }
