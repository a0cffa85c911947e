package catalogsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/peers"
)

// A hint is a Consul user event naming one changed instance: the node
// whose entry changed fires it once the catalog has the change, and every
// other meshd, woken by its local agent (user events travel by gossip: the
// servers hold no query for it), reads that one instance instead of waiting
// for the watch to deliver the whole list again. A hint is only a trigger:
// what is applied is always read from the catalog, and the watch of the
// whole service stays the authority (see Overlay).

// Hint names one instance: the Consul node it is registered on and its
// service ID.
type Hint struct {
	ConsulNode string
	ServiceID  string
}

// Payload is the user event's payload.
func (h Hint) Payload() []byte { return []byte(h.ConsulNode + " " + h.ServiceID) }

// ParseHint reads a hint's payload: a Consul node name and a service ID,
// separated by one space.
func ParseHint(b []byte) (Hint, error) {
	node, id, ok := strings.Cut(string(b), " ")
	if !ok || node == "" || id == "" || strings.ContainsAny(id, " \n") || len(b) > 512 {
		return Hint{}, fmt.Errorf("hint %.64q: want \"<consul node> <service id>\"", b)
	}
	return Hint{ConsulNode: node, ServiceID: id}, nil
}

// FireHint fires the hint event name for h through the local agent.
func FireHint(ctx context.Context, c *api.Client, name string, h Hint) error {
	q := (&api.WriteOptions{}).WithContext(ctx)
	if _, _, err := c.Event().Fire(&api.UserEvent{Name: name, Payload: h.Payload()}, q); err != nil {
		return fmt.Errorf("fire hint %s: %w", name, err)
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
// says (match(nil) for "gone"), through blocking queries, until ctx ends.
func WaitInstance(ctx context.Context, c *api.Client, service string, h Hint, match func(*peers.Entry) bool) error {
	var index uint64
	for {
		e, got, err := ReadInstance(ctx, c, service, h, &api.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Second})
		if err != nil {
			return err
		}
		if match(e) {
			return nil
		}
		index = NextIndex(index, got)
	}
}

// Hinted is an instance as a hint's read found it: Entry nil means the
// instance is gone; Index is the index of the read.
type Hinted struct {
	Entry *peers.Entry
	Index uint64
}

// Overlay is s with the hinted instances (by service ID) that are newer
// than s put in: replaced, added or removed. Reads no newer than s's index
// are left out: the whole list is the authority once it has caught up.
// An instance the hint added takes its health from s if s has it,
// else passing (an instance is registered without checks). s is not
// changed; with nothing to put in, s itself is returned.
func Overlay(s *Snapshot, hinted map[string]Hinted) *Snapshot {
	if s == nil || len(hinted) == 0 {
		return s
	}
	var ids []string
	for id, h := range hinted {
		if h.Index > s.Index {
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
		health := peers.HealthPassing
		if found {
			health = s.Entries[i].Health
			i++
		}
		if e := hinted[id].Entry; e != nil {
			e := *e
			if e.Health == "" {
				e.Health = health
			}
			out.Entries = append(out.Entries, e)
		}
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

// RunHints follows the user events called name on the local agent until
// ctx is done, calling deliver with each batch of hints fired since the
// last (events already there at the first read are not hints: they are
// past). It uses the watch's blocking-query loop: the same rate limit and
// backoff. A payload that is not a hint is skipped and logged.
func (w *Watcher) RunHints(ctx context.Context, name string, deliver func([]Hint)) error {
	read := func(q *api.QueryOptions) ([]*api.UserEvent, uint64, error) {
		events, meta, err := w.Client.Event().List(name, q)
		if err != nil {
			return nil, 0, err
		}
		return events, meta.LastIndex, nil
	}
	// The event list's index is a hash of its last event's ID.
	same := func(a, b []*api.UserEvent) bool { return lastEventID(a) == lastEventID(b) }
	logger := w.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var seen string
	first := true
	return follow(ctx, w, "hints "+name, read, same, func(events []*api.UserEvent, _ uint64) {
		if first {
			first, seen = false, lastEventID(events)
			return
		}
		hints := NewHints(events, seen)
		seen = lastEventID(events)
		var out []Hint
		for _, e := range hints {
			h, err := ParseHint(e.Payload)
			if err != nil {
				logger.Warn("ignoring a hint", "event", name, "err", err)
				continue
			}
			if !slices.Contains(out, h) {
				out = append(out, h)
			}
		}
		if len(out) > 0 {
			deliver(out)
		}
	})
}

// NewHints is the events after the one with ID seen; all of them when seen
// is not among them (the agent keeps only its last events).
func NewHints(events []*api.UserEvent, seen string) []*api.UserEvent {
	for i := len(events) - 1; i >= 0; i-- {
		if events[i].ID == seen {
			return events[i+1:]
		}
	}
	return events
}

func lastEventID(events []*api.UserEvent) string {
	if len(events) == 0 {
		return ""
	}
	return events[len(events)-1].ID
}
