package agent

import (
	"bytes"
	"slices"

	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/trust"
)

// revocations is what the agent made of the authority's revocations.
type revocations struct {
	raw     [][]byte // as the watch delivered them
	set     peers.Revoked
	invalid int // values that did not verify
}

// revoke gives the planner the revocations in raw that verify against
// the trusted authorities; unchanged values are not verified again.
func (a *Agent) revoke(raw [][]byte) {
	if a.revoked.set.Nodes != nil && slices.EqualFunc(raw, a.revoked.raw, bytes.Equal) {
		return
	}
	set := peers.Revoked{Nodes: map[string]bool{}, Identities: map[[32]byte]bool{}}
	invalid := 0
	for _, b := range raw {
		r, err := trust.VerifyRevocation(b, a.opts.Rules.Trust.Authorities)
		if err != nil {
			invalid++
			a.logger.Warn("ignoring a revocation that does not verify", "err", err)
			continue
		}
		if r.Node != "" {
			set.Nodes[r.Node] = true
		} else {
			set.Identities[[32]byte(r.Identity)] = true
		}
	}
	if len(set.Nodes)+len(set.Identities) > len(a.revoked.set.Nodes)+len(a.revoked.set.Identities) {
		a.logger.Warn("the authority revoked nodes or identities; their peers go at once",
			"nodes", len(set.Nodes), "identities", len(set.Identities))
	}
	a.revoked = revocations{raw: raw, set: set, invalid: invalid}
	a.planner.Revoke(set)
}
