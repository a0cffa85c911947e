package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/trust"
)

// ClassicKV is where the classic approach reads the same nodes from.
const ClassicKV = "bench/classic/"

// Sim is one simulated mesh node: an external node in the catalog with a
// meshd instance, and the same data as a KV record for the classic
// approach. It has no host: nothing sends to its endpoint.
type Sim struct {
	I        int
	Key      wgtypes.Key
	Endpoint netip.AddrPort
	Prefix   netip.Prefix
	// Signer signs its entries under a credential of the test authority,
	// as every entry a host applies must be.
	Signer *trust.Signer
}

// NewSim makes simulated node i with a fresh key and identity.
func NewSim(i int) (Sim, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return Sim{}, err
	}
	s := Sim{
		I:        i,
		Key:      k.PublicKey(),
		Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(100 + i/65536), byte(i / 256 % 256)}), uint16(20000+i%256)),
		Prefix:   netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0xaa, 0, 1, byte(i >> 8), byte(i)}), 48),
	}
	s.Signer, err = trusttest.NewSigner(trusttest.Authority(), s.Name(), s.Prefix, time.Now().Add(trusttest.Validity))
	return s, err
}

// Name is the node name.
func (s Sim) Name() string { return "sim-" + strconv.Itoa(s.I) }

// Registration is the instance meshd itself would register for this node,
// without a keepalive: a peer with one is sent a handshake at once, and
// 10,000 handshakes to endpoints that never answer, retried every 5 s,
// would load the devices as no real fleet does (its peers answer).
// Each call signs under a new serial: every write is a newer entry.
func (s Sim) Registration() catalogsync.Registration {
	return catalogsync.Registration{Service: "meshd", Node: s.Name(), PublicKey: s.Key, Endpoint: s.Endpoint, Prefix: s.Prefix,
		Signer: s.Signer, Serial: catalogsync.NewSerial(0)}
}

// classicRecord is the KV form the classic template renders.
type classicRecord struct {
	PublicKey string `json:"public_key"`
	Endpoint  string `json:"endpoint"`
	Prefix    string `json:"prefix"`
}

// Ops writes the node: catalog node and instance, and the KV record, so
// that one transaction (one acknowledged write) feeds all three systems.
func (s Sim) Ops() api.TxnOps {
	r := s.Registration()
	rec, _ := json.Marshal(classicRecord{PublicKey: s.Key.String(), Endpoint: s.Endpoint.String(), Prefix: s.Prefix.String()})
	return api.TxnOps{
		{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: s.Name(), Address: s.Endpoint.Addr().String()}}},
		{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: s.Name(), Service: api.AgentService{
			ID: r.ID(), Service: "meshd", Meta: r.Meta(), Address: s.Endpoint.Addr().String(), Port: int(s.Endpoint.Port()),
		}}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: ClassicKV + s.Name(), Value: rec}},
	}
}

// DeleteOps removes the node everywhere.
func (s Sim) DeleteOps() api.TxnOps {
	return api.TxnOps{
		{Node: &api.NodeTxnOp{Verb: api.NodeDelete, Node: api.Node{Node: s.Name()}}},
		{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: ClassicKV + s.Name()}},
	}
}

// Txn runs ops as one transaction.
func Txn(ctx context.Context, c *api.Client, ops api.TxnOps) error {
	ok, resp, _, err := c.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("transaction rolled back: %v", resp.Errors[0].What)
	}
	return nil
}

// txnSims writes the simulated nodes in one transaction.
func txnSims(ctx context.Context, c *api.Client, sims []Sim) error {
	var ops api.TxnOps
	for _, s := range sims {
		ops = append(ops, s.Ops()...)
	}
	return Txn(ctx, c, ops)
}
