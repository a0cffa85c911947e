package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/health"
	"meshd.dev/meshd/peers"
)

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
			if err := cfg.RequireTrust(); err != nil {
				return usage(err)
			}
			consul, err := consulClient(cfg)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			entries, summaries, err := catalogsync.Fleet(ctx, consul, cfg.Consul.Service)
			if err != nil {
				return err
			}
			// Every entry is verified as a peer would be: a row is a
			// node the authority vouches for, or a rejected entry.
			accepted, rejected := peers.Desire(entries, peers.Self{}, cfg.Rules())
			var nodes []health.Node
			now := time.Now()
			for _, p := range accepted {
				n := health.Node{Name: p.Node, ConsulHealth: p.Health}
				if !now.Before(p.NotAfter) {
					n.Rejected = "credential expired at " + p.NotAfter.Format(time.RFC3339)
				}
				nodes = append(nodes, n)
			}
			for _, r := range rejected {
				name := r.Node
				if name == "" {
					name = r.ServiceID
				}
				nodes = append(nodes, health.Node{Name: name, Rejected: r.Reason})
			}
			rows := health.Fleet(nodes, summaries, health.Defaults, now)
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

func printMesh(w io.Writer, rows []health.Row) {
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", clipText(r.Node, 16), r.Verdict, clipText(or(r.Health, "-"), 10), peersCol, ageCol,
			clipText(strings.Join(r.Problems, "; "), 44))
	}
	tw.Flush()
}
