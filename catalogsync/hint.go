package catalogsync

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/internal/loop"
	"meshd.dev/meshd/peers"
)

// A hint is a small KV key naming the last changed instance: the node
// whose entry changed writes it once the catalog has the change, and every
// other meshd, woken by a blocking query on that one key, reads that one
// instance instead of reading the whole list again. A hint is only a
// trigger: what is applied is always read from the catalog, and the whole
// list, read at most every full-read interval, stays the authority (see
// Overlay).
//
// Hints are a sequence, so that a reader knows when it missed one: every
// write takes the next number with a check-and-set on the key, and the
// same transaction keeps the hint in a ring of HintRing keys under
// "<key>/" (the slot is the number modulo HintRing). A reader whose wake
// skipped numbers reads them back from the ring; when it cannot (the
// numbers went back, more than the ring was missed, a slot was already
// overwritten, or the key holds something that is not a hint), it knows
// it lost changes and reads the whole list at once.

// A hint may carry the changed entry itself (Carried): its Meta and Tags
// as the writer saw them in the catalog, which is all the entry's
// signatures cover. A reader then takes the entry from the hint and reads
// nothing more, which saves the instance read through its agent at every
// change. The carried entry is as untrusted as the catalog: the planner
// verifies it like any other, and nothing in it dates or ranks it (see
// Catalog.readHint: its indexes are Consul's own for the hint's write).

// HintRing is how many of the last hints the ring under the hint key
// keeps: a host stopped for a minute while a change a second was made
// reads them back (one KV read of up to ~300 KB, the entries carried) instead
// of the whole list.
const HintRing = 256

// Hint names one instance: the Consul node it is registered on, its
// service ID, and the catalog index at which its writer saw the change.
type Hint struct {
	// Seq is the hint's number in the key's sequence (WriteHint sets it).
	Seq        uint64
	ConsulNode string
	ServiceID  string
	Index      uint64
	// Withdrawal, on the hint of a leave, is the leaving host's signed
	// withdrawal: the one thing the delta path may take out (Planner
	// verifies it against the entry itself).
	Withdrawal *peers.Withdrawal
	// Carried, when set, is the changed entry as its writer saw it in the
	// catalog (never with a withdrawal: that hint's instance is gone).
	Carried *Carried
	// Written is the index at which Consul wrote the key (or ring slot)
	// the hint was read from: set by the reader, not part of the value.
	Written uint64
}

// Carried is what a hint carries of an entry: its Meta and Tags.
type Carried struct {
	Meta map[string]string `json:"meta"`
	Tags []string          `json:"tags,omitempty"`
}

// maxCarried bounds a carried entry's JSON (a meshd entry's is under 1.5
// KB): a larger entry is not carried, and readers read it instead.
const maxCarried = 6 << 10

// maxHintLine bounds a hint's first line.
const maxHintLine = 512

// Carry is e as a hint carries it, or nil when it is too large to carry.
func Carry(e peers.Entry) *Carried {
	c := &Carried{Meta: e.Meta, Tags: e.Tags}
	if c.Meta == nil {
		c.Meta = map[string]string{}
	}
	if b, err := json.Marshal(c); err != nil || len(b) > maxCarried {
		return nil
	}
	return c
}

// Value is the hint key's value: "<seq> <consul node> <service id>
// <index>", and for a leave " <serial> <base64 signature>" of the
// withdrawal; with a carried entry, a newline and the entry's JSON
// ({"meta":{...},"tags":[...]}).
func (h Hint) Value() []byte {
	v := strconv.FormatUint(h.Seq, 10) + " " + h.ConsulNode + " " + h.ServiceID + " " + strconv.FormatUint(h.Index, 10)
	if w := h.Withdrawal; w != nil {
		v += " " + strconv.FormatUint(w.Serial, 10) + " " + base64.StdEncoding.EncodeToString(w.Signature)
	}
	if h.Carried != nil {
		b, _ := json.Marshal(h.Carried) // strings and a map of strings: cannot fail
		v += "\n" + string(b)
	}
	return []byte(v)
}

// ParseHint reads a hint key's value: a sequence number, a Consul node
// name, a service ID and a catalog index, and optionally a withdrawal's
// serial and signature, separated by single spaces; then optionally a
// newline and a carried entry's JSON.
func ParseHint(b []byte) (Hint, error) {
	line, body, carried := bytes.Cut(b, []byte("\n"))
	f := strings.Split(string(line), " ")
	bad := func() (Hint, error) {
		return Hint{}, fmt.Errorf("hint %.64q: want \"<seq> <consul node> <service id> <catalog index> [<withdrawal serial> <signature>]\", then optionally a newline and {\"meta\":{...},\"tags\":[...]} of at most %d bytes", b, maxCarried)
	}
	if (len(f) != 4 && len(f) != 6) || f[1] == "" || f[2] == "" || bytes.ContainsAny(line, "\r\t") || len(line) > maxHintLine {
		return bad()
	}
	number := func(s string) (uint64, bool) {
		n, err := strconv.ParseUint(s, 10, 64)
		return n, err == nil && n != 0 && strconv.FormatUint(n, 10) == s
	}
	seq, ok1 := number(f[0])
	index, ok2 := number(f[3])
	if !ok1 || !ok2 {
		return bad()
	}
	h := Hint{Seq: seq, ConsulNode: f[1], ServiceID: f[2], Index: index}
	if len(f) == 6 {
		serial, ok := number(f[4])
		sig, err := base64.StdEncoding.Strict().DecodeString(f[5])
		if !ok || err != nil || len(sig) != ed25519.SignatureSize {
			return bad()
		}
		h.Withdrawal = &peers.Withdrawal{Serial: serial, Signature: sig}
	}
	if carried {
		if h.Withdrawal != nil || len(body) > maxCarried {
			return bad()
		}
		var c Carried
		d := json.NewDecoder(bytes.NewReader(body))
		d.DisallowUnknownFields()
		if err := d.Decode(&c); err != nil || c.Meta == nil || d.More() || !onlySpace(body[d.InputOffset():]) {
			return bad()
		}
		if len(c.Tags) == 0 {
			c.Tags = nil // as Value writes it: no tags
		}
		h.Carried = &c
	}
	return h, nil
}

// onlySpace reports whether b holds nothing but JSON white space.
func onlySpace(b []byte) bool {
	return len(bytes.TrimLeft(b, " \t\r\n")) == 0
}

// RingKey is the key of the ring slot that keeps hint number seq.
func RingKey(key string, seq uint64) string {
	return key + "/" + strconv.FormatUint(seq%HintRing, 10)
}

// maxHintWrites bounds WriteHint's attempts when other writers keep
// taking the next number first.
const maxHintWrites = 20

// WriteHint appends h to the hint key's sequence through the local agent:
// it reads the key, and in one transaction sets it to h numbered one
// above what it held (check-and-set on the key's index) and puts h in its
// ring slot; when another writer got there first it tries again. A key
// that holds no hint starts the sequence at 1 (readers take the jump as
// a gap). It returns h with its number.
func WriteHint(ctx context.Context, c *api.Client, key string, h Hint) (Hint, error) {
	for attempt := 1; ; attempt++ {
		pair, _, err := c.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return h, fmt.Errorf("write hint %s: read the sequence: %w", key, err)
		}
		var cas uint64
		h.Seq = 1
		if pair != nil {
			cas = pair.ModifyIndex
			if last, err := ParseHint(pair.Value); err == nil {
				h.Seq = last.Seq + 1
			}
		}
		v := h.Value()
		ops := api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: key, Value: v, Index: cas}},
			{KV: &api.KVTxnOp{Verb: api.KVSet, Key: RingKey(key, h.Seq), Value: v}},
		}
		ok, resp, _, err := c.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return h, fmt.Errorf("write hint %s: %w", key, err)
		}
		if ok {
			return h, nil
		}
		if attempt == maxHintWrites {
			var why []string
			if resp != nil {
				for _, e := range resp.Errors {
					why = append(why, e.What)
				}
			}
			return h, fmt.Errorf("write hint %s: %d attempts lost the check-and-set to other writers: %s", key, attempt, strings.Join(why, "; "))
		}
		select {
		case <-ctx.Done():
			return h, ctx.Err()
		case <-time.After(loop.Backoff(attempt, 5*time.Millisecond, 200*time.Millisecond)):
		}
	}
}

// Sequence follows hint numbers as a reader sees them: Next takes each
// value the key showed, in order, and says which numbers the reader
// skipped (to read back from the ring) or that it cannot know what it
// missed.
type Sequence struct {
	last    uint64
	started bool
}

// Next takes the number of the value the key holds now (0: none, or not a
// hint) and returns the numbers skipped since the last value, from up to
// but not including seq, and lost when what was missed cannot be read back
// from the ring. The first value is the start: nothing before it is
// missed (the reader reads the whole list when it starts).
func (s *Sequence) Next(seq uint64) (from uint64, lost bool) {
	last, started := s.last, s.started
	s.last, s.started = seq, true
	switch {
	case !started:
		return seq, false
	case seq == 0:
		// The key was deleted or overwritten with something else: a hint
		// it held may never have been read. The next writer starts at 1.
		return 0, true
	case seq <= last, seq-last > HintRing:
		return seq, true
	}
	return last + 1, false
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
	// Carried says Entry came in the hint, not from a read; Taken is when
	// it was taken (Prune drops it after a list read sent a while later).
	Carried bool
	Taken   time.Time
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
	out := &Snapshot{Index: s.Index, ReadAt: s.ReadAt, Entries: make([]peers.Entry, 0, len(s.Entries)+len(ids))}
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

// OverlayIDs is the part of Overlay(s, hinted) that holds the service IDs
// in ids: their entries, sorted by ID (none for an ID the view lacks).
// It costs what those IDs hold, not the list: a delta (Snapshot.Delta)
// carries it.
func OverlayIDs(s *Snapshot, hinted map[string]Hinted, ids []string) []peers.Entry {
	if s == nil {
		return nil
	}
	ids = slices.Compact(slices.Sorted(slices.Values(ids)))
	sub := &Snapshot{Index: s.Index}
	subHinted := make(map[string]Hinted, len(ids))
	for _, id := range ids {
		i, j := idRange(s.Entries, id)
		sub.Entries = append(sub.Entries, s.Entries[i:j]...)
		if h, ok := hinted[id]; ok {
			subHinted[id] = h
		}
	}
	return Overlay(sub, subHinted).Entries
}

// ApplyDelta changes entries (sorted by service ID) in place into the view
// a delta describes: the entries of each ID in ids are replaced by those
// of delta (sorted by ID, as OverlayIDs returns them), none if it has
// none. It returns the changed slice.
func ApplyDelta(entries []peers.Entry, ids []string, delta []peers.Entry) []peers.Entry {
	for _, id := range slices.Compact(slices.Sorted(slices.Values(ids))) {
		i, j := idRange(entries, id)
		k, l := idRange(delta, id)
		entries = slices.Replace(entries, i, j, delta[k:l]...)
	}
	return entries
}

// idRange is where the entries of service ID id are in entries (sorted by
// ID): [i, j), empty at the place they would go.
func idRange(entries []peers.Entry, id string) (i, j int) {
	cmpID := func(e peers.Entry, id string) int { return strings.Compare(e.ServiceID, id) }
	i, _ = slices.BinarySearchFunc(entries, id, cmpID)
	j = i
	for j < len(entries) && entries[j].ServiceID == id {
		j++
	}
	return i, j
}

// Prune drops from hinted the reads no newer than index (the whole list
// has caught up with them), and the carried entries taken window or more
// before readAt, the time the list's read was sent: a carried entry's
// index is only as good as its writer's word (up to the index of the
// hint's write, which need not be a catalog index at all), while a list
// read sent that much later is newer than the hint, whatever its index,
// from any server close enough to its leader to be believed (MaxStale).
func Prune(hinted map[string]Hinted, index uint64, readAt time.Time, window time.Duration) {
	for id, h := range hinted {
		if h.Index <= index || h.Carried && !readAt.IsZero() && readAt.Sub(h.Taken) >= window {
			delete(hinted, id)
		}
	}
}

// RunRevocations follows the authority's revocations (the values under
// RevocationsPrefix, sorted by key) until ctx is done, calling deliver with
// every new set. It uses the watch's blocking-query loop: revocations are
// rare, so the query costs one idle long poll.
//
// Without the folder key (EnsureRevocationsFolder) the query returns at
// every KV write in the datacenter; it says so once in the log.
func (w *Watcher) RunRevocations(ctx context.Context, deliver func([][]byte)) error {
	warned := false
	read := func(q *api.QueryOptions) ([][]byte, uint64, error) {
		pairs, meta, err := w.Client.KV().List(RevocationsPrefix, q)
		if err != nil {
			return nil, 0, err
		}
		if pairs == nil && !warned && w.Logger != nil {
			warned = true
			w.Logger.Warn("the revocations folder is missing in Consul KV: every KV write wakes this host's watch of it; create it once with `meshd authority revoke --init`", "folder", RevocationsPrefix)
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

// EnsureRevocationsFolder creates the key RevocationsPrefix itself (the
// folder, empty), unless it is there, and reports whether it created it.
// Consul answers a list of an empty prefix with the whole KV store's index,
// so while the folder holds no key, every host's blocking query on it
// returns at every KV write in the datacenter (each hint): the folder key
// keeps the folder's own index. RunRevocations skips it (no value).
func EnsureRevocationsFolder(ctx context.Context, c *api.Client) (bool, error) {
	created, _, err := c.KV().CAS(&api.KVPair{Key: RevocationsPrefix, ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("create the revocations folder %s: %w", RevocationsPrefix, err)
	}
	return created, nil
}

// maxRevocation bounds a revocation's size (the largest is well under
// 200 bytes): anything larger is not one, and is not carried.
const maxRevocation = 1024

// RunHints follows the hint key on the local agent until ctx is done,
// calling deliver with every hint in order: the one there at the first
// read, then each later one, those a wake skipped read back from the ring
// (Sequence) and delivered in one call with the one that woke it. lost is
// called, with why, when hints may have been missed that the ring cannot
// give back; skipped says numbers were skipped (the reader fell behind),
// as against a key that holds no hint (deleted, or written by something
// that is not a meshd). It uses the watch's blocking-query loop: the same
// rate limit and backoff.
func (w *Watcher) RunHints(ctx context.Context, key string, deliver func([]Hint), lost func(why string, skipped bool)) error {
	read := func(q *api.QueryOptions) (*api.KVPair, uint64, error) {
		pair, meta, err := w.Client.KV().Get(key, q)
		if err != nil {
			return nil, 0, err
		}
		return pair, meta.LastIndex, nil
	}
	same := func(a, b *api.KVPair) bool {
		return a == nil && b == nil || a != nil && b != nil && a.ModifyIndex == b.ModifyIndex && bytes.Equal(a.Value, b.Value)
	}
	var seq Sequence
	return follow(ctx, w, "hints "+key, read, same, func(pair *api.KVPair, index uint64) {
		var h Hint
		var err error
		var value []byte
		if pair != nil {
			value = pair.Value
			if value == nil {
				value = []byte{} // a key without a value is not a hint
			}
			h, err = ParseHint(value)
			h.Written = pair.ModifyIndex
		}
		prev := seq.last
		from, gap := seq.Next(h.Seq)
		var hs []Hint
		switch {
		case gap && err != nil:
			lost(fmt.Sprintf("the hint key holds something else: %v", err), false)
			return
		case gap && value == nil:
			lost("the hint key was deleted", false)
			return
		case gap:
			lost(fmt.Sprintf("hint %d came after %d", h.Seq, prev), true)
		case from < h.Seq:
			hs = w.fill(ctx, key, index, from, h.Seq, lost)
		}
		if value != nil && err == nil {
			deliver(append(hs, h))
		} else if len(hs) > 0 {
			deliver(hs)
		}
	})
}

// fill returns hints from up to but not including to, read from the
// ring, up to the first one it no longer holds, for which it calls lost. index is the
// index of the key's read: the ring read waits (briefly) for a lagging
// server to reach it, as the same transaction wrote both.
func (w *Watcher) fill(ctx context.Context, key string, index, from, to uint64, lost func(string, bool)) []Hint {
	q := (&api.QueryOptions{AllowStale: true, Datacenter: w.Datacenter, WaitIndex: index - 1, WaitTime: hintReadWait}).WithContext(ctx)
	pairs, _, err := w.Client.KV().List(key+"/", q)
	if err != nil {
		lost(fmt.Sprintf("hints %d to %d skipped, and the ring could not be read: %v", from, to-1, err), true)
		return nil
	}
	ring := make(map[string]*api.KVPair, len(pairs))
	for _, p := range pairs {
		ring[p.Key] = p
	}
	w.setState(func(s *State) { s.RingReads++ })
	hs := make([]Hint, 0, to-from)
	for n := from; n < to; n++ {
		var h Hint
		err := errors.New("no slot")
		if p := ring[RingKey(key, n)]; p != nil {
			h, err = ParseHint(p.Value)
			h.Written = p.ModifyIndex
		}
		if err != nil || h.Seq != n {
			lost(fmt.Sprintf("hint %d skipped and its ring slot already holds another", n), true)
			break
		}
		hs = append(hs, h)
	}
	return hs
}
