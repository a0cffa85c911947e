package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/config"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/peers"
)

func newGatewayCmd() *cobra.Command {
	gw := &cobra.Command{
		Use:   "gateway",
		Short: "End users' WireGuard peers on gateway nodes",
		Args:  cobra.NoArgs,
	}
	peer := &cobra.Command{
		Use:   "peer",
		Short: "Create, list and remove users' peers on a gateway",
		Args:  cobra.NoArgs,
	}
	peer.AddCommand(newGatewayPeerCreateCmd(), newGatewayPeerListCmd(), newGatewayPeerRemoveCmd())
	gw.AddCommand(peer)
	return gw
}

// peerJSON is the --json form of one peer.
type peerJSON struct {
	Gateway   string     `json:"gateway"`
	Org       string     `json:"org"`
	Name      string     `json:"name"`
	Address   string     `json:"address"`
	PublicKey string     `json:"public_key"`
	Allow     []string   `json:"allow"`
	Created   time.Time  `json:"created"`
	Expires   *time.Time `json:"expires,omitempty"`
	// State is "active" or "expired" (list), or why the record is
	// rejected.
	State string `json:"state,omitempty"`
	// Config is the wg-quick configuration (create only).
	Config string `json:"config,omitempty"`
}

func toJSON(gw string, r gateway.Record) peerJSON {
	allow := make([]string, len(r.Allow))
	for i, p := range r.Allow {
		allow[i] = p.String()
	}
	addr := ""
	if r.Address.IsValid() {
		addr = r.Address.String()
	}
	return peerJSON{Gateway: gw, Org: r.Org, Name: r.Name, Address: addr, PublicKey: r.PublicKey, Allow: allow, Created: r.Created, Expires: r.Expires}
}

// peerFlags are the flags naming one peer.
type peerFlags struct {
	gateway, org, name string
}

func (f *peerFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.gateway, "gateway", "", "node name of the gateway (required)")
	cmd.Flags().StringVar(&f.org, "org", "", "organization the peer belongs to, a DNS label (required)")
	cmd.Flags().StringVar(&f.name, "name", "", "peer name, a DNS label unique per gateway and org (required)")
}

// check validates the names: a bad one is bad input. --org and --name are
// optional where needName is false (list).
func (f *peerFlags) check(needName bool) error {
	for _, x := range []struct {
		flag, val string
		optional  bool
	}{{"gateway", f.gateway, false}, {"org", f.org, !needName}, {"name", f.name, !needName}} {
		if x.optional && x.val == "" {
			continue
		}
		if !peers.IsDNSLabel(x.val) {
			return flagError(x.flag, x.val, "a DNS label (lower-case letters, digits and '-', up to 63)")
		}
	}
	return nil
}

// open loads the configuration, checks the flags and connects to Consul.
func (f *peerFlags) open(cmd *cobra.Command, needName bool) (*config.Config, *api.Client, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, nil, err
	}
	if err := f.check(needName); err != nil {
		return nil, nil, err
	}
	consul, err := consulClient(cfg)
	return cfg, consul, err
}

// flagError is bad input on a command-line flag, in the same one-line form
// as a bad configuration value.
func flagError(flag, val, expected string) error {
	return usage(fmt.Errorf("--%s %q: expected %s", flag, val, expected))
}

// gatewayError marks the errors of gateway operations that are the user's
// to fix as bad input.
func gatewayError(err error) error {
	for _, target := range []error{gateway.ErrUnknownGateway, gateway.ErrNameTaken, gateway.ErrExhausted, gateway.ErrNotFound} {
		if errors.Is(err, target) {
			return usage(err)
		}
	}
	return err
}

func newGatewayPeerCreateCmd() *cobra.Command {
	var (
		f        peerFlags
		pubKey   string
		allow    []string
		expires  time.Duration
		replace  bool
		asJSON   bool
		deadline = 30 * time.Second
	)
	cmd := &cobra.Command{
		Use:   "create --gateway NODE --org ORG --name NAME [--public-key KEY] [--allow CIDR ...] [--expires DURATION]",
		Short: "Create a user peer on a gateway and print its wg-quick configuration",
		Long: "Create a user peer on a gateway: claim a free address in the gateway's pool, write the\n" +
			"peer's record, and print a ready wg-quick configuration. Without --public-key a key pair\n" +
			"is generated; its private key appears only in the printed configuration. --allow lists\n" +
			"the destinations the peer may reach (default: the mesh supernet, which reaches mesh hosts\n" +
			"only), enforced on the gateway: user pools and gateway hosts are reached only where a\n" +
			"CIDR inside them is named, and in a pool only the peer's own organization. Runs anywhere\n" +
			"with Consul access; bad input writes nothing and exits 2.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, consul, err := f.open(cmd, true)
			if err != nil {
				return err
			}
			req := gateway.Request{Org: f.org, Name: f.name, Expires: expires, Replace: replace}
			if expires < 0 {
				return flagError("expires", expires.String(), "a positive duration like 24h")
			}
			var priv *wgtypes.Key
			if pubKey != "" {
				k, err := peers.ParsePublicKey(pubKey)
				if err != nil {
					return flagError("public-key", pubKey, "a base64 WireGuard public key of 32 bytes")
				}
				req.PublicKey = k
			} else {
				k, err := wgtypes.GeneratePrivateKey()
				if err != nil {
					return err
				}
				priv, req.PublicKey = &k, k.PublicKey()
			}
			if req.Allow, err = parseAllow(allow, cfg.MeshSupernet); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), deadline)
			defer cancel()
			info, err := gateway.Lookup(ctx, consul, cfg.Consul.Service, f.gateway, cfg.Rules())
			if err != nil {
				return gatewayError(err)
			}
			rec, err := gateway.Create(ctx, consul, info, req, time.Now())
			if errors.Is(err, gateway.ErrNotAnnounced) {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", err)
			} else if err != nil {
				return gatewayError(err)
			}
			conf := gateway.WGQuick(rec, info, priv)
			if asJSON {
				out := toJSON(f.gateway, rec)
				out.Config = conf
				return writeJSON(cmd.OutOrStdout(), out)
			}
			_, err = io.WriteString(cmd.OutOrStdout(), conf)
			return err
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&pubKey, "public-key", "", "the peer's public key (default: generate a key pair)")
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "destination CIDR the peer may reach, repeatable (default: mesh_supernet: mesh hosts only; pools and gateway hosts where named)")
	cmd.Flags().DurationVar(&expires, "expires", 0, "lifetime of the peer, like 24h (default: no expiry)")
	cmd.Flags().BoolVar(&replace, "replace", false, "replace a peer of the same name, keeping its address")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the record and the configuration as JSON")
	return cmd
}

// parseAllow reads --allow values: masked IPv6 CIDRs inside the supernet;
// none means the whole supernet.
func parseAllow(vals []string, supernet netip.Prefix) ([]netip.Prefix, error) {
	if len(vals) == 0 {
		return []netip.Prefix{supernet}, nil
	}
	if len(vals) > gateway.MaxAllow {
		return nil, flagError("allow", strings.Join(vals, ","), fmt.Sprintf("at most %d CIDRs", gateway.MaxAllow))
	}
	var out []netip.Prefix
	for _, v := range vals {
		p, err := peers.ParseIPv6Prefix(v)
		if err != nil {
			return nil, flagError("allow", v, "an IPv6 CIDR without host bits inside the mesh supernet "+supernet.String())
		}
		if err := gateway.CheckAllow([]netip.Prefix{p}, supernet); err != nil {
			return nil, flagError("allow", v, "a CIDR inside the mesh supernet "+supernet.String())
		}
		out = append(out, p)
	}
	return out, nil
}

func newGatewayPeerListCmd() *cobra.Command {
	var (
		f      peerFlags
		asJSON bool
		limit  int
		after  string
	)
	cmd := &cobra.Command{
		Use:   "list --gateway NODE [--org ORG] [--limit N] [--after ORG/NAME]",
		Short: "List the user peers of a gateway",
		Long: "List the user peers of a gateway from their records: address, key, allowed destinations,\n" +
			"expiry, and whether each is active, expired (the gateway deletes it) or rejected (and why).\n" +
			"Peers come in ORG/NAME order, --limit at a time (default 100; 0 lists all); --after\n" +
			"ORG/NAME starts after that peer (the next page).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return usage(fmt.Errorf("--limit %d: expected 0 (all) or a positive number of peers", limit))
			}
			if org, name, ok := strings.Cut(after, "/"); after != "" && (!ok || !peers.IsDNSLabel(org) || !peers.IsDNSLabel(name)) {
				return usage(fmt.Errorf("--after %q: expected ORG/NAME of a peer, like acme/laptop", after))
			}
			_, consul, err := f.open(cmd, false)
			if err != nil {
				return err
			}
			pairs, err := gateway.ListOrg(cmd.Context(), consul, f.gateway, f.org)
			if err != nil {
				return err
			}
			now := time.Now()
			rows := []peerJSON{}
			more := 0
			for _, p := range pairs {
				id := strings.TrimPrefix(p.Key, gateway.PeersKey(f.gateway))
				if after != "" && id <= after {
					continue
				}
				if limit > 0 && len(rows) == limit {
					more++
					continue
				}
				r, err := gateway.Decode(f.gateway, p.Key, p.Value)
				row := toJSON(f.gateway, r)
				switch {
				case err != nil:
					org, name, _ := strings.Cut(id, "/")
					row.Org, row.Name, row.State = org, name, "rejected: "+err.Error()
				case r.Expired(now):
					row.State = "expired"
				default:
					row.State = "active"
				}
				rows = append(rows, row)
			}
			if more > 0 {
				last := rows[len(rows)-1]
				fmt.Fprintf(cmd.ErrOrStderr(), "%d more peers: --after %s/%s for the next page, --limit 0 for all\n", more, last.Org, last.Name)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), rows)
			}
			printPeers(cmd.OutOrStdout(), rows, now)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the peers as a JSON array")
	cmd.Flags().IntVar(&limit, "limit", 100, "most peers to list (0: all)")
	cmd.Flags().StringVar(&after, "after", "", "list the peers after ORG/NAME (the next page)")
	return cmd
}

func printPeers(w io.Writer, rows []peerJSON, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tADDRESS\tPUBLIC KEY\tALLOW\tEXPIRES\tSTATE")
	for _, r := range rows {
		exp := "never"
		if r.Expires != nil {
			exp = "in " + r.Expires.Sub(now).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\n", r.Org, r.Name, or(r.Address, "-"), or(r.PublicKey, "-"),
			clipText(strings.Join(r.Allow, ","), 40), exp, clipText(r.State, 60))
	}
	tw.Flush()
}

func newGatewayPeerRemoveCmd() *cobra.Command {
	var (
		f      peerFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "remove --gateway NODE --org ORG --name NAME",
		Short: "Remove a user peer from a gateway and free its address",
		Long: "Remove a user peer: its record and its address claim go in one transaction; the gateway\n" +
			"then removes the peer from its user link and firewall at once.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, consul, err := f.open(cmd, true)
			if err != nil {
				return err
			}
			rec, err := gateway.Remove(cmd.Context(), consul, f.gateway, f.org, f.name)
			if errors.Is(err, gateway.ErrNotAnnounced) {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", err)
			} else if err != nil {
				return gatewayError(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), toJSON(f.gateway, rec))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed peer %s from gateway %s (address %s freed)\n", rec.ID(), f.gateway, rec.Address)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the removed record as JSON")
	return cmd
}
