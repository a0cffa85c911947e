package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
)

// SummaryPrefix is the KV folder of the hosts' health summaries. KV, not the
// meshd service: a write there wakes only `meshd mesh`, never the fleet's
// watches.
const SummaryPrefix = "meshd/health/"

// Summary is the small health record each host publishes for `meshd mesh`.
type Summary struct {
	Node             string `json:"node"`
	Converged        bool   `json:"converged"`
	PeersApplied     int    `json:"peers_applied"`
	Rejected         int    `json:"rejected"`
	BreakerHeld      int    `json:"breaker_held"`
	CatalogReachable bool   `json:"catalog_reachable"`
	LinkPresent      bool   `json:"link_present"`
	// StaleHandshakes names applied peers without a handshake for
	// StaleHandshakeAge: the nodes this host cannot reach.
	StaleHandshakes []string  `json:"stale_handshakes,omitempty"`
	Updated         time.Time `json:"updated"`
}

const (
	// StaleHandshakeAge is past WireGuard's 2-minute rekey with margin.
	StaleHandshakeAge = 3 * time.Minute
	// SummaryHeartbeat is how often an unchanged summary is written again,
	// so that its age tells a dead host from a quiet one.
	SummaryHeartbeat = 5 * time.Minute
	// summaryMinInterval bounds the write rate of a changing summary;
	// summaryPerPeer spaces summaries further on large devices.
	summaryMinInterval = 5 * time.Second
	summaryPerPeer     = 5 * time.Millisecond
)

// Summarize reduces a status to a summary.
func Summarize(st Status, now time.Time) Summary {
	s := Summary{Node: st.Node, Converged: st.Converged, BreakerHeld: st.Breaker.Held,
		CatalogReachable: st.Catalog.Reachable, LinkPresent: st.LinkPresent, Updated: now.UTC()}
	for _, p := range st.Peers {
		switch p.State {
		case PeerApplied:
			s.PeersApplied++
			if p.LatestHandshake == nil || now.Sub(*p.LatestHandshake) > StaleHandshakeAge {
				s.StaleHandshakes = append(s.StaleHandshakes, p.Node)
			}
		case PeerRejected:
			s.Rejected++
		}
	}
	slices.Sort(s.StaleHandshakes)
	return s
}

// sameSummary compares summaries but for their time.
func sameSummary(a, b Summary) bool {
	a.Updated, b.Updated = time.Time{}, time.Time{}
	return slices.Equal(a.StaleHandshakes, b.StaleHandshakes) &&
		a.Node == b.Node && a.Converged == b.Converged && a.PeersApplied == b.PeersApplied &&
		a.Rejected == b.Rejected && a.BreakerHeld == b.BreakerHeld &&
		a.CatalogReachable == b.CatalogReachable && a.LinkPresent == b.LinkPresent
}

// publishSummary writes this host's summary when it changed (at most every
// few seconds) or when the heartbeat is due. Failures are logged: the
// summary is for operators, never on the data plane's path.
//
// Computing a summary reads the whole device, which holds the device's
// configuration lock for as long (a userspace device of 10,000 peers: a
// fifth of a second), so it is done at most every summaryMinInterval, and
// on large devices no more often than every 5 s per 1,000 peers (a minute
// at 12,000); when a reconcile comes sooner, publishSummary returns when to
// look again. (By the peer count, not by how long the last one took: on a
// busy machine a small device's read can take long enough to starve the
// summary.)
func (a *Agent) publishSummary(ctx context.Context, now time.Time) (again time.Time) {
	since := now.Sub(a.lastSummaryAt)
	every := max(summaryMinInterval, time.Duration(len(a.lastDesired))*summaryPerPeer)
	if next := a.lastSummaryCheck.Add(every); now.Before(next) {
		return next
	}
	a.lastSummaryCheck = now
	st := a.Status()
	s := Summarize(st, now)
	if sameSummary(s, a.lastSummary) && since < SummaryHeartbeat {
		return time.Time{}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return time.Time{}
	}
	key := SummaryPrefix + a.opts.Registration.Node
	if _, err := a.opts.Consul.KV().Put(&api.KVPair{Key: key, Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		a.logger.Debug("health summary not published", "err", fmt.Errorf("put %s: %w", key, err))
		return time.Time{}
	}
	a.lastSummary, a.lastSummaryAt = s, now
	return time.Time{}
}
