package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/config"
	"meshd.dev/meshd/keystore"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/prefixalloc"
	"meshd.dev/meshd/trust"
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
	// Identity is the host's identity public key, which its credential
	// binds; CredentialInstalled says whether this run installed one.
	Identity            string `json:"identity"`
	IdentityKeyFile     string `json:"identity_key_file"`
	CredentialInstalled bool   `json:"credential_installed"`
}

// initTrust is how init gets this host's credential: installed from a
// file, or signed here with an authority key that is not stored.
type initTrust struct {
	credentialFile string
	authorityKey   string
	roles          []string
	validFor       time.Duration
}

func newInitCmd() *cobra.Command {
	var asJSON bool
	var it initTrust
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Bootstrap this host: create its key, claim a prefix, write the config file",
		Long: "Bootstrap this host as a mesh member. Creates the private key if missing, claims a\n" +
			"free prefix inside mesh_supernet with a Consul KV check-and-set (or confirms the\n" +
			"configured one), takes the endpoint from --endpoint or the default route's source\n" +
			"address, and adds node_name, endpoint and prefix to the config file without touching\n" +
			"anything an operator already set there. Running it again changes nothing.\n\n" +
			"It also creates the host's identity key, whose public key (\"identity\" in --json) the\n" +
			"fleet authority signs into the host's credential (meshd authority sign); --credential\n" +
			"installs that credential, and --authority-key signs it here in one step (labs) without\n" +
			"storing the authority key on the host.",
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
			if it.credentialFile != "" && it.authorityKey != "" {
				return usage(errors.New("--credential and --authority-key: give one, not both"))
			}
			res, err := runInit(cmd.Context(), cfg, path, it)
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
	cmd.Flags().StringVar(&it.credentialFile, "credential", "", "install this credential (meshd authority sign's output) as credential_file")
	cmd.Flags().StringVar(&it.authorityKey, "authority-key", "", "sign this host's credential with this authority key file (not stored) and trust that authority")
	cmd.Flags().StringSliceVar(&it.roles, "roles", nil, "with --authority-key: roles of the credential (gateway)")
	cmd.Flags().DurationVar(&it.validFor, "valid-for", defaultValidFor, "with --authority-key: how long the credential is valid")
	return cmd
}

func runInit(ctx context.Context, cfg *config.Config, path string, it initTrust) (initResult, error) {
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
	id, _, err := keystore.LoadOrCreate(cfg.Trust.IdentityKeyFile)
	if err != nil {
		return res, fmt.Errorf("identity key: %w", err)
	}
	seed := id.WG()
	identity, err := trust.IdentityPublic(seed[:])
	if err != nil {
		return res, err
	}
	res.Identity, res.IdentityKeyFile = base64.StdEncoding.EncodeToString(identity), cfg.Trust.IdentityKeyFile
	// Read before anything is claimed: a bad file or key stops init here.
	var credential []byte
	var authority *trust.AuthorityKey
	switch {
	case it.credentialFile != "":
		if credential, err = readCredential(it.credentialFile); err != nil {
			return res, err
		}
	case it.authorityKey != "":
		a, err := loadAuthority(it.authorityKey)
		if err != nil {
			return res, usage(err)
		}
		authority = &a
	}

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

	settings := []config.Setting{
		{Key: "node_name", Value: cfg.NodeName},
		{Key: "endpoint", Value: res.Endpoint},
		{Key: "prefix", Value: res.Prefix},
	}
	if authority != nil {
		req := signRequest{Node: cfg.NodeName, Prefix: res.Prefix, Identity: res.Identity}
		if credential, err = credentialFor(*authority, req, it.roles, it.validFor, time.Now()); err != nil {
			return res, usage(err)
		}
		if len(cfg.Trust.Authorities) == 0 {
			cfg.Trust.Authorities = []ed25519.PublicKey{authority.Public()}
			settings = append(settings, config.Setting{Key: "trust.authorities", Value: base64.StdEncoding.EncodeToString(authority.Public())})
		}
	}
	if credential != nil {
		if err := installCredential(cfg, credential, cfg.NodeName, prefix, identity); err != nil {
			return res, err
		}
		res.CredentialInstalled = true
	}
	res.Added, err = config.AddMissing(path, settings)
	if res.Added == nil {
		res.Added = []string{}
	}
	return res, err
}
