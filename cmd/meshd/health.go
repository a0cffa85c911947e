package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/control"
	"meshd.dev/meshd/health"
)

func newHealthCmd() *cobra.Command {
	th := health.Defaults
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
			if err := th.Validate(); err != nil {
				return usage(err)
			}
			st, err := fetchStatus(cmd.Context(), cfg.StatusSocket)
			var code health.Code
			var line string
			switch {
			case errors.Is(err, control.ErrNotRunning):
				code, line = health.Critical, "CRITICAL: meshd agent not running"
			case err != nil:
				code, line = health.Critical, "CRITICAL: "+err.Error()
			default:
				code, line = health.Check(st.Health(), th, time.Now())
			}
			fmt.Fprintln(cmd.OutOrStdout(), line)
			if code != health.OK {
				return &exitError{code: int(code), err: errSilent}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&th.CatalogStale, "catalog-stale", th.CatalogStale, "warn when the catalog was not read for this long")
	cmd.Flags().DurationVar(&th.Handshake, "handshake-age", th.Handshake, "warn about applied peers without a handshake for this long (WireGuard re-handshakes every 2 minutes while traffic or keepalives flow)")
	cmd.Flags().DurationVar(&th.NotConverged, "not-converged", th.NotConverged, "critical when not converged for this long")
	return cmd
}

// errSilent is an exit status whose message was already printed.
var errSilent = errors.New("")
