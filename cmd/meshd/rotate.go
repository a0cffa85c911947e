package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/config"
	"meshd.dev/meshd/control"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/keystore"
)

func newRotateKeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-key",
		Short: "Give this host a new WireGuard key, published and applied",
		Long: "Make a new private key and switch to it. The current key is kept beside the key\n" +
			"file as <key_file>.old until the new public key is published; the running agent then\n" +
			"publishes it and configures the device with it at once, and peers follow within one\n" +
			"catalog propagation. Without a running agent, the new key is published here and the\n" +
			"agent applies it at its next start.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if err := cfg.RequireMember(); err != nil {
				return usage(err)
			}
			oldKey, err := keystore.Load(cfg.KeyFile)
			if err != nil {
				return err
			}
			newKey, err := keystore.Generate()
			if err != nil {
				return err
			}
			backup := cfg.KeyFile + ".old"
			if err := keystore.Save(backup, oldKey); err != nil {
				return fmt.Errorf("keep the old key: %w", err)
			}
			if err := keystore.Save(cfg.KeyFile, newKey); err != nil {
				return fmt.Errorf("write the new key: %w", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			err = control.RotateKey(ctx, cfg.StatusSocket)
			if errors.Is(err, control.ErrNotRunning) {
				err = publish(ctx, cfg, newKey)
			}
			if err != nil {
				return fmt.Errorf("%w (the new key is in %s, the old one in %s)", err, cfg.KeyFile, backup)
			}
			os.Remove(backup)
			fmt.Fprintf(cmd.OutOrStdout(), "rotated key of node %s: new public key %s (was %s)\n", cfg.NodeName, newKey.Public(), oldKey.Public())
			return nil
		},
	}
}

// publish publishes the node's entry with a new key when no agent runs,
// as the agent's own rotation does (catalogsync.Catalog.Publish: the entry,
// then its hint once the catalog shows it).
func publish(ctx context.Context, cfg *config.Config, key keystore.PrivateKey) error {
	signer, err := loadSigner(cfg, time.Now())
	if err != nil {
		return err
	}
	consul, err := consulClient(cfg)
	if err != nil {
		return err
	}
	var gw *gateway.Info
	if cfg.Gateway.Enabled {
		gwKey, err := keystore.Load(cfg.Gateway.KeyFile)
		if err != nil {
			return err
		}
		gw = gatewayInfo(cfg, gwKey)
	}
	cat := newCatalog(cfg, consul, nil, newLogger(cfg))
	defer cat.Wait()
	return cat.Publish(ctx, registration(cfg, key, gw, signer), false)
}
