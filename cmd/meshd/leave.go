package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/config"
	"meshd.dev/meshd/control"
	"meshd.dev/meshd/firewall"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/prefixalloc"
)

func newLeaveCmd() *cobra.Command {
	var releasePrefix bool
	cmd := &cobra.Command{
		Use:   "leave",
		Short: "Leave the mesh for good: deregister, remove the link and routes, stop the agent",
		Long: "Leave the mesh for good. The running agent is asked over its status socket to\n" +
			"deregister this node, remove its WireGuard link and routes, and exit; when no agent\n" +
			"runs, this command does the same itself. Other hosts remove this node after their\n" +
			"removal_grace. A gateway also removes its user link and firewall table.\n" +
			"--release-prefix also frees the prefix claim, and deletes this node's gateway\n" +
			"peer records and address claims, so the prefix can be reused.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadNodeConfig(cmd)
			if err != nil {
				return err
			}
			if releasePrefix && !cfg.Prefix.IsValid() {
				return usage(&config.Error{Key: "prefix", Expected: "the prefix to release (--release-prefix needs it)"})
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			if err := leave(ctx, cmd, cfg); err != nil {
				return err
			}
			if !releasePrefix {
				return nil
			}
			consul, err := consulClient(cfg)
			if err != nil {
				return err
			}
			// Gateway records first: their addresses are inside the prefix.
			if err := gateway.RemoveAll(ctx, consul, cfg.NodeName); err != nil {
				return err
			}
			if err := prefixalloc.Release(ctx, consul.KV(), cfg.NodeName, cfg.Prefix); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "released prefix %s and gateway records of %s\n", cfg.Prefix, cfg.NodeName)
			return nil
		},
	}
	cmd.Flags().BoolVar(&releasePrefix, "release-prefix", false, "also free this node's prefix claim so another host can take it")
	return cmd
}

// leave makes the node leave: through the running agent, or here when none
// runs.
func leave(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
	err := control.Leave(ctx, cfg.StatusSocket)
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
	logger := newLogger(cfg)
	removeLink := func(name string) func() error {
		return func() error {
			link, err := netlinkx.Open(netlinkx.Options{Name: name, Logger: logger})
			if err != nil {
				return err
			}
			defer link.Close()
			return link.Remove()
		}
	}
	remove := []func() error{removeLink(cfg.Interface)}
	if cfg.Gateway.Enabled {
		remove = append(remove, removeLink(cfg.Gateway.Interface), func() error {
			fw, err := firewall.Open()
			if err != nil {
				return err
			}
			return fw.Remove()
		})
	}
	cat := newCatalog(cfg, consul, nil, logger)
	reg := catalogsync.Registration{Service: cfg.Consul.Service, Node: cfg.NodeName}
	if err := agent.Leave(ctx, cat, reg, remove...); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "node %s left the mesh (no agent was running)\n", cfg.NodeName)
	return nil
}
