package catalogsync

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/trust"
)

// Registration is this node's entry in the catalog.
type Registration struct {
	Service   string
	Node      string
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	Prefix    netip.Prefix
	Keepalive time.Duration
	Tags      []string
	// Extra Meta a role adds (a gateway's user-link key, endpoint and
	// pool); it never overrides the keys above.
	Extra map[string]string
	// Signer signs the entry with the host's identity, under its
	// credential; Serial grows with every change of what is signed (the
	// time of the change is fine). Without a Signer the entry is unsigned
	// and no host applies it.
	Signer *trust.Signer
	Serial uint64
}

// Withdrawal is the host's signed withdrawal of its node, at a serial
// above every one its entries had; nil without a Signer.
func (r Registration) Withdrawal() *peers.Withdrawal {
	if r.Signer == nil {
		return nil
	}
	serial := NewSerial(r.Serial)
	return &peers.Withdrawal{Serial: serial, Signature: r.Signer.SignWithdrawal(serial)}
}

// ServiceID is unique per mesh node, so several meshd may share one agent.
func ServiceID(node string) string { return "meshd-" + node }

// ID is the registration's service ID.
func (r Registration) ID() string { return ServiceID(r.Node) }

// Meta is the registration's service metadata (DESIGN.md "Data model").
func (r Registration) Meta() map[string]string {
	p := peers.Peer{Node: r.Node, PublicKey: r.PublicKey, Endpoint: r.Endpoint, Prefix: r.Prefix, Keepalive: r.Keepalive}
	m := peers.EncodeMeta(p, r.Extra)
	if r.Signer == nil {
		return m
	}
	signed, err := peers.Sign(m, p, r.Signer, r.Serial)
	if err != nil {
		return m // a role's Meta this meshd wrote itself is never malformed; unsigned, no host applies it
	}
	return signed
}

// Matches reports whether a catalog entry already says what r would
// register, so that meshd re-registers only when something differs.
func (r Registration) Matches(e peers.Entry) bool {
	return e.ServiceID == r.ID() && maps.Equal(e.Meta, r.Meta()) && slices.Equal(e.Tags, r.Tags)
}

// NewSerial is a serial for a newly signed entry: the time in
// nanoseconds, and always more than last.
func NewSerial(last uint64) uint64 { return max(uint64(time.Now().UnixNano()), last+1) }

// Adopt takes the serial of e when e is r's entry as r would sign it under
// that serial: the same entry, signed before a restart. It reports whether
// it did (r then Matches e). A serial is adopted only from an entry the
// host's own identity signed, as signatures are deterministic.
func (r *Registration) Adopt(e peers.Entry) bool {
	if r.Signer == nil || e.ServiceID != r.ID() {
		return false
	}
	serial, err := strconv.ParseUint(e.Meta[peers.MetaSerial], 10, 64)
	if err != nil || serial == r.Serial {
		return false
	}
	old := r.Serial
	r.Serial = serial
	if !r.Matches(e) {
		r.Serial = old
		return false
	}
	return true
}

// Register puts r on the local agent, which keeps it in the catalog by
// anti-entropy. It is idempotent.
func Register(ctx context.Context, c *api.Client, r Registration) error {
	reg := &api.AgentServiceRegistration{
		ID:      r.ID(),
		Name:    r.Service,
		Tags:    r.Tags,
		Meta:    r.Meta(),
		Address: r.Endpoint.Addr().String(),
		Port:    int(r.Endpoint.Port()),
	}
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("register %s with the local Consul agent: %w", r.ID(), err)
	}
	return nil
}

// Deregister removes node's instance through the local agent. An instance
// the agent does not have (never registered, or already gone) is not an
// error: leaving twice is leaving.
func Deregister(ctx context.Context, c *api.Client, node string) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	err := c.Agent().ServiceDeregisterOpts(ServiceID(node), q)
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("deregister %s from the local Consul agent: %w", ServiceID(node), err)
	}
	return nil
}
