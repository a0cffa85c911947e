package health

import (
	"slices"
	"time"
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
	// Thresholds.Handshake: the nodes this host cannot reach.
	StaleHandshakes []string  `json:"stale_handshakes,omitempty"`
	Updated         time.Time `json:"updated"`
}

// Summarize reduces a host's status to its summary.
func Summarize(h Host, th Thresholds, now time.Time) Summary {
	s := Summary{Node: h.Node, Converged: h.Converged, BreakerHeld: h.BreakerHeld,
		CatalogReachable: h.CatalogReachable, LinkPresent: h.LinkPresent, Updated: now.UTC(),
		StaleHandshakes: h.Stale(th, now)}
	for _, p := range h.Peers {
		switch {
		case p.Applied:
			s.PeersApplied++
		case p.Rejected:
			s.Rejected++
		}
	}
	return s
}

// Same reports whether two summaries say the same, their times aside.
func (s Summary) Same(o Summary) bool {
	return slices.Equal(s.StaleHandshakes, o.StaleHandshakes) &&
		s.Node == o.Node && s.Converged == o.Converged && s.PeersApplied == o.PeersApplied &&
		s.Rejected == o.Rejected && s.BreakerHeld == o.BreakerHeld &&
		s.CatalogReachable == o.CatalogReachable && s.LinkPresent == o.LinkPresent
}
