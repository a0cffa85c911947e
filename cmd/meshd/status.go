package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/control"
	"meshd.dev/meshd/health"
	"meshd.dev/meshd/netlinkx"
)

// fetchStatus asks the running agent for its status.
func fetchStatus(ctx context.Context, socket string) (agent.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var st agent.Status
	err := control.Status(ctx, socket, &st)
	return st, err
}

func newStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this host's link, catalog state, peers and whether it is converged",
		Long: "Show this host's view of the mesh: interface, keys, catalog state, every peer with its\n" +
			"latest handshake and traffic as the device reports them, rejected catalog entries with\n" +
			"their reasons, and whether the device holds what the catalog asks for. --json prints\n" +
			"the agent's status document (schema in the README). Exit status 2 when the agent is\n" +
			"not running; the device is then read directly if it exists.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			st, err := fetchStatus(cmd.Context(), cfg.StatusSocket)
			out := cmd.OutOrStdout()
			if errors.Is(err, control.ErrNotRunning) {
				fmt.Fprintf(out, "meshd agent is not running (no answer on %s)\n", cfg.StatusSocket)
				if dev, derr := netlinkx.ReadDevice(cfg.Interface); derr == nil {
					fmt.Fprintf(out, "device %s (%s) still up with %d peers, public key %s\n", dev.Name, dev.Type, len(dev.Peers), dev.PublicKey)
				} else {
					fmt.Fprintf(out, "device %s: %v\n", cfg.Interface, derr)
				}
				return &exitError{code: 2, err: err}
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(out, st)
			}
			printStatus(out, st, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status document as JSON")
	return cmd
}

// age prints how long ago t was, compactly ("-" for never).
func age(t *time.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return now.Sub(*t).Round(time.Second).String()
}

func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// printStatus writes the human form: a header and a table that fits in 100
// columns (long reasons are cut, --json has them whole).
func printStatus(w io.Writer, st agent.Status, now time.Time) {
	fmt.Fprintf(w, "node %s  interface %s (%s)  listen %d  address %s  prefix %s\n",
		st.Node, st.Interface, st.Mode, st.ListenPort, st.MeshAddress, st.Prefix)
	fmt.Fprintf(w, "public key %s\n", st.PublicKey)
	c := st.Catalog
	reach := "reachable"
	if !c.Reachable {
		reach = "UNREACHABLE (" + escape(c.LastError) + ")"
	}
	lastRead := "never"
	if !c.LastGoodRead.IsZero() {
		lastRead = age(&c.LastGoodRead, now) + " ago"
	}
	fmt.Fprintf(w, "catalog %s, index %d, last good read %s, %d entries, snapshot in use: %v\n",
		reach, c.LastIndex, lastRead, c.Entries, c.SnapshotInUse)
	if !st.CredentialExpires.IsZero() || st.Revoked > 0 {
		fmt.Fprintf(w, "credential valid until %s, %d nodes or identities revoked by the authority\n",
			st.CredentialExpires.UTC().Format(time.RFC3339), st.Revoked)
	}
	if im := st.Impersonation; im != nil {
		fmt.Fprintln(w, clipText(fmt.Sprintf("IMPERSONATION: the catalog showed entries for this node that it did not publish (%d times; other instances: %s)",
			im.Rewritten, strings.Join(im.Others, ", ")), 100))
	}
	if st.Breaker.Tripped {
		fmt.Fprintf(w, "circuit breaker TRIPPED: %d removals pending, %d held (meshd release-removals)\n", st.Breaker.Pending, st.Breaker.Held)
	}
	// The same verdict as `meshd health` at its default thresholds.
	_, verdict := health.Check(st.Health(), health.Defaults, now)
	fmt.Fprintln(w, clipText("health: "+verdict, 100))
	if st.Converged {
		fmt.Fprintln(w, "converged: yes")
	} else {
		fmt.Fprintf(w, "converged: NO (since %s)\n", age(st.NotConvergedSince, now))
		for _, d := range st.Differences {
			fmt.Fprintf(w, "  - %s\n", clipText(d, 96))
		}
	}
	// Columns are clipped so that a line fits in 100 columns; --json has
	// every value whole.
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tENDPOINT\tPREFIX\tHANDSHAKE\tRX/TX\tSTATE")
	var rejected []agent.PeerStatus
	for _, p := range st.Peers {
		if p.State == agent.PeerRejected {
			rejected = append(rejected, p)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", clipText(or(p.Node, "?"), 12), clipText(or(p.Endpoint, "-"), 22),
			clipText(or(p.Prefix, "-"), 20), clipText(age(p.LatestHandshake, now), 9),
			clipText(bytesIEC(p.RxBytes)+"/"+bytesIEC(p.TxBytes), 14), clipText(p.State, 12))
	}
	tw.Flush()
	if g := st.Gateway; g != nil {
		fmt.Fprintf(w, "gateway: interface %s, %d user peers, %d rejected records, synced: %v, kernel writes %d\n",
			g.Interface, g.Peers, g.RejectedCount, g.Synced, g.Writes)
		if j := g.JIT; j != nil {
			refused := 0
			for _, n := range j.Refused {
				refused += int(n)
			}
			fmt.Fprintf(w, "  just in time: %d of %d records in the kernel (idle after %s), %d installs, %d evictions, %d initiations refused\n",
				j.Active, j.Records, j.IdleTimeout, j.Installs, j.Evictions, refused)
		}
		if g.LastError != "" {
			fmt.Fprintln(w, clipText("  last error: "+g.LastError, 100))
		}
		for _, r := range g.Rejected {
			fmt.Fprintln(w, clipText("  "+r.Key+": "+r.Reason, 100))
		}
		if more := g.RejectedCount - len(g.Rejected); more > 0 {
			fmt.Fprintf(w, "  ... and %d more rejected records (meshd gateway peer list --limit 0 shows them)\n", more)
		}
	}
	if len(rejected) > 0 {
		fmt.Fprintf(w, "rejected catalog entries (%d):\n", len(rejected))
		for _, p := range rejected {
			fmt.Fprintln(w, clipText("  "+or(p.ServiceID, p.Node)+": "+p.Reason, 100))
		}
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Text that came from outside (service IDs, node names, rejection reasons
// quoting catalog values) is escaped first: a control character or an
// invalid byte is printed as a Go escape (\x1b), never sent to the
// operator's terminal.
func clipText(s string, n int) string {
	s = escape(s)
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// escape replaces every byte that is not printable UTF-8 with its Go
// escape; printable text is left as it is.
func escape(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}
