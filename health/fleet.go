package health

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Verdicts of the fleet view, worst first.
const (
	VerdictBroken  = "broken"
	VerdictWarning = "warning"
	VerdictOK      = "ok"
)

var verdictRank = map[string]int{VerdictBroken: 0, VerdictWarning: 1, VerdictOK: 2}

// Node is one node of the catalog as the fleet view sees it.
type Node struct {
	Name string
	// ConsulHealth is the aggregate of Consul's checks on its instance.
	ConsulHealth string
	// Rejected is why its entry does not verify or conflicts (empty: it
	// is a peer): such a row is never trusted, whatever its summary says.
	Rejected string
}

// Row is one node of the fleet view (`meshd mesh --json` prints a list).
type Row struct {
	Node string `json:"node"`
	// Verdict is "broken", "warning" or "ok"; Problems says why.
	Verdict  string   `json:"verdict"`
	Problems []string `json:"problems,omitempty"`
	// Health is the aggregate of Consul's checks on the node's instance.
	Health string `json:"health"`
	// Summary is what the node last published (absent: nothing yet), and
	// SummaryAge how long ago.
	Summary    *Summary `json:"summary,omitempty"`
	SummaryAge float64  `json:"summary_age_seconds,omitempty"`
	// UnreachableFrom names the nodes that report no recent handshake
	// with this one.
	UnreachableFrom []string `json:"unreachable_from,omitempty"`
}

// Fleet judges every node from its Consul health and the published
// summaries, worst first.
func Fleet(nodes []Node, summaries map[string]Summary, th Thresholds, now time.Time) []Row {
	reporters := map[string][]string{}
	for _, s := range summaries {
		for _, n := range s.StaleHandshakes {
			reporters[n] = append(reporters[n], s.Node)
		}
	}
	rows := make([]Row, 0, len(nodes))
	for _, n := range nodes {
		r := Row{Node: n.Name, Health: n.ConsulHealth, UnreachableFrom: reporters[n.Name]}
		slices.Sort(r.UnreachableFrom)
		var broken, warn []string
		if n.Rejected != "" {
			broken = append(broken, "entry rejected: "+n.Rejected)
		}
		if n.ConsulHealth == "critical" {
			broken = append(broken, "Consul health critical")
		}
		if len(r.UnreachableFrom) > 0 {
			broken = append(broken, "no handshake from "+strings.Join(r.UnreachableFrom, ", "))
		}
		if s, ok := summaries[n.Name]; ok {
			r.Summary = &s
			r.SummaryAge = now.Sub(s.Updated).Round(time.Second).Seconds()
			switch {
			case now.Sub(s.Updated) > th.SummaryStale:
				broken = append(broken, fmt.Sprintf("summary %s old", now.Sub(s.Updated).Round(time.Second)))
			case !s.LinkPresent:
				broken = append(broken, "WireGuard device missing")
			case !s.Converged:
				broken = append(broken, "not converged")
			}
			if len(s.StaleHandshakes) > 0 {
				warn = append(warn, fmt.Sprintf("%d peers without handshake", len(s.StaleHandshakes)))
			}
			if s.Rejected > 0 {
				warn = append(warn, fmt.Sprintf("%d rejected entries", s.Rejected))
			}
			if s.BreakerHeld > 0 {
				warn = append(warn, fmt.Sprintf("%d removals held", s.BreakerHeld))
			}
			if !s.CatalogReachable {
				warn = append(warn, "catalog unreachable")
			}
		} else {
			broken = append(broken, "no health summary published")
		}
		switch {
		case len(broken) > 0:
			r.Verdict = VerdictBroken
		case len(warn) > 0:
			r.Verdict = VerdictWarning
		default:
			r.Verdict = VerdictOK
		}
		r.Problems = append(broken, warn...)
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b Row) int {
		if d := verdictRank[a.Verdict] - verdictRank[b.Verdict]; d != 0 {
			return d
		}
		return strings.Compare(a.Node, b.Node)
	})
	return rows
}
