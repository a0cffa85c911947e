package gateway

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/prefixalloc"
)

// Errors of the user-facing operations; each is bad input, not a fault.
var (
	ErrUnknownGateway = errors.New("no usable gateway of that name in the catalog")
	ErrNameTaken      = errors.New("a peer of that name exists on this gateway (use --replace to replace it)")
	ErrExhausted      = errors.New("the gateway's address pool is exhausted")
	ErrNotFound       = errors.New("no such peer on this gateway")
	// ErrNotAnnounced is a change written but not hinted to the gateway:
	// not a failure (the record is written, and the gateway's next full
	// read brings it), returned with the record so callers can warn.
	ErrNotAnnounced = errors.New("record written, but its gateway was not told")
)

// Lookup reads gateway gw's entry from the catalog.
func Lookup(ctx context.Context, c *api.Client, service, gw string, rules peers.Rules) (Info, error) {
	// Only gw's instances: the servers filter, so a create reads O(1)
	// bytes whatever the size of the mesh.
	q := (&api.QueryOptions{Filter: fmt.Sprintf("ServiceID == %q", catalogsync.ServiceID(gw))}).WithContext(ctx)
	svcs, _, err := c.Catalog().Service(service, "", q)
	if err != nil {
		return Info{}, fmt.Errorf("read service %s: %w", service, err)
	}
	// Any host may register an instance of this ID on its own node: only
	// one that verifies as gw's, under the highest serial, is used.
	var best *Info
	var serial uint64
	var errs []error
	for _, s := range svcs {
		if s.ServiceID != catalogsync.ServiceID(gw) {
			continue
		}
		info, p, err := ParseInfo(peers.Entry{ServiceID: s.ServiceID, Meta: s.ServiceMeta, Tags: s.ServiceTags, CreateIndex: s.CreateIndex}, rules)
		switch {
		case err != nil:
			errs = append(errs, err)
		case p.Node != gw:
			errs = append(errs, fmt.Errorf("instance %s on node %s names node %s", s.ServiceID, s.Node, p.Node))
		case best == nil || p.Serial > serial:
			best, serial = &info, p.Serial
		}
	}
	if best != nil {
		return *best, nil
	}
	if len(errs) > 0 {
		return Info{}, fmt.Errorf("%w: %v", ErrUnknownGateway, errors.Join(errs...))
	}
	return Info{}, fmt.Errorf("gateway %q: %w", gw, ErrUnknownGateway)
}

// Request asks for a user peer.
type Request struct {
	Org, Name string
	PublicKey wgtypes.Key
	Allow     []netip.Prefix
	// Expires is the peer's lifetime; zero means no expiry.
	Expires time.Duration
	// Replace replaces a peer of the same name (keeping its address)
	// instead of failing.
	Replace bool
}

// maxConflicts bounds how many addresses Create tries that concurrent
// creates took first.
const maxConflicts = 256

// smallPool is the largest pool (in usable addresses) whose claims Create
// reads before it picks an address.
const smallPool = 4096

// Create writes a new peer record on gateway gw, with an address claimed
// from its pool. The claim and the record are written in one Consul
// transaction with check-and-set index 0 on both: two creates can never get
// one address, a name is never taken twice, and a failed create writes
// nothing.
func Create(ctx context.Context, c *api.Client, gw Info, req Request, now time.Time) (Record, error) {
	rec := Record{Org: req.Org, Name: req.Name, PublicKey: req.PublicKey.String(), Allow: req.Allow, Created: now.UTC().Truncate(time.Second)}
	if req.Expires > 0 {
		exp := rec.Created.Add(req.Expires)
		rec.Expires = &exp
	}
	kv := c.KV()
	q := (&api.QueryOptions{}).WithContext(ctx)
	key := RecordKey(gw.Node, req.Org, req.Name)
	old, _, err := kv.Get(key, q)
	if err != nil {
		return Record{}, fmt.Errorf("read %s: %w", key, err)
	}
	if old != nil {
		if !req.Replace {
			return Record{}, fmt.Errorf("%s/%s on %s: %w", req.Org, req.Name, gw.Node, ErrNameTaken)
		}
		return replace(ctx, c, gw, old, rec)
	}
	// A small pool can run out: its claims are read first, to know. In a
	// large one (the default is half a /48) the candidates, spread by the
	// record's ID, almost never collide, and a collision is a failed
	// check-and-set that moves on: a create reads O(1), whatever the
	// number of records.
	taken := map[netip.Addr]bool{}
	usable := prefixalloc.Usable(gw.Pool, 128)
	if usable.Cmp(big.NewInt(smallPool)) <= 0 {
		taken, err = takenAddresses(kv, gw, q)
		if err != nil {
			return Record{}, err
		}
		if big.NewInt(int64(len(taken))).Cmp(usable) >= 0 {
			return Record{}, fmt.Errorf("%s (%s, %d addresses): %w", gw.Node, gw.Pool, len(taken), ErrExhausted)
		}
	}
	var (
		conflicts int
		created   bool
		opErr     error
	)
	prefixalloc.Candidates(gw.Pool, 128, rec.ID(), len(taken)+maxConflicts+1, func(p netip.Prefix) bool {
		a := p.Addr()
		if taken[a] {
			return true
		}
		rec.Address = a
		ops := api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: AddressKey(gw.Node, a), Value: []byte(rec.ID()), Index: 0}},
			{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: key, Value: rec.Encode(), Index: 0}},
		}
		failed, err := txn(ctx, c, ops)
		switch {
		case err == nil:
			created = true
			return false
		case slices.Contains(failed, 1):
			opErr = fmt.Errorf("%s/%s on %s: %w", req.Org, req.Name, gw.Node, ErrNameTaken)
			return false
		case slices.Contains(failed, 0):
			// Another create took a; try the next.
			taken[a] = true
			conflicts++
			return conflicts < maxConflicts
		default:
			opErr = fmt.Errorf("create %s: %w", key, err)
			return false
		}
	})
	if opErr != nil {
		return Record{}, opErr
	}
	if !created {
		if conflicts >= maxConflicts {
			return Record{}, fmt.Errorf("create %s: %d addresses were taken by concurrent creates; try again", key, conflicts)
		}
		return Record{}, fmt.Errorf("%s (%s): %w", gw.Node, gw.Pool, ErrExhausted)
	}
	return rec, announce(ctx, c, gw.Node, rec.ID(), 0)
}

// replace writes rec over the record old, keeping old's address, if old is
// still what the store holds (check-and-set).
func replace(ctx context.Context, c *api.Client, gw Info, old *api.KVPair, rec Record) (Record, error) {
	prev, err := Decode(gw.Node, old.Key, old.Value)
	if err != nil {
		return Record{}, fmt.Errorf("cannot replace: %w", err)
	}
	rec.Address = prev.Address
	ops := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: old.Key, Value: rec.Encode(), Index: old.ModifyIndex}}}
	if _, err := txn(ctx, c, ops); err != nil {
		return Record{}, fmt.Errorf("replace %s: %w", old.Key, err)
	}
	return rec, announce(ctx, c, gw.Node, rec.ID(), 0)
}

// takenAddresses reads the gateway's address claims inside its pool.
func takenAddresses(kv *api.KV, gw Info, q *api.QueryOptions) (map[netip.Addr]bool, error) {
	pairs, _, err := kv.List(AddressesKey(gw.Node), q)
	if err != nil {
		return nil, fmt.Errorf("read address claims of %s: %w", gw.Node, err)
	}
	taken := map[netip.Addr]bool{}
	for _, p := range pairs {
		if a, err := netip.ParseAddr(p.Key[len(AddressesKey(gw.Node)):]); err == nil && gw.Pool.Contains(a) {
			taken[a] = true
		}
	}
	return taken, nil
}

// txnError is a rolled-back transaction: which operations failed, and why.
type txnError struct{ errs []*api.TxnError }

func (e *txnError) Error() string {
	s := "transaction rolled back:"
	for _, te := range e.errs {
		s += fmt.Sprintf(" op %d: %s;", te.OpIndex, te.What)
	}
	return s
}

// txn runs ops atomically. On a rollback it returns the failed operations'
// indexes along with the error.
func txn(ctx context.Context, c *api.Client, ops api.TxnOps) ([]int, error) {
	ok, resp, _, err := c.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	if ok {
		return nil, nil
	}
	var failed []int
	for _, te := range resp.Errors {
		failed = append(failed, te.OpIndex)
	}
	return failed, &txnError{resp.Errors}
}

// List reads gateway gw's peers folder.
func List(ctx context.Context, c *api.Client, gw string) ([]Pair, error) {
	return ListOrg(ctx, c, gw, "")
}

// ListOrg reads gateway gw's records of organization org (all when org is
// empty), in key order.
func ListOrg(ctx context.Context, c *api.Client, gw, org string) ([]Pair, error) {
	prefix := PeersKey(gw)
	if org != "" {
		prefix += org + "/"
	}
	kvs, _, err := c.KV().List(prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read peers of gateway %s: %w", gw, err)
	}
	return pairs(kvs), nil
}

// pairs converts KV pairs as read.
func pairs(kvs api.KVPairs) []Pair {
	out := make([]Pair, 0, len(kvs))
	for _, p := range kvs {
		out = append(out, Pair{Key: p.Key, Value: p.Value, CreateIndex: p.CreateIndex, ModifyIndex: p.ModifyIndex})
	}
	return out
}

// Remove deletes peer org/name of gateway gw and frees its address, in one
// transaction. It returns the record removed.
func Remove(ctx context.Context, c *api.Client, gw, org, name string) (Record, error) {
	key := RecordKey(gw, org, name)
	pair, _, err := c.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return Record{}, fmt.Errorf("read %s: %w", key, err)
	}
	if pair == nil {
		return Record{}, fmt.Errorf("%s/%s on %s: %w", org, name, gw, ErrNotFound)
	}
	rec, decodeErr := Decode(gw, key, pair.Value)
	s := Stored{Record: rec, ModifyIndex: pair.ModifyIndex}
	if decodeErr != nil {
		// A broken record still goes; its address claim (if any) stays
		// until an operator looks.
		s.Record = Record{Org: org, Name: name}
	}
	if err := Delete(ctx, c, gw, s); err != nil && !errors.Is(err, ErrNotAnnounced) {
		return Record{}, err
	} else if err != nil {
		return s.Record, err
	}
	return s.Record, nil
}

// Delete removes a stored record, if it is unchanged since it was read,
// together with its address claim, if the claim is the record's, and
// hints the change to the gateway.
func Delete(ctx context.Context, c *api.Client, gw string, s Stored) error {
	key := RecordKey(gw, s.Org, s.Name)
	ops := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: key, Index: s.ModifyIndex}}}
	if s.Address.IsValid() {
		claim, _, err := c.KV().Get(AddressKey(gw, s.Address), (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("read claim of %s: %w", s.Address, err)
		}
		if claim != nil && string(claim.Value) == s.ID() {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: claim.Key, Index: claim.ModifyIndex}})
		}
	}
	if _, err := txn(ctx, c, ops); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return announce(ctx, c, gw, s.ID(), 0)
}

// RemoveAll deletes everything gateway gw owns in KV: records and address
// claims (a decommissioned gateway's users lose access).
func RemoveAll(ctx context.Context, c *api.Client, gw string) error {
	if _, err := c.KV().DeleteTree(TreeKey(gw), (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("delete records of gateway %s: %w", gw, err)
	}
	return nil
}
