package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "meshd",
		Short:         "WireGuard mesh provisioning agent driven by the Consul catalog",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("config", "", "configuration file (default "+config.DefaultPath+")")
	config.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usage(err) })
	root.AddCommand(newInitCmd(), newRunCmd(), newLeaveCmd(), newReleaseCmd(), newRotateKeyCmd(), newACLPolicyCmd(), newStatusCmd(), newHealthCmd(), newMeshCmd(), newGatewayCmd(), newDebugCmd(), newVersionCmd(), newUserspaceCmd(), newAuthorityCmd(), newManCmd())
	return root
}

// loadConfig loads the configuration for cmd and reports unknown keys.
func loadConfig(cmd *cobra.Command) (*config.Config, error) {
	return loadConfigWith(cmd, config.Load)
}

// loadConfigWith is loadConfig through load (config.Load or
// config.LoadToWrite).
func loadConfigWith(cmd *cobra.Command, load func(string, *pflag.FlagSet) (*config.Config, []string, error)) (*config.Config, error) {
	path, _ := cmd.Flags().GetString("config")
	cfg, warnings, err := load(path, cmd.Flags())
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, "meshd: warning: "+w)
	}
	if err != nil {
		return nil, usage(err)
	}
	return cfg, nil
}

// loadNodeConfig is loadConfig for commands that act as this node: its
// name must be known.
func loadNodeConfig(cmd *cobra.Command) (*config.Config, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, err
	}
	if err := cfg.RequireNode(); err != nil {
		return nil, usage(err)
	}
	return cfg, nil
}

func newLogger(cfg *config.Config) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// newCatalog is the node's catalog (catalogsync.Catalog) as cfg configures
// it; http, when set, reads the list watch's responses.
func newCatalog(cfg *config.Config, consul *api.Client, http *catalogsync.HTTP, logger *slog.Logger) *catalogsync.Catalog {
	return &catalogsync.Catalog{Client: consul, HTTP: http, Service: cfg.Consul.Service,
		Datacenter: cfg.Consul.Datacenter, HintKey: cfg.Consul.HintKey, MaxStale: cfg.Consul.MaxStale,
		FullReadInterval: cfg.Consul.FullReadInterval, Logger: logger}
}

// consulClient builds a client from the standard CONSUL_HTTP_* variables
// (as api.DefaultConfig reads them) overridden by meshd's own keys.
func consulClient(cfg *config.Config) (*api.Client, error) {
	client, _, err := consulClients(cfg)
	return client, err
}

// consulClients is consulClient, with a reader for the watch's large
// responses through the same address, TLS and token.
func consulClients(cfg *config.Config) (*api.Client, *catalogsync.HTTP, error) {
	c := api.DefaultConfig()
	if cfg.Consul.Address != "" {
		c.Address = cfg.Consul.Address
	}
	if cfg.Consul.Token != "" {
		c.Token = cfg.Consul.Token
	}
	if cfg.Consul.TokenFile != "" {
		c.TokenFile = cfg.Consul.TokenFile
	}
	if cfg.Consul.Datacenter != "" {
		c.Datacenter = cfg.Consul.Datacenter
	}
	client, err := api.NewClient(c)
	if err != nil {
		return nil, nil, fmt.Errorf("consul client: %w", err)
	}
	return client, catalogsync.NewHTTP(c), nil
}

// writeJSON prints v as indented JSON: every --json output.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print meshd's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			goVersion := "unknown"
			if bi, ok := debug.ReadBuildInfo(); ok {
				goVersion = bi.GoVersion
			}
			fmt.Fprintf(cmd.OutOrStdout(), "meshd %s (%s)\n", version, goVersion)
			return nil
		},
	}
}
