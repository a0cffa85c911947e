package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/trust"
)

// TestAuthority runs the authority's commands as a bootstrap service
// would, against a real Consul: init makes a key never overwritten; a
// host's init --json, signed by authority sign and installed by init
// --credential, gives a credential for that host; publish puts a node
// that cannot run meshd in the catalog with an entry that verifies, and
// --remove takes it out; init --authority-key does it all at once.
func TestAuthority(t *testing.T) {
	bin := meshdBin(t)
	consul := testlab.StartDevConsul(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "authority.key")
	out, err := exec.Command(bin, "authority", "init", "--key", key).Output()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := trust.ParsePublicKey(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("authority init printed %q: %v", out, err)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("authority key: %v, %v; want mode 0600", st, err)
	}
	if out, err := exec.Command(bin, "authority", "init", "--key", key).CombinedOutput(); err == nil || !strings.Contains(string(out), "never overwritten") {
		t.Errorf("authority init over an existing key: %v: %s; want a refusal", err, out)
	}

	h := newInitHost(t, "h1", consul.HTTPAddr)
	res, err := h.init(t, bin)
	if err != nil {
		t.Fatal(err)
	}
	reqJSON, _ := json.Marshal(res)
	sign := exec.Command(bin, "authority", "sign", "--key", key, "--roles", "gateway")
	sign.Stdin = bytes.NewReader(reqJSON)
	cred, err := sign.Output()
	if err != nil {
		t.Fatal(err)
	}
	credFile := filepath.Join(dir, "credential")
	if err := os.WriteFile(credFile, cred, 0o644); err != nil {
		t.Fatal(err)
	}
	// Not trusted yet: init checks the credential against the host only.
	if _, err := h.init(t, bin, "--credential", credFile); err != nil {
		t.Fatal(err)
	}
	c, err := readCredential(filepath.Join(h.dir, "state", "credential"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := trust.VerifyCredential(c, []ed25519.PublicKey{pub}, time.Now())
	if err != nil || got.Node != "h1" || got.Prefix.String() != res.Prefix || len(got.Roles) != 1 || got.Roles[0] != "gateway" {
		t.Errorf("installed credential: %+v, %v", got, err)
	}
	// Another host's credential is refused by init, and nothing changes.
	other := newInitHost(t, "h2", consul.HTTPAddr)
	if _, err := other.init(t, bin, "--credential", credFile); err == nil || !strings.Contains(err.Error(), `for node "h1"`) {
		t.Errorf("init --credential with h1's credential on h2: %v; want a refusal naming the node", err)
	}

	// A node that cannot run meshd, published by the authority.
	app, _ := wgtypes.GeneratePrivateKey()
	cfg := filepath.Join(dir, "authority.yaml")
	if err := os.WriteFile(cfg, []byte("consul:\n  address: "+consul.HTTPAddr+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	publish := func(args ...string) {
		t.Helper()
		argv := append([]string{"authority", "publish", "--config", cfg, "--key", key}, args...)
		if out, err := exec.Command(bin, argv...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	publish("--node", "appliance", "--public-key", app.PublicKey().String(), "--endpoint", "192.0.2.50:51820", "--prefix", "fdaa:0:50::/48")
	cl := consul.Client(t)
	svcs, _, err := cl.Catalog().Service("meshd", "", nil)
	if err != nil || len(svcs) != 1 {
		t.Fatalf("catalog after publish: %v, %v", svcs, err)
	}
	rules := peers.Rules{Supernet: netip.MustParsePrefix("fdaa::/16"), Trust: &peers.Trust{Authorities: []ed25519.PublicKey{pub}}}
	p, err := peers.ParseEntry(peers.Entry{ServiceID: svcs[0].ServiceID, Meta: svcs[0].ServiceMeta}, rules)
	if err != nil || p.Node != "appliance" || p.PublicKey != app.PublicKey() || svcs[0].ServiceID != catalogsync.ServiceID("appliance") {
		t.Errorf("published entry: %+v, %v", p, err)
	}
	publish("--node", "appliance", "--remove")
	if svcs, _, err := cl.Catalog().Service("meshd", "", nil); err != nil || len(svcs) != 0 {
		t.Errorf("catalog after publish --remove: %v, %v", svcs, err)
	}

	// revoke --init creates the revocations folder, once; with --node it
	// is refused.
	for _, want := range []string{"created " + catalogsync.RevocationsPrefix, catalogsync.RevocationsPrefix + " is already there"} {
		out, err := exec.Command(bin, "authority", "revoke", "--config", cfg, "--init").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("authority revoke --init: %v: %q; want %q", err, out, want)
		}
	}
	if pair, _, err := cl.KV().Get(catalogsync.RevocationsPrefix, nil); err != nil || pair == nil || len(pair.Value) != 0 {
		t.Errorf("the revocations folder key after --init: %+v, %v; want it, empty", pair, err)
	}
	if out, err := exec.Command(bin, "authority", "revoke", "--config", cfg, "--init", "--node", "h1").CombinedOutput(); err == nil || !strings.Contains(string(out), "--init: takes no") {
		t.Errorf("authority revoke --init --node: %v: %s; want a refusal", err, out)
	}

	// init --authority-key: credential and trust.authorities at once.
	h3 := newInitHost(t, "h3", consul.HTTPAddr)
	if _, err := h3.init(t, bin, "--authority-key", trusttest.KeyFile(t, t.TempDir())); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(h3.config)
	if !strings.Contains(string(b), trusttest.PublicKey()) {
		t.Errorf("config after init --authority-key lacks the authority:\n%s", b)
	}
	if _, err := os.Stat(filepath.Join(h3.dir, "state", "credential")); err != nil {
		t.Errorf("no credential installed by init --authority-key: %v", err)
	}
}
