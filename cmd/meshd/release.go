package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/control"
)

func newReleaseCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "release-removals",
		Short: "Let removals held by the mass-removal circuit breaker go ahead",
		Long: "When more than max_removal_fraction of the peers leave the catalog at once, the\n" +
			"running agent holds their removal (see `status_socket` and the logs). After checking\n" +
			"that the catalog is right, release them with this command: every peer pending removal\n" +
			"is removed once its removal_grace has passed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			n, err := control.ReleaseRemovals(ctx, cfg.StatusSocket)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "released %d pending removals\n", n)
			return nil
		},
	}
}
