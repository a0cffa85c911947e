package health

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Code is a verdict's exit status, in the Nagios / Consul check convention.
type Code int

// The verdicts, worst last.
const (
	OK       Code = 0
	Warning  Code = 1
	Critical Code = 2
)

func (c Code) String() string {
	switch c {
	case OK:
		return "OK"
	case Warning:
		return "WARNING"
	}
	return "CRITICAL"
}

// Heartbeat is how often a host writes its unchanged summary again, so
// that a summary's age tells a dead host from a quiet one.
const Heartbeat = 5 * time.Minute

// Thresholds are where a state turns into a warning or worse.
type Thresholds struct {
	// CatalogStale: warn when the catalog was not read for this long.
	CatalogStale time.Duration
	// Handshake: an applied peer without a handshake for this long is
	// unreachable (a warning on this host, "no handshake from" in the
	// fleet view). WireGuard re-handshakes every 2 minutes while traffic
	// or keepalives flow.
	Handshake time.Duration
	// NotConverged: critical when not converged for this long.
	NotConverged time.Duration
	// SummaryStale: a host whose summary is older is broken in the fleet
	// view (it missed two heartbeats).
	SummaryStale time.Duration
}

// Defaults are the thresholds every verdict uses unless an operator's
// flag says otherwise.
var Defaults = Thresholds{
	CatalogStale: 10 * time.Minute,
	Handshake:    5 * time.Minute,
	NotConverged: 2 * time.Minute,
	SummaryStale: 3 * Heartbeat,
}

// Validate says which threshold is not a positive duration, if one.
func (th Thresholds) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"catalog-stale", th.CatalogStale}, {"handshake-age", th.Handshake}, {"not-converged", th.NotConverged}, {"summary-stale", th.SummaryStale}} {
		if f.d <= 0 {
			return fmt.Errorf("--%s = %s: expected a positive duration", f.name, f.d)
		}
	}
	return nil
}

// Host is what the verdicts read of one host's status.
type Host struct {
	Node      string
	Interface string
	// LinkPresent: the WireGuard device could be read.
	LinkPresent bool
	Converged   bool
	// NotConvergedSince is when the host last stopped being converged.
	NotConvergedSince *time.Time
	CatalogReachable  bool
	LastGoodRead      time.Time // zero: never
	BreakerHeld       int       // removals only the circuit breaker keeps
	Peers             []Peer
	// CredentialExpires is when this host's credential expires (zero:
	// unknown): its entry is refused everywhere from then on.
	CredentialExpires time.Time
}

// CredentialWarning is how long before its credential expires a host
// warns.
const CredentialWarning = 30 * 24 * time.Hour

// Peer is one peer of a Host: applied (in the kernel) or a rejected
// catalog entry; other states do not count towards a verdict.
type Peer struct {
	Node      string
	ServiceID string
	Applied   bool
	Rejected  bool
	// LatestHandshake is nil when the device never handshook with it.
	LatestHandshake *time.Time
}

// Stale names the applied peers without a handshake for th.Handshake,
// sorted.
func (h Host) Stale(th Thresholds, now time.Time) []string {
	var stale []string
	for _, p := range h.Peers {
		if p.Applied && (p.LatestHandshake == nil || now.Sub(*p.LatestHandshake) > th.Handshake) {
			stale = append(stale, p.Node)
		}
	}
	slices.Sort(stale)
	return stale
}

// Check is the verdict on one host: its code and one line saying why.
func Check(h Host, th Thresholds, now time.Time) (Code, string) {
	var crit, warn []string
	if !h.LinkPresent {
		crit = append(crit, "WireGuard device "+h.Interface+" missing")
	}
	if !h.Converged {
		since := now
		if h.NotConvergedSince != nil {
			since = *h.NotConvergedSince
		}
		if d := now.Sub(since); d > th.NotConverged {
			crit = append(crit, fmt.Sprintf("not converged for %s", d.Round(time.Second)))
		}
	}
	switch {
	case h.LastGoodRead.IsZero():
		warn = append(warn, "catalog never read")
	case now.Sub(h.LastGoodRead) > th.CatalogStale:
		warn = append(warn, fmt.Sprintf("catalog last read %s ago", now.Sub(h.LastGoodRead).Round(time.Second)))
	}
	applied := 0
	var rejected []string
	for _, p := range h.Peers {
		switch {
		case p.Applied:
			applied++
		case p.Rejected:
			rejected = append(rejected, cmpOr(p.Node, p.ServiceID))
		}
	}
	if stale := h.Stale(th, now); len(stale) > 0 {
		warn = append(warn, fmt.Sprintf("%d peers without a handshake in %s (%s)", len(stale), th.Handshake, list(stale)))
	}
	if len(rejected) > 0 {
		warn = append(warn, fmt.Sprintf("%d rejected catalog entries (%s)", len(rejected), list(rejected)))
	}
	if h.BreakerHeld > 0 {
		warn = append(warn, fmt.Sprintf("%d removals held by the circuit breaker", h.BreakerHeld))
	}
	switch exp := h.CredentialExpires; {
	case exp.IsZero():
	case !now.Before(exp):
		crit = append(crit, "this host's credential expired at "+exp.UTC().Format(time.RFC3339)+": every host refuses its entry")
	case exp.Sub(now) < CredentialWarning:
		left := exp.Sub(now).Round(time.Second)
		if left > time.Hour {
			left = left.Round(time.Hour)
		}
		warn = append(warn, fmt.Sprintf("this host's credential expires in %s (%s): have the authority sign a new one", left, exp.UTC().Format(time.RFC3339)))
	}
	switch {
	case len(crit) > 0:
		return Critical, "CRITICAL: " + strings.Join(append(crit, warn...), "; ")
	case len(warn) > 0:
		return Warning, "WARNING: " + strings.Join(warn, "; ")
	}
	return OK, fmt.Sprintf("OK: converged, %d peers, catalog read %s ago", applied, now.Sub(h.LastGoodRead).Round(time.Second))
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// list names a few and counts the rest, to keep the line short.
func list(names []string) string {
	if len(names) <= 3 {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:3], ", ") + fmt.Sprintf(" and %d more", len(names)-3)
}
