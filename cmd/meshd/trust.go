package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/config"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/internal/atomicfile"
	"meshd.dev/meshd/keystore"
	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/trust"
)

// defaultValidFor is a credential's life when --valid-for is not given.
const defaultValidFor = 365 * 24 * time.Hour

// loadSigner reads this host's identity key and credential and checks
// them against the configuration before anything is touched: the
// credential must come from a trusted authority, be unexpired, name this
// node and prefix and this identity, and carry the gateway role on a
// gateway.
func loadSigner(cfg *config.Config, now time.Time) (*trust.Signer, error) {
	if err := cfg.RequireTrust(); err != nil {
		return nil, usage(err)
	}
	id, err := keystore.Load(cfg.Trust.IdentityKeyFile)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w (meshd init creates it)", err)
	}
	credential, err := readCredential(cfg.Trust.CredentialFile)
	if err != nil {
		return nil, err
	}
	seed := id.WG()
	s, err := trust.NewSigner(seed[:], credential)
	if err != nil {
		return nil, usage(fmt.Errorf("credential_file %s: %w", cfg.Trust.CredentialFile, err))
	}
	c, err := trust.VerifyCredential(credential, cfg.Trust.Authorities, now)
	if err != nil {
		return nil, usage(fmt.Errorf("credential_file %s: %w", cfg.Trust.CredentialFile, err))
	}
	switch {
	case c.Node != cfg.NodeName:
		return nil, usage(fmt.Errorf("credential_file %s: the credential is for node %q, this host is %q", cfg.Trust.CredentialFile, c.Node, cfg.NodeName))
	case cfg.Prefix.IsValid() && c.Prefix != cfg.Prefix:
		return nil, usage(fmt.Errorf("credential_file %s: the credential is for prefix %s, this host has %s", cfg.Trust.CredentialFile, c.Prefix, cfg.Prefix))
	case cfg.Gateway.Enabled && !slices.Contains(c.Roles, gateway.Tag):
		return nil, usage(fmt.Errorf("credential_file %s: gateway.enabled needs a credential with the gateway role (meshd authority sign --roles gateway)", cfg.Trust.CredentialFile))
	}
	return s, nil
}

// readCredential reads a credential file: the credential's bytes in
// base64, on one line.
func readCredential(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, usage(fmt.Errorf("credential_file %s does not exist: install this host's credential (meshd init --credential FILE)", path))
	}
	if err != nil {
		return nil, fmt.Errorf("read credential: %w", err)
	}
	c, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, usage(fmt.Errorf("credential_file %s: expected a base64 credential as meshd authority sign prints it", path))
	}
	return c, nil
}

// signRequest is what `meshd authority sign` reads: `meshd init --json`'s
// output (other fields are ignored).
type signRequest struct {
	Node     string `json:"node"`
	Prefix   string `json:"prefix"`
	Identity string `json:"identity"`
}

// credentialFor checks a request and issues its credential.
func credentialFor(a trust.AuthorityKey, req signRequest, roles []string, validFor time.Duration, now time.Time) ([]byte, error) {
	prefix, err := netip.ParsePrefix(req.Prefix)
	if err != nil {
		return nil, fmt.Errorf("request prefix %q: expected an IPv6 CIDR", req.Prefix)
	}
	id, err := trust.ParsePublicKey(req.Identity)
	if err != nil {
		return nil, fmt.Errorf("request identity: %w", err)
	}
	if validFor <= 0 {
		return nil, fmt.Errorf("--valid-for %s: expected a positive duration", validFor)
	}
	return a.Issue(trust.Credential{Node: req.Node, Prefix: prefix, Identity: id, Roles: roles,
		NotAfter: now.Add(validFor).Truncate(time.Second)})
}

// loadAuthority reads an authority key file (mode 0600).
func loadAuthority(path string) (trust.AuthorityKey, error) {
	k, err := keystore.Load(path)
	if err != nil {
		return trust.AuthorityKey{}, fmt.Errorf("authority key: %w", err)
	}
	seed := k.WG()
	return trust.AuthorityFromSeed(seed[:])
}

func newAuthorityCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "authority",
		Short: "The fleet authority: make its key, sign hosts' credentials",
		Long: "The fleet authority vouches for hosts: only entries under a credential it signed become\n" +
			"peers. Run these commands where the bootstrap service keeps its secrets, never on a mesh\n" +
			"host; hosts list the authority's public key in trust.authorities.",
	}
	cmd.AddCommand(newAuthorityInitCmd(), newAuthoritySignCmd(), newAuthorityRevokeCmd(), newAuthorityPublishCmd())
	return cmd
}

func newAuthorityInitCmd() *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make a fleet authority key and print its public key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" {
				return usage(errors.New("--key: expected the file to create the authority key in"))
			}
			if _, err := os.Lstat(keyFile); err == nil {
				return usage(fmt.Errorf("--key %s exists: an authority key is never overwritten", keyFile))
			}
			k, err := keystore.Generate()
			if err != nil {
				return err
			}
			if err := keystore.Save(keyFile, k); err != nil {
				return err
			}
			a, err := loadAuthority(keyFile)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(a.Public()))
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "file to create the authority key in (mode 0600)")
	return cmd
}

func newAuthoritySignCmd() *cobra.Command {
	var (
		keyFile  string
		roles    []string
		validFor time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Sign a host's credential: read its request (meshd init --json) on stdin, print the credential",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := loadAuthority(keyFile)
			if err != nil {
				return usage(err)
			}
			in, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			if err != nil {
				return err
			}
			var req signRequest
			dec := json.NewDecoder(bytes.NewReader(in))
			if err := dec.Decode(&req); err != nil {
				return usage(fmt.Errorf("request on stdin: expected the JSON that meshd init --json prints: %v", err))
			}
			c, err := credentialFor(a, req, roles, validFor, time.Now())
			if err != nil {
				return usage(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(c))
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "the authority key file")
	cmd.Flags().StringSliceVar(&roles, "roles", nil, "roles the host may take (gateway)")
	cmd.Flags().DurationVar(&validFor, "valid-for", defaultValidFor, "how long the credential is valid")
	return cmd
}

// installCredential checks a credential against this host (its node,
// prefix and identity) and writes it to credential_file.
func installCredential(cfg *config.Config, credential []byte, node string, prefix netip.Prefix, identity ed25519.PublicKey) error {
	c, _, err := trust.ParseCredential(credential)
	if err != nil {
		return usage(fmt.Errorf("credential: %w", err))
	}
	switch {
	case c.Node != node:
		return usage(fmt.Errorf("credential: it is for node %q, this host is %q", c.Node, node))
	case c.Prefix != prefix:
		return usage(fmt.Errorf("credential: it is for prefix %s, this host has %s", c.Prefix, prefix))
	case !c.Identity.Equal(identity):
		return usage(errors.New("credential: it is for another identity key than this host's"))
	}
	if len(cfg.Trust.Authorities) > 0 {
		if _, err := trust.VerifyCredential(credential, cfg.Trust.Authorities, time.Now()); err != nil {
			return usage(fmt.Errorf("credential: %w", err))
		}
	}
	return atomicfile.WriteFile(cfg.Trust.CredentialFile, []byte(base64.StdEncoding.EncodeToString(credential)+"\n"), 0o644)
}

func newAuthorityRevokeCmd() *cobra.Command {
	var (
		keyFile, node, identity string
		remove, initFolder      bool
	)
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke a node or an identity: every host removes its peer at once and refuses its entries",
		Long: "Sign a revocation of a node (--node) or of an identity key (--identity, base64) and\n" +
			"publish it in Consul KV under " + catalogsync.RevocationsPrefix + ", where every host reads it\n" +
			"within seconds: the node's peer and route go at once (no grace), and its entries are\n" +
			"refused until the revocation is withdrawn (--remove). Needs a Consul token with write\n" +
			"on that folder (hosts' tokens have read only).\n\n" +
			"--init only creates the folder (run it once per datacenter when setting up the fleet;\n" +
			"every revoke does it too): while the folder holds no key, Consul answers every host's\n" +
			"watch of it at every KV write in the datacenter.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if initFolder {
				if node != "" || identity != "" || remove {
					return usage(errors.New("--init: takes no --node, --identity or --remove"))
				}
				consul, err := consulClient(cfg)
				if err != nil {
					return err
				}
				created, err := catalogsync.EnsureRevocationsFolder(cmd.Context(), consul)
				if err != nil {
					return err
				}
				if created {
					fmt.Fprintf(cmd.OutOrStdout(), "created %s\n", catalogsync.RevocationsPrefix)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "%s is already there\n", catalogsync.RevocationsPrefix)
				}
				return nil
			}
			if (node == "") == (identity == "") {
				return usage(errors.New("--node or --identity: give exactly one"))
			}
			r := trust.Revocation{Node: node, Issued: time.Now().Truncate(time.Second)}
			key := catalogsync.RevocationsPrefix + "node-" + node
			if identity != "" {
				if r.Identity, err = trust.ParsePublicKey(identity); err != nil {
					return usage(fmt.Errorf("--identity: %w", err))
				}
				key = catalogsync.RevocationsPrefix + "identity-" + hex.EncodeToString(r.Identity)
			} else if !peers.IsDNSLabel(node) {
				return usage(fmt.Errorf("--node %q: expected a DNS label", node))
			}
			consul, err := consulClient(cfg)
			if err != nil {
				return err
			}
			if _, err := catalogsync.EnsureRevocationsFolder(cmd.Context(), consul); err != nil {
				return err
			}
			if remove {
				if _, err := consul.KV().Delete(key, nil); err != nil {
					return fmt.Errorf("withdraw the revocation %s: %w", key, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "withdrew %s\n", key)
				return nil
			}
			a, err := loadAuthority(keyFile)
			if err != nil {
				return usage(err)
			}
			b, err := a.Revoke(r)
			if err != nil {
				return usage(err)
			}
			if _, err := consul.KV().Put(&api.KVPair{Key: key, Value: b}, nil); err != nil {
				return fmt.Errorf("publish the revocation %s: %w", key, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published %s\n", key)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "the authority key file")
	cmd.Flags().StringVar(&node, "node", "", "the node to revoke")
	cmd.Flags().StringVar(&identity, "identity", "", "the identity public key (base64) to revoke")
	cmd.Flags().BoolVar(&remove, "remove", false, "withdraw the revocation instead")
	cmd.Flags().BoolVar(&initFolder, "init", false, "only create the revocations folder (once per datacenter)")
	return cmd
}

// publishRecord is one node that cannot run meshd, as `meshd authority
// publish --from` reads it (JSON lines).
type publishRecord struct {
	Node      string `json:"node"`
	PublicKey string `json:"public_key"`
	Endpoint  string `json:"endpoint"`
	Prefix    string `json:"prefix"`
	Keepalive string `json:"keepalive,omitempty"`
}

// signedFor is the registration of a node that cannot run meshd: the
// authority issues a credential to a one-time identity made here, which
// signs the entry; the identity's key is not kept (publishing again makes
// a new one, under a newer serial).
func signedFor(a trust.AuthorityKey, service string, rec publishRecord, validFor time.Duration, rules peers.Rules) (catalogsync.Registration, error) {
	meta := map[string]string{peers.MetaVersion: peers.SchemaVersion, peers.MetaNode: rec.Node, peers.MetaPublicKey: rec.PublicKey,
		peers.MetaEndpoint: rec.Endpoint, peers.MetaPrefix: rec.Prefix}
	if rec.Keepalive != "" {
		d, err := time.ParseDuration(rec.Keepalive)
		if err != nil {
			return catalogsync.Registration{}, fmt.Errorf("node %s: keepalive %q: expected a duration like 25s", rec.Node, rec.Keepalive)
		}
		meta[peers.MetaKeepalive] = fmt.Sprint(int(d / time.Second))
	}
	p, err := peers.ParseEntry(peers.Entry{ServiceID: catalogsync.ServiceID(rec.Node), Meta: meta}, peers.Rules{Supernet: rules.Supernet})
	if err != nil {
		return catalogsync.Registration{}, fmt.Errorf("node %q: %w", rec.Node, err)
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return catalogsync.Registration{}, err
	}
	c, err := a.Issue(trust.Credential{Node: p.Node, Prefix: p.Prefix, NotAfter: time.Now().Add(validFor).Truncate(time.Second),
		Identity: ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)})
	if err != nil {
		return catalogsync.Registration{}, err
	}
	s, err := trust.NewSigner(seed, c)
	if err != nil {
		return catalogsync.Registration{}, err
	}
	return catalogsync.Registration{Service: service, Node: p.Node, PublicKey: p.PublicKey, Endpoint: p.Endpoint,
		Prefix: p.Prefix, Keepalive: p.Keepalive, Signer: s, Serial: catalogsync.NewSerial(0)}, nil
}

func newAuthorityPublishCmd() *cobra.Command {
	var (
		keyFile, from string
		rec           publishRecord
		remove        bool
		validFor      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "publish",
		Short: "Publish signed entries for nodes that cannot run meshd (appliances, static routers)",
		Long: "Publish the entry of a node that cannot run meshd (an appliance, a router with a static\n" +
			"WireGuard configuration) as an external node of the catalog, signed under a credential\n" +
			"the authority issues to a one-time identity; --from FILE publishes many (JSON lines of\n" +
			"node, public_key, endpoint, prefix and optional keepalive) in transactions of 32.\n" +
			"--remove withdraws them. Needs a Consul token with node and service write.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			recs := []publishRecord{rec}
			if from != "" {
				if recs, err = readPublishRecords(from); err != nil {
					return usage(err)
				}
			} else if rec.Node == "" || (!remove && (rec.PublicKey == "" || rec.Endpoint == "" || rec.Prefix == "")) {
				return usage(errors.New("--node, --public-key, --endpoint and --prefix (or --from FILE): expected the node to publish"))
			}
			var ops api.TxnOps
			if remove {
				for _, r := range recs {
					ops = append(ops, &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceDelete, Node: r.Node,
						Service: api.AgentService{ID: catalogsync.ServiceID(r.Node), Service: cfg.Consul.Service}}})
				}
			} else {
				a, err := loadAuthority(keyFile)
				if err != nil {
					return usage(err)
				}
				for _, r := range recs {
					reg, err := signedFor(a, cfg.Consul.Service, r, validFor, cfg.Rules())
					if err != nil {
						return usage(err)
					}
					ops = append(ops,
						&api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: reg.Node, Address: reg.Endpoint.Addr().String()}}},
						&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: reg.Node, Service: api.AgentService{
							ID: reg.ID(), Service: reg.Service, Meta: reg.Meta(), Address: reg.Endpoint.Addr().String(), Port: int(reg.Endpoint.Port())}}})
				}
			}
			consul, err := consulClient(cfg)
			if err != nil {
				return err
			}
			for len(ops) > 0 {
				n := min(len(ops), 64)
				ok, resp, _, err := consul.Txn().Txn(ops[:n], nil)
				if err != nil {
					return fmt.Errorf("publish: %w", err)
				}
				if !ok {
					return fmt.Errorf("publish: the transaction was rolled back: %s", resp.Errors[0].What)
				}
				ops = ops[n:]
			}
			verb := "published"
			if remove {
				verb = "withdrew"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %d entries\n", verb, len(recs))
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "the authority key file")
	cmd.Flags().StringVar(&rec.Node, "node", "", "the node's name")
	cmd.Flags().StringVar(&rec.PublicKey, "public-key", "", "its WireGuard public key")
	cmd.Flags().StringVar(&rec.Endpoint, "endpoint", "", "its underlay ip:port")
	cmd.Flags().StringVar(&rec.Prefix, "prefix", "", "its prefix inside mesh_supernet")
	cmd.Flags().StringVar(&rec.Keepalive, "keepalive", "", "keepalive other hosts use toward it (at least 10s)")
	cmd.Flags().StringVar(&from, "from", "", "publish the nodes of this file (JSON lines)")
	cmd.Flags().BoolVar(&remove, "remove", false, "withdraw the entries instead")
	cmd.Flags().DurationVar(&validFor, "valid-for", defaultValidFor, "how long the credentials are valid")
	return cmd
}

// readPublishRecords reads JSON lines of publishRecord.
func readPublishRecords(path string) ([]publishRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	var recs []publishRecord
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	for line := 1; dec.More(); line++ {
		var r publishRecord
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("--from %s: record %d: expected {\"node\", \"public_key\", \"endpoint\", \"prefix\"}: %v", path, line, err)
		}
		recs = append(recs, r)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("--from %s: no records", path)
	}
	return recs, nil
}
