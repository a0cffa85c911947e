package catalogsync

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"

	"meshd.dev/meshd/internal/loop"
	"meshd.dev/meshd/peers"
)

// ErrStale is a catalog answer from a server too long out of touch with
// its leader (Watcher.MaxStale).
var ErrStale = errors.New("catalog answer too stale")

// Snapshot is one read of the meshd service.
type Snapshot struct {
	Index   uint64
	Entries []peers.Entry
	// Revocations are the values under RevocationsPrefix, unverified (the
	// agent verifies them against its authorities).
	Revocations [][]byte
}

// RevocationsPrefix is the KV folder of the authority's signed
// revocations (meshd authority revoke): one key per revoked node
// ("node-<name>") or identity ("identity-<hex>").
const RevocationsPrefix = "meshd/trust/revocations/"

// State is what the watch knows about the catalog, for status output.
type State struct {
	Reachable bool
	LastIndex uint64
	// LastGoodRead is when a read last succeeded (zero before the first).
	LastGoodRead time.Time
	LastError    string
	// Reads counts successful reads; Delivered counts the snapshots passed
	// on (reads whose content changed).
	Reads, Delivered uint64
	// Hints counts the hints that named another node's entry (Catalog);
	// HintReads the instances they made this node read (a hint the list
	// already has is not read); HintsApplied the reads newer than the list
	// they went into.
	Hints, HintReads, HintsApplied uint64
	// OlderKept counts instance versions a list showed older than one an
	// earlier list had, which the Catalog kept instead.
	OlderKept uint64
}

// Watcher watches the instances of one service (Run) or a KV folder
// (RunKV); one Watcher runs one watch.
type Watcher struct {
	Client *api.Client
	// HTTP, when set, reads the service watch's responses directly (see
	// HTTP); Client still serves everything else.
	HTTP       *HTTP
	Service    string
	Datacenter string
	Logger     *slog.Logger
	// WaitTime bounds one blocking query (default 5m).
	WaitTime time.Duration
	// Limiter spaces wakes (default 10/s with a burst of 5).
	Limiter *rate.Limiter
	// MinBackoff and MaxBackoff bound the wait after an error (defaults
	// 250ms and 10s: a fleet retries at most every 10s, spread by jitter).
	MinBackoff, MaxBackoff time.Duration
	// MaxStale, when set, refuses a service read whose answering server
	// last heard from the leader longer ago (ErrStale).
	MaxStale time.Duration

	mu    sync.Mutex
	state State
}

// State returns the watch's current view of the catalog.
func (w *Watcher) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

// NextIndex applies the index rules to a query's result: an index that
// went backwards resets to 0 (the next read is a full, non-blocking one), and
// an index of 0 becomes 1 so that the next query blocks.
func NextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	}
	return got
}

// Run watches until ctx is done, calling deliver with every snapshot whose
// content differs from the last one delivered (the first always is).
// deliver runs on Run's goroutine and must not block for long.
func (w *Watcher) Run(ctx context.Context, deliver func(Snapshot)) error {
	read := func(q *api.QueryOptions) ([]peers.Entry, uint64, error) {
		var (
			entries []peers.Entry
			meta    *api.QueryMeta
			err     error
		)
		if w.HTTP != nil {
			entries, meta, err = w.HTTP.Service(q.Context(), w.Service, q)
		} else {
			var es []*api.ServiceEntry
			es, meta, err = w.Client.Health().Service(w.Service, "", false, q)
			entries = Convert(es)
		}
		if err != nil {
			return nil, 0, err
		}
		// A stale read may come from a server cut off from the leader for
		// long: what it says may be long past (a rotated-out key). Such an
		// answer is not applied; the next read may reach another server.
		if w.MaxStale > 0 && meta.LastContact > w.MaxStale {
			return nil, 0, fmt.Errorf("%w: the answering server last heard from the leader %s ago (catalog.max_stale %s)",
				ErrStale, meta.LastContact.Round(time.Millisecond), w.MaxStale)
		}
		return entries, meta.LastIndex, nil
	}
	return follow(ctx, w, "service "+w.Service, read, sameEntries,
		func(entries []peers.Entry, index uint64) { deliver(Snapshot{Index: index, Entries: entries}) })
}

// RunKV watches the KV folder prefix the same way (one blocking query, the
// same index rules, rate limit and backoff), calling deliver with the pairs
// under it whenever a key was added, changed or deleted.
func (w *Watcher) RunKV(ctx context.Context, prefix string, deliver func(api.KVPairs, uint64)) error {
	read := func(q *api.QueryOptions) (api.KVPairs, uint64, error) {
		pairs, meta, err := w.Client.KV().List(prefix, q)
		if err != nil {
			return nil, 0, err
		}
		return pairs, meta.LastIndex, nil
	}
	// A pair's ModifyIndex changes with every write to it, so keys and
	// indexes tell a change without comparing values.
	same := func(a, b api.KVPairs) bool {
		return slices.EqualFunc(a, b, func(x, y *api.KVPair) bool { return x.Key == y.Key && x.ModifyIndex == y.ModifyIndex })
	}
	return follow(ctx, w, "keys "+prefix, read, same, deliver)
}

// follow is the blocking-query loop of both watches: read with the last
// index, deliver what differs from the last delivery, rate-limit wakes, back
// off with jitter on errors.
func follow[T any](ctx context.Context, w *Watcher, what string, read func(*api.QueryOptions) (T, uint64, error), same func(a, b T) bool, deliver func(T, uint64)) error {
	logger := w.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	waitTime := cmp.Or(w.WaitTime, 5*time.Minute)
	limiter := w.Limiter
	if limiter == nil {
		limiter = rate.NewLimiter(rate.Every(100*time.Millisecond), 5)
	}
	minBackoff, maxBackoff := cmp.Or(w.MinBackoff, 250*time.Millisecond), cmp.Or(w.MaxBackoff, 10*time.Second)

	var (
		index     uint64
		last      T
		delivered bool
		failures  int
	)
	for {
		if err := limiter.Wait(ctx); err != nil {
			return ctx.Err()
		}
		q := &api.QueryOptions{
			AllowStale: true,
			WaitIndex:  index,
			WaitTime:   waitTime,
			Datacenter: w.Datacenter,
		}
		got, lastIndex, err := read(q.WithContext(ctx))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			// The servers may come back with a lower index (restored or
			// rebuilt); a blocking query on the old index would then
			// stall for the whole WaitTime. Read afresh.
			index = 0
			failures++
			d := loop.Backoff(failures, minBackoff, maxBackoff)
			w.setState(func(s *State) { s.Reachable = false; s.LastError = err.Error() })
			logger.Warn("catalog read failed", "watch", what, "err", err, "retry_in", d.Round(time.Millisecond))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
			continue
		}
		failures = 0
		index = NextIndex(index, lastIndex)
		changed := !delivered || !same(last, got)
		w.setState(func(s *State) {
			s.Reachable, s.LastIndex, s.LastGoodRead, s.LastError = true, lastIndex, time.Now(), ""
			s.Reads++
			if changed {
				s.Delivered++
			}
		})
		if !changed {
			logger.Debug("catalog woke without a change", "watch", what, "index", lastIndex)
			continue
		}
		last, delivered = got, true
		logger.Debug("catalog changed", "watch", what, "index", lastIndex)
		deliver(got, lastIndex)
	}
}

func (w *Watcher) setState(f func(*State)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.state)
}

// Convert turns health endpoint results into catalog entries, sorted by
// service ID so that equal content compares equal.
func Convert(in []*api.ServiceEntry) []peers.Entry {
	out := make([]peers.Entry, 0, len(in))
	for _, se := range in {
		if se == nil || se.Service == nil {
			continue
		}
		out = append(out, peers.Entry{
			ServiceID:   se.Service.ID,
			Meta:        se.Service.Meta,
			Tags:        se.Service.Tags,
			CreateIndex: se.Service.CreateIndex,
			ModifyIndex: se.Service.ModifyIndex,
			Health:      se.Checks.AggregatedStatus(),
		})
	}
	slices.SortFunc(out, func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	return out
}
