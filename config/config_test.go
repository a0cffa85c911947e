package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meshd.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func flagSet(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestDefaults(t *testing.T) {
	cfg, warn, err := Load(writeFile(t, "node_name: h1\n"), flagSet(t))
	if err != nil || len(warn) != 0 {
		t.Fatalf("Load: %v %v", err, warn)
	}
	want := Config{
		NodeName: "h1", Interface: "wg0", ListenPort: 51820, MeshSupernet: netip.MustParsePrefix("fdaa::/16"),
		MTU: 1420, Keepalive: 25 * time.Second, KeyFile: "/var/lib/meshd/private.key", StateDir: "/var/lib/meshd",
		StatusSocket: "/run/meshd/meshd.sock", MetricsAddress: "127.0.0.1:9474",
		RemovalGrace: 5 * time.Minute, MaxRemovalFraction: 0.5, MaxPeers: 25000, ResyncInterval: 30 * time.Second,
		LogLevel: "info", LogFormat: "text", WireGuard: "auto",
		Consul:  Consul{Service: "meshd", HintKey: "meshd/hint", MaxStale: 30 * time.Second, FullReadInterval: time.Minute},
		Gateway: Gateway{Interface: "wg-gw", ListenPort: 51821, KeyFile: "/var/lib/meshd/gateway.key", JIT: true, IdleTimeout: 10 * time.Minute},
		Trust:   Trust{IdentityKeyFile: "/var/lib/meshd/identity.key", CredentialFile: "/var/lib/meshd/credential"},
	}
	cfg.File = ""
	if diff := cmp.Diff(want, *cfg, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if err := cfg.RequireMember(); err == nil || !strings.Contains(err.Error(), "endpoint") {
		t.Errorf("RequireMember without endpoint: %v, want an error naming endpoint", err)
	}
}

func TestPrecedence(t *testing.T) {
	path := writeFile(t, `
node_name: from-file
listen_port: 1000
mtu: 1300
interface: wgfile
consul:
  address: file:8500
  service: fromfile
`)
	t.Setenv("MESHD_LISTEN_PORT", "2000")
	t.Setenv("MESHD_MTU", "1400")
	t.Setenv("MESHD_CONSUL_ADDRESS", "env:8500")
	cfg, _, err := Load(path, flagSet(t, "--mtu", "1500", "--consul-address", "flag:8500"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{
		"node_name": cfg.NodeName, "listen_port": cfg.ListenPort, "mtu": cfg.MTU,
		"interface": cfg.Interface, "consul.address": cfg.Consul.Address, "consul.service": cfg.Consul.Service,
		"state_dir": cfg.StateDir,
	}
	want := map[string]any{
		"node_name":      "from-file",      // file over default
		"listen_port":    2000,             // env over file
		"mtu":            1500,             // flag over env and file
		"interface":      "wgfile",         // file
		"consul.address": "flag:8500",      // nested: flag over env over file
		"consul.service": "fromfile",       // nested from file
		"state_dir":      "/var/lib/meshd", // default
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("precedence (-want +got):\n%s", diff)
	}
}

func TestMissingFile(t *testing.T) {
	if _, _, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), flagSet(t)); err == nil {
		t.Error("an explicit --config that does not exist loaded fine")
	}
}

func TestUnknownKeyWarns(t *testing.T) {
	_, warn, err := Load(writeFile(t, "node_name: h1\nlisten_prot: 5\nconsul:\n  adress: x\n"), flagSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(warn) != 2 || !strings.Contains(warn[0], `"consul.adress"`) || !strings.Contains(warn[1], `"listen_prot"`) {
		t.Errorf("warnings = %q, want one per unknown key", warn)
	}
}

func TestBadValues(t *testing.T) {
	unreadable := filepath.Join(t.TempDir(), "missing-token")
	tests := []struct {
		file, key, value, expected string
	}{
		{"listen_port: 70000", "listen_port", "70000", "from 1 to 65535"},
		{"listen_port: abc", "listen_port", "abc", "whole number"},
		{"mtu: 100", "mtu", "100", "from 1280 to 9000"},
		{"mesh_supernet: 10.0.0.0/8", "mesh_supernet", "10.0.0.0/8", "IPv6 CIDR"},
		{"mesh_supernet: fdaa::1/16", "mesh_supernet", "fdaa::1/16", "without host bits"},
		{"prefix: fdbb:0:1::/48", "prefix", "fdbb:0:1::/48", "outside the mesh supernet"},
		{"prefix: not-a-cidr", "prefix", "not-a-cidr", "IPv6 CIDR inside mesh_supernet"},
		{"prefix: fdaa::/8", "prefix", "fdaa::/8", "inside mesh_supernet"},
		{"endpoint: host.example:51820", "endpoint", "host.example:51820", "ip:port"},
		{"endpoint: 192.0.2.1", "endpoint", "192.0.2.1", "ip:port"},
		{"removal_grace: -5m", "removal_grace", "-5m", "duration"},
		{"removal_grace: soon", "removal_grace", "soon", "duration"},
		{"resync_interval: 1ms", "resync_interval", "1ms", "at least 1s"},
		{"keepalive: 1.5s", "keepalive", "1.5s", "whole seconds"},
		{"max_removal_fraction: 1.5", "max_removal_fraction", "1.5", "fraction"},
		{"max_peers: 0", "max_peers", "0", "1 to 1000000"},
		{"catalog:\n  max_stale: 10ms", "catalog.max_stale", "10ms", "duration"},
		{"catalog:\n  full_read_interval: 500ms", "catalog.full_read_interval", "500ms", "from 1s to 10m0s"},
		{"catalog:\n  full_read_interval: 11m", "catalog.full_read_interval", "11m", "from 1s to 10m0s"},
		{"node_name: Host_1", "node_name", "Host_1", "DNS label"},
		{"interface: this-name-is-far-too-long", "interface", "this-name-is-far-too-long", "1-15 characters"},
		{"key_file: relative/key", "key_file", "relative/key", "absolute path"},
		{"consul:\n  token_file: " + unreadable, "consul.token_file", unreadable, "readable file"},
		{"consul:\n  hint_key: Meshd Hint", "consul.hint_key", "Meshd Hint", "a Consul KV key"},
		{"consul:\n  hint_key: /meshd/hint", "consul.hint_key", "/meshd/hint", "a Consul KV key"},
		{"consul:\n  hint_key: meshd//hint", "consul.hint_key", "meshd//hint", "a Consul KV key"},
		{"metrics_address: 9474", "metrics_address", "9474", "host:port"},
		{"log_level: loud", "log_level", "loud", "one of debug"},
		{"gateway:\n  enabled: maybe", "gateway.enabled", "maybe", "true or false"},
		{"gateway:\n  enabled: true\n  interface: wg0", "gateway.interface", "wg0", "other than interface"},
		{"gateway:\n  enabled: true\n  listen_port: 51820", "gateway.listen_port", "51820", "other than listen_port"},
		{"gateway:\n  pool: fdaa:0:1::1/64", "gateway.pool", "fdaa:0:1::1/64", "without host bits"},
		{"gateway:\n  jit: sometimes", "gateway.jit", "sometimes", "true or false"},
		{"gateway:\n  idle_timeout: 5s", "gateway.idle_timeout", "5s", "from 10s to 24h"},
		{"prefix: fdaa:0:1::/48\ngateway:\n  pool: fdaa:0:2::/64", "gateway.pool", "fdaa:0:2::/64", "not inside the gateway's prefix"},
		{"prefix: fdaa:0:1::/48\ngateway:\n  pool: fdaa:0:1::/64", "gateway.pool", "fdaa:0:1::/64", "holds the gateway's mesh address"},
		{"listen_port: [1, 2]", "listen_port", "[1 2]", "single value"},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			body := tt.file + "\n"
			if tt.key != "node_name" {
				body = "node_name: h1\n" + body
			}
			_, _, err := Load(writeFile(t, body), flagSet(t))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load: err = %v, want a *config.Error", err)
			}
			if ce.Key != tt.key || ce.Value != tt.value || !strings.Contains(ce.Expected, tt.expected) {
				t.Errorf("error = %+v, want key %q value %q expected ~%q", ce, tt.key, tt.value, tt.expected)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tt.key) {
				t.Errorf("message %q is not one line naming the key", msg)
			}
		})
	}
}

func TestBadYAML(t *testing.T) {
	_, _, err := Load(writeFile(t, "node_name: [\n"), flagSet(t))
	if err == nil || strings.Contains(err.Error(), "\n") {
		t.Errorf("bad YAML: err = %v, want a one-line error", err)
	}
}

func TestGatewayPool(t *testing.T) {
	cfg, _, err := Load(writeFile(t, "node_name: h1\nprefix: fdaa:0:1::/48\n"), flagSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("fdaa:0:1:8000::/49"); cfg.Gateway.Pool != want {
		t.Errorf("default pool = %s, want %s (the upper half of the prefix)", cfg.Gateway.Pool, want)
	}
	cfg, _, err = Load(writeFile(t, "node_name: h1\nprefix: fdaa:0:1::/48\ngateway:\n  pool: fdaa:0:1:ffff::/112\n"), flagSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("fdaa:0:1:ffff::/112"); cfg.Gateway.Pool != want {
		t.Errorf("pool = %s, want %s", cfg.Gateway.Pool, want)
	}
}

func TestMeshAddress(t *testing.T) {
	cfg := &Config{Prefix: netip.MustParsePrefix("fdaa:0:7::/48")}
	if got := cfg.MeshAddress(); got != netip.MustParseAddr("fdaa:0:7::1") {
		t.Errorf("MeshAddress = %s, want fdaa:0:7::1", got)
	}
}

// TestExampleFile keeps packaging/meshd.yaml loadable and complete.
func TestExampleFile(t *testing.T) {
	cfg, warn, err := Load("../packaging/meshd.yaml", flagSet(t))
	if err != nil || len(warn) != 0 {
		t.Fatalf("example config: err %v, warnings %v", err, warn)
	}
	if err := cfg.RequireMember(); err != nil {
		t.Errorf("example config lacks a member key: %v", err)
	}
}

// TestSecretWarnings: a token file others may read and a token given as a
// flag each draw a warning; a 0600 token file from the config draws none.
func TestSecretWarnings(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, "node_name: h1\nconsul:\n  token_file: "+token+"\n")
	_, warn, err := Load(path, flagSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(warn) != 1 || !strings.Contains(warn[0], "has mode 0644: readable by others") {
		t.Errorf("warnings for a 0644 token file = %q", warn)
	}
	os.Chmod(token, 0o600)
	if _, warn, _ := Load(path, flagSet(t)); len(warn) != 0 {
		t.Errorf("warnings for a 0600 token file = %q, want none", warn)
	}
	_, warn, _ = Load(path, flagSet(t, "--consul-token", "s3cret"))
	if len(warn) != 1 || !strings.Contains(warn[0], "--consul-token shows the token to every local user") {
		t.Errorf("warnings for --consul-token = %q", warn)
	}
}
