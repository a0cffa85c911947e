package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/peers"
)

// meshRow is one node of the fleet view (`meshd mesh --json` prints a list).
type meshRow struct {
	Node string `json:"node"`
	// Verdict is "broken", "warning" or "ok"; Problems says why.
	Verdict  string   `json:"verdict"`
	Problems []string `json:"problems,omitempty"`
	// Health is the aggregate of Consul's checks on the node's instance.
	Health string `json:"health"`
	// Summary is what the node last published (absent: nothing yet), and
	// SummaryAge how long ago.
	Summary    *agent.Summary `json:"summary,omitempty"`
	SummaryAge float64        `json:"summary_age_seconds,omitempty"`
	// UnreachableFrom names the nodes that report no recent handshake
	// with this one.
	UnreachableFrom []string `json:"unreachable_from,omitempty"`
}

var verdictRank = map[string]int{"broken": 0, "warning": 1, "ok": 2}

// fleetView judges every node from the catalog entries and the published
// summaries, worst first.
func fleetView(entries []peers.Entry, summaries map[string]agent.Summary, now time.Time) []meshRow {
	reporters := map[string][]string{}
	for _, s := range summaries {
		for _, n := range s.StaleHandshakes {
			reporters[n] = append(reporters[n], s.Node)
		}
	}
	var rows []meshRow
	for _, e := range entries {
		node := e.Meta[peers.MetaNode]
		if node == "" {
			node = strings.TrimPrefix(e.ServiceID, "meshd-")
		}
		r := meshRow{Node: node, Health: e.Health, UnreachableFrom: reporters[node]}
		slices.Sort(r.UnreachableFrom)
		var broken, warn []string
		if e.Health == peers.HealthCritical {
			broken = append(broken, "Consul health critical")
		}
		if len(r.UnreachableFrom) > 0 {
			broken = append(broken, "no handshake from "+strings.Join(r.UnreachableFrom, ", "))
		}
		if s, ok := summaries[node]; ok {
			r.Summary = &s
			r.SummaryAge = now.Sub(s.Updated).Round(time.Second).Seconds()
			switch {
			case now.Sub(s.Updated) > 3*agent.SummaryHeartbeat:
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
			r.Verdict = "broken"
		case len(warn) > 0:
			r.Verdict = "warning"
		default:
			r.Verdict = "ok"
		}
		r.Problems = append(broken, warn...)
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b meshRow) int {
		if d := verdictRank[a.Verdict] - verdictRank[b.Verdict]; d != 0 {
			return d
		}
		return strings.Compare(a.Node, b.Node)
	})
	return rows
}

func newMeshCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "mesh",
		Short: "The fleet view: every node in the catalog with its health, worst first",
		Long: "List every node of the mesh from the Consul catalog with the health summary it\n" +
			"publishes (KV meshd/health/<node>, which wakes no host's watch), worst first: broken\n" +
			"(Consul health critical, unreachable from other nodes, not converged, device missing,\n" +
			"no or an old summary), warning, ok. Runs anywhere with Consul access.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			consul, err := consulClient(cfg)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			q := (&api.QueryOptions{AllowStale: true}).WithContext(ctx)
			entries, _, err := consul.Health().Service(cfg.Consul.Service, "", false, q)
			if err != nil {
				return fmt.Errorf("read the %s service: %w", cfg.Consul.Service, err)
			}
			pairs, _, err := consul.KV().List(agent.SummaryPrefix, q)
			if err != nil {
				return fmt.Errorf("read health summaries: %w", err)
			}
			summaries := map[string]agent.Summary{}
			for _, p := range pairs {
				var s agent.Summary
				if json.Unmarshal(p.Value, &s) == nil && s.Node != "" {
					summaries[s.Node] = s
				}
			}
			rows := fleetView(catalogsync.Convert(entries), summaries, time.Now())
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), rows)
			}
			printMesh(cmd.OutOrStdout(), rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the fleet view as JSON")
	return cmd
}

func printMesh(w io.Writer, rows []meshRow) {
	counts := map[string]int{}
	for _, r := range rows {
		counts[r.Verdict]++
	}
	fmt.Fprintf(w, "%d nodes: %d broken, %d warning, %d ok\n", len(rows), counts["broken"], counts["warning"], counts["ok"])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tVERDICT\tCONSUL\tPEERS\tSUMMARY AGE\tPROBLEMS")
	for _, r := range rows {
		peersCol, ageCol := "-", "-"
		if r.Summary != nil {
			peersCol = fmt.Sprint(r.Summary.PeersApplied)
			ageCol = (time.Duration(r.SummaryAge) * time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", clipText(r.Node, 16), r.Verdict, or(r.Health, "-"), peersCol, ageCol,
			clipText(strings.Join(r.Problems, "; "), 44))
	}
	tw.Flush()
}
