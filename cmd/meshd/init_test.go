package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/prefixalloc"
)

type initHost struct {
	dir, config string
}

func newInitHost(t *testing.T, node, consulAddr string) initHost {
	t.Helper()
	dir := t.TempDir()
	h := initHost{dir: dir, config: filepath.Join(dir, "etc", "meshd.yaml")}
	if err := os.MkdirAll(filepath.Dir(h.config), 0o755); err != nil {
		t.Fatal(err)
	}
	// What a bootstrap service would set up before calling init.
	body := fmt.Sprintf("node_name: %s\nstate_dir: %s\nstatus_socket: %s\nconsul:\n  address: %s\n",
		node, filepath.Join(dir, "state"), filepath.Join(dir, "meshd.sock"), consulAddr)
	if err := os.WriteFile(h.config, []byte(body), 0o640); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h initHost) init(t *testing.T, bin string, args ...string) (initResult, error) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"init", "--json", "--config", h.config, "--endpoint", "192.0.2.7:51820"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return initResult{}, fmt.Errorf("%v: %s", err, stderr.String())
	}
	var res initResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return res, fmt.Errorf("init --json printed %q: %v", stdout.String(), err)
	}
	return res, nil
}

// TestInitConcurrent starts 50 `meshd init` for 50 nodes at once against one
// real Consul: 50 distinct prefixes, all inside the supernet; running init
// again returns the node's own prefix and changes nothing.
func TestInitConcurrent(t *testing.T) {
	bin := meshdBin(t)
	consul := testlab.StartDevConsul(t)
	const n = 50
	hosts := make([]initHost, n)
	results := make([]initResult, n)
	errs := make([]error, n)
	for i := range hosts {
		hosts[i] = newInitHost(t, fmt.Sprintf("node%d", i), consul.HTTPAddr)
	}
	var wg sync.WaitGroup
	for i := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = hosts[i].init(t, bin)
		}()
	}
	wg.Wait()
	supernet := netip.MustParsePrefix("fdaa::/16")
	owner := map[string]string{}
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("init of node%d: %v", i, errs[i])
		}
		p, err := netip.ParsePrefix(res.Prefix)
		if err != nil || !supernet.Contains(p.Addr()) || p.Bits() != 48 {
			t.Errorf("node%d got prefix %q, want a /48 inside %s", i, res.Prefix, supernet)
		}
		if o, dup := owner[res.Prefix]; dup {
			t.Errorf("prefix %s given to %s and node%d", res.Prefix, o, i)
		}
		owner[res.Prefix] = res.Node
		if !res.Claimed || !res.KeyCreated || len(res.Added) != 2 {
			t.Errorf("node%d first init: %+v; want claimed, key created, endpoint and prefix added", i, res)
		}
		st, err := os.Stat(res.KeyFile)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("node%d key file: %v mode %v, want 0600", i, err, st.Mode().Perm())
		}
	}
	claims, err := prefixalloc.Claims(t.Context(), consul.Client(t).KV())
	if err != nil || len(claims) != n {
		t.Errorf("%d claims in Consul (%v), want %d", len(claims), err, n)
	}

	// Again, on three of them: same prefix, nothing claimed or written.
	for _, i := range []int{0, 17, 49} {
		before, _ := os.ReadFile(hosts[i].config)
		st1, _ := os.Stat(hosts[i].config)
		res, err := hosts[i].init(t, bin)
		if err != nil {
			t.Fatal(err)
		}
		if res.Prefix != results[i].Prefix || res.PublicKey != results[i].PublicKey || res.Claimed || res.KeyCreated || len(res.Added) != 0 {
			t.Errorf("second init of node%d: %+v; want the same prefix and key, nothing new", i, res)
		}
		after, _ := os.ReadFile(hosts[i].config)
		st2, _ := os.Stat(hosts[i].config)
		if !bytes.Equal(before, after) || !os.SameFile(st1, st2) {
			t.Errorf("second init of node%d rewrote the config file", i)
		}
	}

	// The config written is one `meshd run` accepts, and the operator's
	// keys are all still there.
	b, _ := os.ReadFile(hosts[3].config)
	for _, want := range []string{"node_name: node3", "consul:", "endpoint: 192.0.2.7:51820", "prefix: " + results[3].Prefix} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config lacks %q:\n%s", want, b)
		}
	}
}

func TestInitKeepsOperatorSettings(t *testing.T) {
	bin := meshdBin(t)
	consul := testlab.StartDevConsul(t)
	h := newInitHost(t, "edited", consul.HTTPAddr)
	f, _ := os.OpenFile(h.config, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("# chosen by the operator\nprefix: fdaa:0:abcd::/48\nmtu: 1380\n")
	f.Close()
	res, err := h.init(t, bin)
	if err != nil {
		t.Fatal(err)
	}
	if res.Prefix != "fdaa:0:abcd::/48" || !res.Claimed {
		t.Errorf("init with an operator's prefix: %+v; want it claimed as is", res)
	}
	b, _ := os.ReadFile(h.config)
	for _, want := range []string{"# chosen by the operator", "prefix: fdaa:0:abcd::/48", "mtu: 1380"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("operator's %q lost:\n%s", want, b)
		}
	}
	// Another node asking for the same prefix is refused with exit 2.
	other := newInitHost(t, "thief", consul.HTTPAddr)
	cmd := exec.Command(bin, "init", "--config", other.config, "--endpoint", "192.0.2.8:51820", "--prefix", "fdaa:0:abcd::/48")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "claimed by another node") {
		t.Errorf("init of a taken prefix: %v %q; want exit 2 naming the claim", err, out)
	}
}

func TestInitRefusesReadableKey(t *testing.T) {
	bin := meshdBin(t)
	consul := testlab.StartDevConsul(t)
	h := newInitHost(t, "leaky", consul.HTTPAddr)
	key := filepath.Join(h.dir, "state", "private.key")
	os.MkdirAll(filepath.Dir(key), 0o700)
	if err := os.WriteFile(key, []byte("aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(h.config)
	out, err := exec.Command(bin, "init", "--config", h.config, "--endpoint", "192.0.2.9:51820").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "readable by group or others") {
		t.Errorf("init with a 0644 key: %v %q; want exit 2", err, out)
	}
	after, _ := os.ReadFile(h.config)
	claims, _ := prefixalloc.Claims(t.Context(), consul.Client(t).KV())
	if !bytes.Equal(before, after) || len(claims) != 0 {
		t.Errorf("init with a bad key touched things: config changed %v, %d claims", !bytes.Equal(before, after), len(claims))
	}
}

// TestReleasePrefix: leave --release-prefix frees the claim so that another
// node can take the prefix.
func TestReleasePrefix(t *testing.T) {
	bin := meshdBin(t)
	consul := testlab.StartDevConsul(t)
	h := newInitHost(t, "goner", consul.HTTPAddr)
	res, err := h.init(t, bin)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "leave", "--release-prefix", "--config", h.config, "--interface", "wgnone0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "released prefix "+res.Prefix) {
		t.Fatalf("leave --release-prefix: %v %s", err, out)
	}
	next := newInitHost(t, "newcomer", consul.HTTPAddr)
	res2, err := next.init(t, bin, "--prefix", res.Prefix)
	if err != nil || res2.Prefix != res.Prefix {
		t.Errorf("claiming the released prefix: %+v, %v", res2, err)
	}
}

// TestConsulEnvironment: with no consul.address in the file, the standard
// CONSUL_HTTP_ADDR variable is how meshd finds Consul.
func TestConsulEnvironment(t *testing.T) {
	bin := meshdBin(t)
	consul := testlab.StartDevConsul(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "meshd.yaml")
	if err := os.WriteFile(cfgPath, []byte("node_name: envnode\nstate_dir: "+filepath.Join(dir, "state")+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "init", "--config", cfgPath, "--endpoint", "192.0.2.10:51820")
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+consul.HTTPAddr)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("init with CONSUL_HTTP_ADDR: %v: %s", err, out)
	}
	claims, err := prefixalloc.Claims(t.Context(), consul.Client(t).KV())
	if err != nil || len(claims) != 1 {
		t.Errorf("claims after init through CONSUL_HTTP_ADDR: %v, %v", claims, err)
	}
	// And meshd's own key wins over the variable.
	cmd = exec.Command(bin, "init", "--config", cfgPath, "--consul-address", consul.HTTPAddr)
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR=127.0.0.1:1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("--consul-address did not win over CONSUL_HTTP_ADDR: %v: %s", err, out)
	}
}

// TestInitCreatesConfig: `meshd init --config FILE` writes FILE when it
// does not exist yet, its directory too, mode 0640, with what the flags
// and environment said; any other command still refuses a missing file.
func TestInitCreatesConfig(t *testing.T) {
	bin := meshdBin(t)
	consul := testlab.StartDevConsul(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "etc", "meshd", "meshd.yaml")
	cmd := exec.Command(bin, "init", "--json", "--config", path, "--endpoint", "192.0.2.9:51820")
	cmd.Env = append(os.Environ(), "MESHD_NODE_NAME=fresh", "MESHD_STATE_DIR="+filepath.Join(dir, "state"),
		"MESHD_KEY_FILE="+filepath.Join(dir, "state", "private.key"), "MESHD_CONSUL_ADDRESS="+consul.HTTPAddr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("init with a config file that does not exist: %v\n%s", err, out)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("config file: %v, mode %v; want it created 0640", err, st)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{"node_name: fresh", "endpoint: 192.0.2.9:51820", "prefix: fdaa:"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config lacks %q:\n%s", want, b)
		}
	}
	out, err = exec.Command(bin, "status", "--config", filepath.Join(dir, "missing.yaml")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "missing.yaml") {
		t.Errorf("status with a missing config: %v %q; want exit 2 naming the file", err, out)
	}
}
