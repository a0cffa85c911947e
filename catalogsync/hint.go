package catalogsync

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/peers"
)

// A hint is a small KV key naming the last changed instance: the node
// whose entry changed writes it once the catalog has the change, and every
// other meshd, woken by a blocking query on that one key, reads that one
// instance instead of waiting for the watch to deliver the whole list
// again. A hint is only a trigger: what is applied is always read from the
// catalog, and the watch of the whole service stays the authority (see
// Overlay). Two changes at once may leave only the later one in the key:
// the earlier one then comes with the list, as without hints.

// Hint names one instance: the Consul node it is registered on, its
// service ID, and the catalog index at which its writer saw the change.
type Hint struct {
	ConsulNode string
	ServiceID  string
	Index      uint64
	// Withdrawal, on the hint of a leave, is the leaving host's signed
	// withdrawal: the one thing the delta path may take out (Planner
	// verifies it against the entry itself).
	Withdrawal *peers.Withdrawal
}

// Value is the hint key's value: "<consul node> <service id> <index>",
// and for a leave " <serial> <base64 signature>" of the withdrawal. The
// index makes every hint a new value (Consul does not wake the watchers of
// a key set to the value it has).
func (h Hint) Value() []byte {
	v := h.ConsulNode + " " + h.ServiceID + " " + strconv.FormatUint(h.Index, 10)
	if w := h.Withdrawal; w != nil {
		v += " " + strconv.FormatUint(w.Serial, 10) + " " + base64.StdEncoding.EncodeToString(w.Signature)
	}
	return []byte(v)
}

// ParseHint reads a hint key's value: a Consul node name, a service ID and
// a catalog index, and optionally a withdrawal's serial and signature,
// separated by single spaces.
func ParseHint(b []byte) (Hint, error) {
	f := strings.Split(string(b), " ")
	bad := func() (Hint, error) {
		return Hint{}, fmt.Errorf("hint %.64q: want \"<consul node> <service id> <catalog index> [<withdrawal serial> <signature>]\"", b)
	}
	if (len(f) != 3 && len(f) != 5) || f[0] == "" || f[1] == "" || strings.ContainsAny(string(b), "\n\r\t") || len(b) > 512 {
		return bad()
	}
	number := func(s string) (uint64, bool) {
		n, err := strconv.ParseUint(s, 10, 64)
		return n, err == nil && n != 0 && strconv.FormatUint(n, 10) == s
	}
	index, ok := number(f[2])
	if !ok {
		return bad()
	}
	h := Hint{ConsulNode: f[0], ServiceID: f[1], Index: index}
	if len(f) == 5 {
		serial, ok := number(f[3])
		sig, err := base64.StdEncoding.Strict().DecodeString(f[4])
		if !ok || err != nil || len(sig) != ed25519.SignatureSize {
			return bad()
		}
		h.Withdrawal = &peers.Withdrawal{Serial: serial, Signature: sig}
	}
	return h, nil
}

// WriteHint sets the hint key to h through the local agent.
func WriteHint(ctx context.Context, c *api.Client, key string, h Hint) error {
	q := (&api.WriteOptions{}).WithContext(ctx)
	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: h.Value()}, q); err != nil {
		return fmt.Errorf("write hint %s: %w", key, err)
	}
	return nil
}

// ReadInstance reads one instance of service from the catalog (stale reads
// allowed): its entry, or nil when the node has no such instance, and the
// index of the read. Health is not read (it takes a second query): the
// entry's Health is empty.
func ReadInstance(ctx context.Context, c *api.Client, service string, h Hint, q *api.QueryOptions) (*peers.Entry, uint64, error) {
	if q == nil {
		q = &api.QueryOptions{}
	}
	q = q.WithContext(ctx)
	q.AllowStale = true
	list, meta, err := c.Catalog().NodeServiceList(h.ConsulNode, q)
	if err != nil {
		var se api.StatusError
		if errors.As(err, &se) && se.Code == 404 {
			return nil, 0, fmt.Errorf("read %s on node %s: node unknown: %w", h.ServiceID, h.ConsulNode, err)
		}
		return nil, 0, fmt.Errorf("read %s on node %s: %w", h.ServiceID, h.ConsulNode, err)
	}
	if list == nil {
		// The node is not in the catalog (it left): neither is the instance.
		return nil, meta.LastIndex, nil
	}
	for _, s := range list.Services {
		if s != nil && s.ID == h.ServiceID && s.Service == service {
			return &peers.Entry{ServiceID: s.ID, Meta: s.Meta, Tags: s.Tags, CreateIndex: s.CreateIndex, ModifyIndex: s.ModifyIndex}, meta.LastIndex, nil
		}
	}
	return nil, meta.LastIndex, nil
}

// WaitInstance waits until the catalog shows node's instance as match
// says (match(nil) for "gone"), through blocking queries, until ctx ends,
// and returns the index of the read that showed it.
func WaitInstance(ctx context.Context, c *api.Client, service string, h Hint, match func(*peers.Entry) bool) (uint64, error) {
	var index uint64
	for {
		e, got, err := ReadInstance(ctx, c, service, h, &api.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Second})
		if err != nil {
			return 0, err
		}
		if match(e) {
			return got, nil
		}
		index = NextIndex(index, got)
	}
}

// Hinted is an instance as a hint's read found it: Entry nil means the
// instance is gone; Index is the index of the read.
type Hinted struct {
	Entry *peers.Entry
	Index uint64
	// Withdrawal is the leaving host's, when the hint carried one and the
	// read found the instance gone.
	Withdrawal *peers.Withdrawal
}

// Overlay is s with the hinted instances (by service ID) that are newer
// than s put in: replaced or added, never removed. A read that found
// nothing removes nothing: anyone may write a hint naming any node and
// instance ID, and "not there" would let them take a real entry out;
// removals come from the whole list alone (and, with their grace, from
// nothing faster), but for one: a read that found nothing for a hint that
// carried the leaving host's signed withdrawal puts that withdrawal on
// the entry s has (Planner drops the entry if it verifies against the
// entry's own credential). Reads no newer than s's index are left out:
// the whole list is the authority once it has caught up.
// An instance the hint added takes its health from s if s has it,
// else passing (an instance is registered without checks). s is not
// changed; with nothing to put in, s itself is returned.
func Overlay(s *Snapshot, hinted map[string]Hinted) *Snapshot {
	if s == nil || len(hinted) == 0 {
		return s
	}
	var ids []string
	for id, h := range hinted {
		if h.Index > s.Index && (h.Entry != nil || h.Withdrawal != nil) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return s
	}
	slices.Sort(ids)
	out := &Snapshot{Index: s.Index, Entries: make([]peers.Entry, 0, len(s.Entries)+len(ids))}
	i := 0
	cmpID := func(e peers.Entry, id string) int { return strings.Compare(e.ServiceID, id) }
	for _, id := range ids {
		j, found := slices.BinarySearchFunc(s.Entries[i:], id, cmpID)
		out.Entries = append(out.Entries, s.Entries[i:i+j]...)
		i += j
		h := hinted[id]
		if h.Entry == nil {
			// A withdrawal: on the entry s has, if it has one.
			if found {
				e := s.Entries[i]
				e.Withdrawal = h.Withdrawal
				out.Entries = append(out.Entries, e)
				i++
			}
			continue
		}
		health := peers.HealthPassing
		if found {
			health = s.Entries[i].Health
			i++
		}
		e := *h.Entry
		if e.Health == "" {
			e.Health = health
		}
		out.Entries = append(out.Entries, e)
	}
	out.Entries = append(out.Entries, s.Entries[i:]...)
	return out
}

// Prune drops from hinted the reads no newer than index (the whole list
// has caught up with them).
func Prune(hinted map[string]Hinted, index uint64) {
	for id, h := range hinted {
		if h.Index <= index {
			delete(hinted, id)
		}
	}
}

// RunRevocations follows the authority's revocations (the values under
// RevocationsPrefix, sorted by key) until ctx is done, calling deliver with
// every new set. It uses the watch's blocking-query loop: revocations are
// rare, so the query costs one idle long poll.
func (w *Watcher) RunRevocations(ctx context.Context, deliver func([][]byte)) error {
	read := func(q *api.QueryOptions) ([][]byte, uint64, error) {
		pairs, meta, err := w.Client.KV().List(RevocationsPrefix, q)
		if err != nil {
			return nil, 0, err
		}
		var values [][]byte
		for _, p := range pairs {
			if len(p.Value) > 0 && len(p.Value) <= maxRevocation {
				values = append(values, p.Value)
			}
		}
		return values, meta.LastIndex, nil
	}
	same := func(a, b [][]byte) bool { return slices.EqualFunc(a, b, bytes.Equal) }
	return follow(ctx, w, "revocations", read, same, func(values [][]byte, _ uint64) { deliver(values) })
}

// maxRevocation bounds a revocation's size (the largest is well under
// 200 bytes): anything larger is not one, and is not carried.
const maxRevocation = 1024

// RunHints follows the hint key on the local agent until ctx is done,
// calling deliver with each new hint (the value there at the first read is
// not a hint: it is past). It uses the watch's blocking-query loop: the
// same rate limit and backoff. A value that is not a hint is skipped and
// logged.
func (w *Watcher) RunHints(ctx context.Context, key string, deliver func(Hint)) error {
	read := func(q *api.QueryOptions) ([]byte, uint64, error) {
		pair, meta, err := w.Client.KV().Get(key, q)
		if err != nil {
			return nil, 0, err
		}
		if pair == nil {
			return nil, meta.LastIndex, nil
		}
		return pair.Value, meta.LastIndex, nil
	}
	logger := w.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	first := true
	return follow(ctx, w, "hints "+key, read, bytes.Equal, func(value []byte, _ uint64) {
		if first || value == nil {
			first = false
			return
		}
		h, err := ParseHint(value)
		if err != nil {
			logger.Warn("ignoring a hint", "key", key, "err", err)
			return
		}
		deliver(h)
	})
}
