package config

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/prefixalloc"
	"meshd.dev/meshd/trust"
)

// DefaultPath is where meshd looks for its file when --config is not given.
const DefaultPath = "/etc/meshd/meshd.yaml"

// Config is meshd's validated configuration.
type Config struct {
	NodeName     string
	Interface    string
	ListenPort   int
	Endpoint     netip.AddrPort // zero when not set
	Prefix       netip.Prefix   // zero when not set
	MeshSupernet netip.Prefix
	MTU          int
	// WireGuard is the link backend: auto, kernel or userspace.
	WireGuard          string
	Keepalive          time.Duration
	KeyFile            string
	StateDir           string
	StatusSocket       string
	MetricsAddress     string
	RemovalGrace       time.Duration
	MaxRemovalFraction float64
	MaxPeers           int
	ResyncInterval     time.Duration
	LogLevel           string
	LogFormat          string
	Consul             Consul
	Gateway            Gateway
	Trust              Trust

	// File is the configuration file that was read, or "" if none.
	File string
}

// Consul says how to reach the local Consul agent. Empty values fall back
// to the standard CONSUL_HTTP_* variables, then to Consul's defaults.
type Consul struct {
	Address    string
	Token      string
	TokenFile  string
	Service    string
	Datacenter string
	// HintKey is the KV key that announces a changed entry (empty: no
	// hints).
	HintKey string
	// MaxStale refuses a catalog list from a server that last heard from
	// its leader longer ago (key catalog.max_stale).
	MaxStale time.Duration
	// FullReadInterval spaces reads of the whole list when hints carry the
	// changes (key catalog.full_read_interval).
	FullReadInterval time.Duration
}

// Trust says whose word makes an entry a peer, and how this host signs
// its own.
type Trust struct {
	// Authorities are the fleet authorities' public keys (key
	// trust.authorities): an entry is used only under a credential one of
	// them signed.
	Authorities []ed25519.PublicKey
	// IdentityKeyFile holds this host's identity seed (mode 0600), and
	// CredentialFile the credential an authority issued for it.
	IdentityKeyFile string
	CredentialFile  string
}

// Gateway configures the user-peer link of a gateway node.
type Gateway struct {
	Enabled    bool
	Interface  string
	ListenPort int
	KeyFile    string
	// Pool is where users' addresses come from; zero until the prefix is
	// known, then the default when not set.
	Pool netip.Prefix
	// JIT holds in the kernel only the users that handshook within
	// IdleTimeout (gateway.jit, gateway.idle_timeout).
	JIT         bool
	IdleTimeout time.Duration
}

// Key is one configuration key.
type Key struct {
	Name    string
	Default string
	Usage   string
}

// Flag is the command-line flag of a key: "consul.token_file" is
// --consul-token-file.
func (k Key) Flag() string { return strings.NewReplacer(".", "-", "_", "-").Replace(k.Name) }

// Env is the environment variable of a key: MESHD_CONSUL_TOKEN_FILE.
func (k Key) Env() string { return "MESHD_" + strings.ToUpper(strings.ReplaceAll(k.Name, ".", "_")) }

// Keys lists every configuration key with its default.
var Keys = []Key{
	{"node_name", "", "mesh node name, a DNS label (default: the host name's first label)"},
	{"interface", "wg0", "WireGuard interface name"},
	{"listen_port", "51820", "WireGuard UDP listen port"},
	{"endpoint", "", "underlay ip:port that peers send to (required by run)"},
	{"prefix", "", "this host's 6PN prefix, an IPv6 CIDR inside mesh_supernet (required by run)"},
	{"mesh_supernet", "fdaa::/16", "IPv6 supernet holding every node's prefix"},
	{"mtu", "1420", "MTU of the WireGuard interface (1280-9000)"},
	{"wireguard", "auto", "WireGuard backend of meshd's links: auto (the kernel module where it exists, else a userspace device), kernel or userspace"},
	{"keepalive", "25s", "persistent keepalive other hosts use toward this one (0 turns it off); published in the catalog"},
	{"key_file", "", "private key file, mode 0600 (default: <state_dir>/private.key)"},
	{"state_dir", "/var/lib/meshd", "directory for the key and saved state"},
	{"status_socket", "/run/meshd/meshd.sock", "unix socket of the running agent (status, leave)"},
	{"metrics_address", "127.0.0.1:9474", "host:port of the Prometheus metrics listener"},
	{"removal_grace", "5m", "how long a node gone from the catalog keeps its peer"},
	{"max_removal_fraction", "0.5", "fraction of peers whose pending removal trips the circuit breaker"},
	{"max_peers", "25000", "most peers this host holds; entries past it (the newest registrations) are rejected"},
	{"resync_interval", "30s", "how often the kernel is compared with the catalog even without events"},
	{"log_level", "info", "debug, info, warn or error"},
	{"log_format", "text", "text or json"},
	{"consul.address", "", "local Consul agent address (default: CONSUL_HTTP_ADDR, then 127.0.0.1:8500)"},
	{"consul.token", "", "Consul ACL token (default: CONSUL_HTTP_TOKEN)"},
	{"consul.token_file", "", "file holding the Consul ACL token (default: CONSUL_HTTP_TOKEN_FILE)"},
	{"consul.service", "meshd", "Consul service every meshd registers"},
	{"consul.datacenter", "", "Consul datacenter (default: the agent's)"},
	{"consul.hint_key", "meshd/hint", "Consul KV key announcing a changed entry, so peers read just that entry (empty: off)"},
	{"trust.authorities", "", "fleet authority public keys (base64, comma-separated or a YAML list) whose credentials make entries peers (required by run)"},
	{"identity_key_file", "", "this host's identity key file, mode 0600 (default: <state_dir>/identity.key)"},
	{"credential_file", "", "this host's credential from the authority (default: <state_dir>/credential)"},
	{"catalog.full_read_interval", "60s", "with hints on, the whole list is read about this often (and at once when hints were missed); changes come as hints"},
	{"catalog.max_stale", "30s", "a catalog list from a server that last heard from its leader longer ago is not applied"},
	{"gateway.enabled", "false", "run the gateway link for end users' peers"},
	{"gateway.interface", "wg-gw", "WireGuard interface for end users' peers"},
	{"gateway.listen_port", "51821", "UDP listen port of the gateway interface"},
	{"gateway.key_file", "", "private key file of the gateway interface, mode 0600 (default: <state_dir>/gateway.key)"},
	{"gateway.pool", "", "IPv6 CIDR inside prefix that users' addresses come from (default: the upper half of prefix)"},
	{"gateway.jit", "true", "hold a user's peer in the kernel only from its handshake until it is idle for gateway.idle_timeout (records stay in Consul)"},
	{"gateway.idle_timeout", "10m", "with gateway.jit, a user peer that received nothing (not even a keepalive) for this long leaves the kernel (10s-24h)"},
}

// Error is a bad configuration value.
type Error struct {
	Key      string
	Value    string
	Expected string
}

func (e *Error) Error() string {
	return fmt.Sprintf("config: %s = %q: expected %s", e.Key, clip(e.Value), e.Expected)
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// AddFlags declares a flag for every key on fs.
func AddFlags(fs *pflag.FlagSet) {
	for _, k := range Keys {
		fs.String(k.Flag(), "", k.Usage+" (key "+k.Name+", env "+k.Env()+")")
	}
}

// Load reads the configuration. path is the --config value: "" means
// DefaultPath, which may be missing; an explicit path must exist. flags
// holds the flags of AddFlags; only flags the user set override. warnings
// lists unknown keys in the file (ignored, not fatal).
func Load(path string, flags *pflag.FlagSet) (cfg *Config, warnings []string, err error) {
	return load(path, flags, false)
}

// LoadToWrite is Load for the command that writes the configuration
// (`meshd init`): an explicit path that does not exist yet is an empty
// file, which that command then creates.
func LoadToWrite(path string, flags *pflag.FlagSet) (cfg *Config, warnings []string, err error) {
	return load(path, flags, true)
}

func load(path string, flags *pflag.FlagSet, missingOK bool) (cfg *Config, warnings []string, err error) {
	v := viper.New()
	v.SetConfigType("yaml")
	for _, k := range Keys {
		v.SetDefault(k.Name, k.Default)
		if err := v.BindEnv(k.Name, k.Env()); err != nil {
			return nil, nil, err
		}
		if flags != nil {
			if f := flags.Lookup(k.Flag()); f != nil {
				if err := v.BindPFlag(k.Name, f); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	file := path
	if file == "" {
		file = DefaultPath
	}
	b, err := os.ReadFile(file)
	switch {
	case err == nil:
		if err := v.ReadConfig(strings.NewReader(string(b))); err != nil {
			return nil, nil, fmt.Errorf("config: %s is not valid YAML: %s", file, oneLine(err))
		}
		warnings = unknownKeys(v, file)
	case errors.Is(err, fs.ErrNotExist) && path == "":
		file = ""
	case errors.Is(err, fs.ErrNotExist) && missingOK:
		// file stays: the command writes it
	default:
		return nil, nil, fmt.Errorf("config: read %s: %w", file, err)
	}
	cfg, err = parse(v)
	if err != nil {
		return nil, warnings, err
	}
	cfg.File = file
	return cfg, append(warnings, secretWarnings(cfg, flags)...), nil
}

// secretWarnings are the ways the Consul token can leak: a token file
// others may read, and a token on the command line (every local user sees
// it in ps). Warnings, not errors: the operator may have reasons, and
// refusing would stop a running fleet's restarts.
func secretWarnings(cfg *Config, flags *pflag.FlagSet) []string {
	var out []string
	if flags != nil && flags.Changed("consul-token") {
		out = append(out, "--consul-token shows the token to every local user (ps); set consul.token_file or CONSUL_HTTP_TOKEN_FILE instead")
	}
	if f := cfg.Consul.TokenFile; f != "" {
		if st, err := os.Stat(f); err == nil && st.Mode().Perm()&0o077 != 0 {
			out = append(out, fmt.Sprintf("consul.token_file %s has mode %04o: readable by others; chmod 600 it", f, st.Mode().Perm()))
		}
	}
	return out
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

func unknownKeys(v *viper.Viper, file string) []string {
	var out []string
	for _, k := range v.AllKeys() {
		if !slices.ContainsFunc(Keys, func(key Key) bool { return key.Name == k }) {
			out = append(out, fmt.Sprintf("config: %s: unknown key %q ignored", file, k))
		}
	}
	slices.Sort(out)
	return out
}

// parse reads and validates every key.
func parse(v *viper.Viper) (*Config, error) {
	p := parser{v: v}
	c := &Config{
		NodeName:           p.nodeName("node_name"),
		Interface:          p.ifname("interface"),
		ListenPort:         p.port("listen_port"),
		MeshSupernet:       p.supernet("mesh_supernet"),
		MTU:                p.intRange("mtu", 1280, 9000),
		Keepalive:          p.keepalive("keepalive"),
		StateDir:           p.path("state_dir"),
		StatusSocket:       p.path("status_socket"),
		MetricsAddress:     p.hostPort("metrics_address"),
		RemovalGrace:       p.duration("removal_grace", 0),
		MaxRemovalFraction: p.fraction("max_removal_fraction"),
		MaxPeers:           p.intRange("max_peers", 1, 1_000_000),
		ResyncInterval:     p.duration("resync_interval", time.Second),
		LogLevel:           p.oneOf("log_level", "debug", "info", "warn", "error"),
		LogFormat:          p.oneOf("log_format", "text", "json"),
		WireGuard:          p.oneOf("wireguard", "auto", "kernel", "userspace"),
		Consul: Consul{
			Address:    p.str("consul.address"),
			Token:      p.str("consul.token"),
			TokenFile:  p.readableFile("consul.token_file"),
			Service:    p.serviceName("consul.service"),
			Datacenter: p.str("consul.datacenter"),
			HintKey:    p.kvKey("consul.hint_key"),
			MaxStale:   p.duration("catalog.max_stale", time.Second),
			// Consul ends a blocking query after 10 minutes at most.
			FullReadInterval: p.durationBetween("catalog.full_read_interval", time.Second, 10*time.Minute),
		},
		Gateway: Gateway{
			Enabled:     p.boolean("gateway.enabled"),
			Interface:   p.ifname("gateway.interface"),
			ListenPort:  p.port("gateway.listen_port"),
			KeyFile:     p.path("gateway.key_file"),
			JIT:         p.boolean("gateway.jit"),
			IdleTimeout: p.durationBetween("gateway.idle_timeout", 10*time.Second, 24*time.Hour),
		},
	}
	c.Endpoint = p.endpoint("endpoint")
	c.Prefix = p.prefix("prefix", c.MeshSupernet)
	c.KeyFile = p.path("key_file")
	c.Gateway.Pool = p.cidr("gateway.pool")
	c.Trust.Authorities = p.authorities("trust.authorities")
	c.Trust.IdentityKeyFile = p.path("identity_key_file")
	c.Trust.CredentialFile = p.path("credential_file")
	if p.err != nil {
		return nil, p.err
	}
	if c.Trust.IdentityKeyFile == "" {
		c.Trust.IdentityKeyFile = filepath.Join(c.StateDir, "identity.key")
	}
	if c.Trust.CredentialFile == "" {
		c.Trust.CredentialFile = filepath.Join(c.StateDir, "credential")
	}
	if c.KeyFile == "" {
		c.KeyFile = filepath.Join(c.StateDir, "private.key")
	}
	if c.Gateway.KeyFile == "" {
		c.Gateway.KeyFile = filepath.Join(c.StateDir, "gateway.key")
	}
	if c.Gateway.Enabled {
		switch {
		case c.Gateway.Interface == c.Interface:
			return nil, &Error{"gateway.interface", c.Gateway.Interface, "a name other than interface's"}
		case c.Gateway.ListenPort == c.ListenPort:
			return nil, &Error{"gateway.listen_port", strconv.Itoa(c.Gateway.ListenPort), "a port other than listen_port's"}
		case c.Gateway.KeyFile == c.KeyFile:
			return nil, &Error{"gateway.key_file", c.Gateway.KeyFile, "a file other than key_file's (the user link has its own key)"}
		}
	}
	if c.Prefix.IsValid() {
		if !c.Gateway.Pool.IsValid() {
			c.Gateway.Pool = prefixalloc.DefaultPool(c.Prefix)
		} else if err := prefixalloc.ValidatePool(c.Gateway.Pool, c.Prefix); err != nil {
			return nil, &Error{"gateway.pool", c.Gateway.Pool.String(), "a pool of users' addresses inside prefix " + c.Prefix.String() + " (" + err.Error() + ")"}
		}
	}
	return c, nil
}

// RequireNode checks that the node has a name: node_name, or a host name
// that is a DNS label.
func (c *Config) RequireNode() error {
	if c.NodeName == "" {
		return &Error{"node_name", "", "a DNS label (the host name is not one; set node_name or --node-name)"}
	}
	return nil
}

// RequireMember checks the keys a mesh member must have (run, rotate-key).
func (c *Config) RequireMember() error {
	if err := c.RequireNode(); err != nil {
		return err
	}
	switch {
	case !c.Endpoint.IsValid():
		return &Error{"endpoint", "", "this host's underlay ip:port, e.g. 192.0.2.10:51820"}
	case !c.Prefix.IsValid():
		return &Error{"prefix", "", "this host's IPv6 prefix inside " + c.MeshSupernet.String() + ", e.g. " + exampleIn(c.MeshSupernet)}
	}
	return nil
}

// RequireTrust checks that at least one authority is trusted: there is no
// unsigned mode (run, mesh, gateway, rotate-key).
func (c *Config) RequireTrust() error {
	if len(c.Trust.Authorities) == 0 {
		return &Error{"trust.authorities", "", "at least one authority public key (base64), as `meshd authority init` prints it"}
	}
	return nil
}

// MeshAddress is the host's address on the mesh: the first host address of
// its prefix.
func (c *Config) MeshAddress() netip.Addr { return c.Prefix.Addr().Next() }

// Rules are the limits node entries must respect.
func (c *Config) Rules() peers.Rules {
	return peers.Rules{Supernet: c.MeshSupernet, Trust: &peers.Trust{Authorities: c.Trust.Authorities}}
}

func exampleIn(p netip.Prefix) string {
	if !p.IsValid() || p.Bits() >= 112 {
		return "fdaa:0:1::/48"
	}
	bits := max(48, p.Bits()+8)
	a := p.Addr().As16()
	a[bits/8-1] |= 1
	return netip.PrefixFrom(netip.AddrFrom16(a), bits).Masked().String()
}

// parser collects the first error and turns every value into its type.
type parser struct {
	v   *viper.Viper
	err error
}

func (p *parser) fail(key, val, expected string) {
	if p.err == nil {
		p.err = &Error{key, val, expected}
	}
}

// raw returns the value as a string; YAML scalars of other types are
// printed back, so that `listen_port: 51820` and `"51820"` read alike.
func (p *parser) raw(key string) string {
	switch x := p.v.Get(key).(type) {
	case nil:
		return ""
	case string:
		return strings.TrimSpace(x)
	case int, int64, float64, bool:
		return fmt.Sprint(x)
	default:
		p.fail(key, fmt.Sprint(x), "a single value")
		return ""
	}
}

func (p *parser) str(key string) string { return p.raw(key) }

// authorities reads a list of base64 ed25519 public keys: a YAML list, or
// one string of keys separated by commas or spaces (env, flags).
func (p *parser) authorities(key string) []ed25519.PublicKey {
	var items []string
	switch x := p.v.Get(key).(type) {
	case nil:
	case string:
		items = strings.FieldsFunc(x, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	case []any:
		for _, it := range x {
			items = append(items, strings.TrimSpace(fmt.Sprint(it)))
		}
	default:
		p.fail(key, fmt.Sprint(x), "a list of base64 ed25519 public keys")
		return nil
	}
	var out []ed25519.PublicKey
	for _, it := range items {
		k, err := trust.ParsePublicKey(it)
		if err != nil {
			p.fail(key, it, "base64 ed25519 public keys of 32 bytes, as `meshd authority init` prints them")
			return nil
		}
		out = append(out, k)
	}
	return out
}

func (p *parser) nodeName(key string) string {
	s := p.raw(key)
	if s == "" {
		h, err := os.Hostname()
		if err != nil {
			return ""
		}
		s, _, _ = strings.Cut(strings.ToLower(h), ".")
		if !peers.IsDNSLabel(s) {
			return ""
		}
		return s
	}
	if !peers.IsDNSLabel(s) {
		p.fail(key, s, "a DNS label: 1-63 lower-case letters, digits or '-', not starting or ending with '-'")
	}
	return s
}

func (p *parser) ifname(key string) string {
	s := p.raw(key)
	if s == "" || len(s) > 15 || strings.ContainsAny(s, "/: \t\n") || s == "." || s == ".." {
		p.fail(key, s, "an interface name of 1-15 characters without '/', ':' or spaces")
	}
	return s
}

func (p *parser) intRange(key string, lo, hi int) int {
	s := p.raw(key)
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		p.fail(key, s, fmt.Sprintf("a whole number from %d to %d", lo, hi))
	}
	return n
}

func (p *parser) port(key string) int { return p.intRange(key, 1, 65535) }

func (p *parser) duration(key string, minimum time.Duration) time.Duration {
	s := p.raw(key)
	d, err := time.ParseDuration(s)
	if err != nil || d < minimum {
		p.fail(key, s, fmt.Sprintf("a duration of at least %s, like 30s or 5m", minimum))
	}
	return d
}

func (p *parser) durationBetween(key string, lo, hi time.Duration) time.Duration {
	s := p.raw(key)
	d, err := time.ParseDuration(s)
	if err != nil || d < lo || d > hi {
		p.fail(key, s, fmt.Sprintf("a duration from %s to %s, like 60s", lo, hi))
	}
	return d
}

func (p *parser) keepalive(key string) time.Duration {
	s := p.raw(key)
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > 65535*time.Second || d%time.Second != 0 {
		p.fail(key, s, "whole seconds from 0s to 65535s, like 25s (0 turns it off)")
	}
	return d
}

func (p *parser) fraction(key string) float64 {
	s := p.raw(key)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f > 0 && f <= 1) {
		p.fail(key, s, "a fraction greater than 0 and at most 1, like 0.5")
	}
	return f
}

func (p *parser) boolean(key string) bool {
	s := p.raw(key)
	b, err := strconv.ParseBool(s)
	if err != nil {
		p.fail(key, s, "true or false")
	}
	return b
}

func (p *parser) oneOf(key string, allowed ...string) string {
	s := p.raw(key)
	if !slices.Contains(allowed, s) {
		p.fail(key, s, "one of "+strings.Join(allowed, ", "))
	}
	return s
}

func (p *parser) path(key string) string {
	s := p.raw(key)
	if s != "" && !filepath.IsAbs(s) {
		p.fail(key, s, "an absolute path")
	}
	return s
}

func (p *parser) readableFile(key string) string {
	s := p.path(key)
	if s == "" || p.err != nil {
		return s
	}
	f, err := os.Open(s)
	if err != nil {
		p.fail(key, s, "a readable file ("+strings.TrimPrefix(err.Error(), "open "+s+": ")+")")
		return s
	}
	f.Close()
	return s
}

func (p *parser) serviceName(key string) string {
	s := p.raw(key)
	if !peers.IsDNSLabel(s) {
		p.fail(key, s, "a Consul service name: lower-case letters, digits and '-'")
	}
	return s
}

// kvKey is a Consul KV key of DNS-label segments separated by '/', or
// empty.
func (p *parser) kvKey(key string) string {
	s := p.raw(key)
	if s != "" && slices.ContainsFunc(strings.Split(s, "/"), func(seg string) bool { return !peers.IsDNSLabel(seg) }) {
		p.fail(key, s, "a Consul KV key like meshd/hint: lower-case letters, digits and '-' between single '/', or empty to turn hints off")
	}
	return s
}

func (p *parser) hostPort(key string) string {
	s := p.raw(key)
	host, port, err := net.SplitHostPort(s)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil || host == "" {
		p.fail(key, s, "host:port, like 127.0.0.1:9474")
	}
	return s
}

func (p *parser) endpoint(key string) netip.AddrPort {
	s := p.raw(key)
	if s == "" {
		return netip.AddrPort{}
	}
	ap, err := peers.ParseEndpoint(s)
	if err != nil {
		p.fail(key, s, "ip:port of this host on the underlay, like 192.0.2.10:51820 or [2001:db8::1]:51820")
	}
	return ap
}

func (p *parser) supernet(key string) netip.Prefix {
	s := p.raw(key)
	pfx, err := peers.ParseIPv6Prefix(s)
	if err != nil || pfx.Bits() > 112 {
		p.fail(key, s, "an IPv6 CIDR of length /112 or shorter without host bits, like fdaa::/16")
	}
	return pfx
}

func (p *parser) prefix(key string, supernet netip.Prefix) netip.Prefix {
	s := p.raw(key)
	if s == "" || p.err != nil {
		return netip.Prefix{}
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		p.fail(key, s, "an IPv6 CIDR inside mesh_supernet "+supernet.String()+", like "+exampleIn(supernet))
		return pfx
	}
	if err := (peers.Rules{Supernet: supernet}).ValidatePrefix(pfx); err != nil {
		p.fail(key, s, "an IPv6 CIDR inside mesh_supernet ("+err.Error()+")")
	}
	return pfx
}

// cidr reads an optional masked IPv6 CIDR.
func (p *parser) cidr(key string) netip.Prefix {
	s := p.raw(key)
	if s == "" {
		return netip.Prefix{}
	}
	pfx, err := peers.ParseIPv6Prefix(s)
	if err != nil {
		p.fail(key, s, "an IPv6 CIDR without host bits, like fdaa:0:1:8000::/49")
	}
	return pfx
}
