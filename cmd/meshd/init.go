package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/config"
	"meshd.dev/meshd/keystore"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/prefixalloc"
)

// initResult is what `meshd init --json` prints for the bootstrap service.
type initResult struct {
	Node       string   `json:"node"`
	PublicKey  string   `json:"public_key"`
	Prefix     string   `json:"prefix"`
	Endpoint   string   `json:"endpoint"`
	Config     string   `json:"config"`
	KeyFile    string   `json:"key_file"`
	KeyCreated bool     `json:"key_created"`
	Claimed    bool     `json:"prefix_claimed"`
	Added      []string `json:"config_keys_added"`
}

func newInitCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Bootstrap this host: create its key, claim a prefix, write the config file",
		Long: "Bootstrap this host as a mesh member. Creates the private key if missing, claims a\n" +
			"free prefix inside mesh_supernet with a Consul KV check-and-set (or confirms the\n" +
			"configured one), takes the endpoint from --endpoint or the default route's source\n" +
			"address, and adds node_name, endpoint and prefix to the config file without touching\n" +
			"anything an operator already set there. Running it again changes nothing.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfigWith(cmd, config.LoadToWrite)
			if err != nil {
				return err
			}
			path, _ := cmd.Flags().GetString("config")
			if path == "" {
				path = config.DefaultPath
			}
			res, err := runInit(cmd.Context(), cfg, path)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s: prefix %s, endpoint %s, public key %s\n", res.Node, res.Prefix, res.Endpoint, res.PublicKey)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was done as JSON")
	return cmd
}

func runInit(ctx context.Context, cfg *config.Config, path string) (initResult, error) {
	if err := cfg.RequireNode(); err != nil {
		return initResult{}, usage(err)
	}
	res := initResult{Node: cfg.NodeName, Config: path, KeyFile: cfg.KeyFile}
	endpoint := cfg.Endpoint
	if !endpoint.IsValid() {
		addr, err := netlinkx.DefaultSource()
		if err != nil {
			return res, usage(fmt.Errorf("%w; give the underlay address with --endpoint ip:port", err))
		}
		endpoint = netip.AddrPortFrom(addr, uint16(cfg.ListenPort))
	}
	res.Endpoint = endpoint.String()

	key, created, err := keystore.LoadOrCreate(cfg.KeyFile)
	if err != nil {
		return res, err
	}
	res.PublicKey, res.KeyCreated = key.Public().String(), created

	consul, err := consulClient(cfg)
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	kv := consul.KV()
	prefix := cfg.Prefix
	if prefix.IsValid() {
		res.Claimed, err = prefixalloc.ClaimExact(ctx, kv, cfg.NodeName, prefix)
		if errors.Is(err, prefixalloc.ErrClaimedByOther) {
			return res, usage(fmt.Errorf("config: prefix = %q: %w", prefix, err))
		}
	} else {
		prefix, res.Claimed, err = prefixalloc.Claim(ctx, kv, cfg.NodeName, cfg.MeshSupernet, prefixalloc.DefaultBits(cfg.MeshSupernet))
	}
	if err != nil {
		return res, err
	}
	res.Prefix = prefix.String()

	res.Added, err = config.AddMissing(path, []config.Setting{
		{Key: "node_name", Value: cfg.NodeName},
		{Key: "endpoint", Value: res.Endpoint},
		{Key: "prefix", Value: res.Prefix},
	})
	if res.Added == nil {
		res.Added = []string{}
	}
	return res, err
}
