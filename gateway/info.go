package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/prefixalloc"
)

// Info is what a user's configuration needs from a gateway's catalog entry.
type Info struct {
	Node string
	// PublicKey and Endpoint are those of the gateway's user link, not of
	// its mesh link: rotating the mesh key leaves users' configurations
	// working.
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	// Pool is where users' addresses come from: inside the gateway's node
	// prefix, so the mesh already routes replies to the gateway.
	Pool   netip.Prefix
	Prefix netip.Prefix
}

// Meta is what a gateway adds to its service instance's Meta.
func (i Info) Meta() map[string]string {
	return map[string]string{
		MetaGatewayPublicKey: i.PublicKey.String(),
		MetaGatewayEndpoint:  i.Endpoint.String(),
		MetaGatewayPool:      i.Pool.String(),
	}
}

// ParseInfo reads a gateway's catalog entry, and returns it as a peer too.
// An entry that is not a valid mesh node (with r.Trust: one that does not
// verify, or whose credential expired), lacks the gateway tag or has bad
// gateway Meta is an error.
func ParseInfo(e peers.Entry, r peers.Rules) (Info, peers.Peer, error) {
	p, err := peers.ParseEntry(e, r)
	if err == nil && !p.NotAfter.IsZero() && !time.Now().Before(p.NotAfter) {
		err = fmt.Errorf("credential expired at %s", p.NotAfter.Format(time.RFC3339))
	}
	if err != nil {
		return Info{}, p, fmt.Errorf("gateway entry %s is invalid: %w", e.ServiceID, err)
	}
	if !slices.Contains(e.Tags, Tag) {
		return Info{}, p, fmt.Errorf("node %s is not a gateway (its instance has no %q tag)", p.Node, Tag)
	}
	info := Info{Node: p.Node, Prefix: p.Prefix}
	if info.PublicKey, err = peers.ParsePublicKey(e.Meta[MetaGatewayPublicKey]); err != nil {
		return Info{}, p, fmt.Errorf("gateway %s: %s: %w", p.Node, MetaGatewayPublicKey, err)
	}
	if info.Endpoint, err = peers.ParseEndpoint(e.Meta[MetaGatewayEndpoint]); err != nil {
		return Info{}, p, fmt.Errorf("gateway %s: %s: %w", p.Node, MetaGatewayEndpoint, err)
	}
	if info.Pool, err = netip.ParsePrefix(e.Meta[MetaGatewayPool]); err != nil {
		return Info{}, p, fmt.Errorf("gateway %s: %s %q is not a CIDR", p.Node, MetaGatewayPool, e.Meta[MetaGatewayPool])
	}
	if err := prefixalloc.ValidatePool(info.Pool, info.Prefix); err != nil {
		return Info{}, p, fmt.Errorf("gateway %s: %w", p.Node, err)
	}
	return info, p, nil
}

// Role is the credential role that makes a host a gateway.
const Role = Tag

// Hosts returns the prefixes of the peers whose credential has the
// gateway role: the hosts a gateway keeps its users out of unless named
// (Scope.Others). The role is the authority's word, so no catalog writer
// can take a gateway out of this list or put a host in.
func Hosts(ps []peers.Peer) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if slices.Contains(p.Roles, Role) {
			out = append(out, p.Prefix)
		}
	}
	return out
}
