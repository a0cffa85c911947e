package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/control"
)

// Nagios / Consul script check exit codes.
const (
	healthOK       = 0
	healthWarning  = 1
	healthCritical = 2
)

// Thresholds of meshd health.
type Thresholds struct {
	CatalogStale time.Duration
	Handshake    time.Duration
	NotConverged time.Duration
}

// judge turns a status into a verdict: the exit code and one line.
func judge(st agent.Status, th Thresholds, now time.Time) (int, string) {
	var crit, warn []string
	if !st.LinkPresent {
		crit = append(crit, "WireGuard device "+st.Interface+" missing")
	}
	if !st.Converged {
		since := now
		if st.NotConvergedSince != nil {
			since = *st.NotConvergedSince
		}
		if d := now.Sub(since); d > th.NotConverged {
			crit = append(crit, fmt.Sprintf("not converged for %s", d.Round(time.Second)))
		}
	}
	if c := st.Catalog; c.LastGoodRead.IsZero() || now.Sub(c.LastGoodRead) > th.CatalogStale {
		if c.LastGoodRead.IsZero() {
			warn = append(warn, "catalog never read")
		} else {
			warn = append(warn, fmt.Sprintf("catalog last read %s ago", now.Sub(c.LastGoodRead).Round(time.Second)))
		}
	}
	var stale, rejected []string
	for _, p := range st.Peers {
		switch p.State {
		case agent.PeerApplied:
			if p.LatestHandshake == nil || now.Sub(*p.LatestHandshake) > th.Handshake {
				stale = append(stale, p.Node)
			}
		case agent.PeerRejected:
			rejected = append(rejected, or(p.Node, p.ServiceID))
		}
	}
	if len(stale) > 0 {
		warn = append(warn, fmt.Sprintf("%d peers without a handshake in %s (%s)", len(stale), th.Handshake, list(stale)))
	}
	if len(rejected) > 0 {
		warn = append(warn, fmt.Sprintf("%d rejected catalog entries (%s)", len(rejected), list(rejected)))
	}
	if st.Breaker.Held > 0 {
		warn = append(warn, fmt.Sprintf("%d removals held by the circuit breaker", st.Breaker.Held))
	}
	applied := 0
	for _, p := range st.Peers {
		if p.State == agent.PeerApplied {
			applied++
		}
	}
	switch {
	case len(crit) > 0:
		return healthCritical, "CRITICAL: " + strings.Join(append(crit, warn...), "; ")
	case len(warn) > 0:
		return healthWarning, "WARNING: " + strings.Join(warn, "; ")
	}
	return healthOK, fmt.Sprintf("OK: converged, %d peers, catalog read %s ago", applied, now.Sub(st.Catalog.LastGoodRead).Round(time.Second))
}

// list names a few and counts the rest, to keep the line short.
func list(names []string) string {
	if len(names) <= 3 {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:3], ", ") + fmt.Sprintf(" and %d more", len(names)-3)
}

func newHealthCmd() *cobra.Command {
	var th Thresholds
	cmd := &cobra.Command{
		Use:   "health",
		Short: "One line and a Nagios/Consul check exit code: 0 OK, 1 warning, 2 critical",
		Long: "Check this host. 0 OK: converged and the catalog read recently. 1 WARNING: catalog\n" +
			"not read within --catalog-stale, peers without a handshake within --handshake-age,\n" +
			"rejected catalog entries, removals held by the circuit breaker. 2 CRITICAL: agent not\n" +
			"running, WireGuard device missing, not converged for longer than --not-converged.\n" +
			"Usable as a Consul script check (args: [\"/usr/bin/meshd\", \"health\"]).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			for name, d := range map[string]time.Duration{"catalog-stale": th.CatalogStale, "handshake-age": th.Handshake, "not-converged": th.NotConverged} {
				if d <= 0 {
					return usage(fmt.Errorf("--%s = %s: expected a positive duration", name, d))
				}
			}
			st, err := fetchStatus(cmd.Context(), cfg.StatusSocket)
			var code int
			var line string
			switch {
			case errors.Is(err, control.ErrNotRunning):
				code, line = healthCritical, "CRITICAL: meshd agent not running"
			case err != nil:
				code, line = healthCritical, "CRITICAL: "+err.Error()
			default:
				code, line = judge(st, th, time.Now())
			}
			fmt.Fprintln(cmd.OutOrStdout(), line)
			if code != healthOK {
				return &exitError{code: code, err: errSilent}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&th.CatalogStale, "catalog-stale", 10*time.Minute, "warn when the catalog was not read for this long")
	cmd.Flags().DurationVar(&th.Handshake, "handshake-age", 5*time.Minute, "warn about applied peers without a handshake for this long (WireGuard re-handshakes every 2 minutes while traffic or keepalives flow)")
	cmd.Flags().DurationVar(&th.NotConverged, "not-converged", 2*time.Minute, "critical when not converged for this long")
	return cmd
}

// errSilent is an exit status whose message was already printed.
var errSilent = errors.New("")
