package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/control"
	"meshd.dev/meshd/netlinkx"
)

func newLeaveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "leave",
		Short: "Leave the mesh for good: deregister, remove the link and routes, stop the agent",
		Long: "Leave the mesh for good. The running agent is asked over its status socket to\n" +
			"deregister this node, remove its WireGuard link and routes, and exit; when no agent\n" +
			"runs, this command does the same itself. Other hosts remove this node after their\n" +
			"removal_grace.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if cfg.NodeName == "" {
				return usage(fmt.Errorf("config: node_name is not set and the host name is not a DNS label"))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			err = control.Leave(ctx, cfg.StatusSocket)
			if err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "node %s left the mesh (agent stopped)\n", cfg.NodeName)
				return nil
			}
			if !errors.Is(err, control.ErrNotRunning) {
				return err
			}
			// No agent: do it here.
			consul, err := consulClient(cfg)
			if err != nil {
				return err
			}
			var errs []error
			if err := catalogsync.Deregister(ctx, consul, cfg.NodeName); err != nil {
				errs = append(errs, err)
			}
			link, err := netlinkx.Open(netlinkx.Options{Name: cfg.Interface, Logger: newLogger(cfg)})
			if err != nil {
				errs = append(errs, err)
			} else {
				errs = append(errs, link.Remove())
				link.Close()
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s left the mesh (no agent was running)\n", cfg.NodeName)
			return nil
		},
	}
}
