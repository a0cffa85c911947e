package firewall

import (
	"net/netip"
	"slices"
)

// Rule lets packets from Sources (user peer addresses) to Destinations
// through.
type Rule struct {
	Sources      []netip.Addr
	Destinations []netip.Prefix
}

// Ruleset is the whole policy of a user link: packets arriving on Interface
// pass when a rule matches, and are dropped otherwise, whether they are
// forwarded or addressed to the gateway itself.
type Ruleset struct {
	Interface string
	// MeshInterface, when set, is the mesh link: packets are forwarded
	// into it only from Interface (users) and from itself, never from the
	// underlay or any other link (a neighbour routing the mesh through the
	// gateway would otherwise reach mesh hosts with any source it likes).
	MeshInterface string
	Rules         []Rule
}

// sameShape reports whether two rulesets differ at most in their rules'
// sources, which can be changed in place as set elements.
func sameShape(a, b Ruleset) bool {
	return a.Interface == b.Interface && a.MeshInterface == b.MeshInterface && slices.EqualFunc(a.Rules, b.Rules, func(x, y Rule) bool {
		return slices.Equal(x.Destinations, y.Destinations)
	})
}

// diffSources lists what to add and delete to take have to want.
func diffSources(have, want []netip.Addr) (add, del []netip.Addr) {
	in := make(map[netip.Addr]bool, len(have))
	for _, a := range have {
		in[a] = true
	}
	keep := make(map[netip.Addr]bool, len(want))
	for _, a := range want {
		keep[a] = true
		if !in[a] {
			add = append(add, a)
		}
	}
	for _, a := range have {
		if !keep[a] {
			del = append(del, a)
		}
	}
	return add, del
}
