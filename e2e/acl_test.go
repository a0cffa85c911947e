package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/prefixalloc"
)

const rootToken = "00000000-0000-4000-8000-00000000beef"

// TestACL runs a mesh on a Consul with ACLs on (default deny). Each host's
// token carries only the policy `meshd acl-policy` prints: with it, a host
// runs its agent normally, and cannot modify another host's instance or
// prefix claim.
func TestACL(t *testing.T) {
	lab, server, mgmt := aclLab(t)
	h1 := newNode(t, lab, []*testlab.Consul{server}, 1, "removal_grace: 1m\n")
	h2 := newNode(t, lab, []*testlab.Consul{server}, 2, "removal_grace: 1m\n")
	nodes := []*node{h1, h2}
	tokens := bootstrapACL(t, mgmt, nodes)

	// With only their own tokens, the hosts run normally.
	for _, n := range nodes {
		n.start(t)
	}
	defer checkNoRace(t, nodes)
	converged(t, nodes)
	pingAll(t, nodes)
	waitConverged(t, h1)

	// h1's token against h2's entry and claim: every write is refused.
	c := h1.Consul.ClientWithToken(t, tokens[h1])
	h2Key := prefixalloc.Key(h2.prefix)
	denied := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "Permission denied") {
			t.Errorf("%s with h1's token: err = %v, want Permission denied", what, err)
		}
	}
	_, err := c.KV().Put(&api.KVPair{Key: h2Key, Value: []byte("h1")}, nil)
	denied("overwrite h2's prefix claim", err)
	_, err = c.KV().Delete(h2Key, nil)
	denied("delete h2's prefix claim", err)
	_, err = c.Catalog().Register(&api.CatalogRegistration{Node: "h2", Address: h2.Addr.String(),
		Service: &api.AgentService{ID: "meshd-h2", Service: "meshd", Meta: map[string]string{"v": "1", "node": "h2"}}}, nil)
	denied("rewrite h2's instance", err)

	// Consul's ACLs let any token with write on the service name
	// deregister an instance through the catalog, whatever its node; no
	// policy can refuse it. meshd limits the damage instead: h2 puts its
	// entry back as soon as it sees it gone, and h1 keeps h2's peer through
	// its removal grace, so no kernel changes.
	before, err := h1.device(t)
	if err != nil {
		t.Fatal(err)
	}
	// h2Entry is h2's instance as the catalog has it, or nil.
	h2Entry := func() *api.ServiceEntry {
		entries, _, err := mgmt.Health().Service("meshd", "", false, nil)
		if err != nil {
			return nil
		}
		for _, e := range entries {
			if e.Service.ID == "meshd-h2" {
				return e
			}
		}
		return nil
	}
	_, err = c.Catalog().Deregister(&api.CatalogDeregistration{Node: "h2", ServiceID: "meshd-h2"}, nil)
	if err == nil {
		t.Log("Consul allowed h1's token to deregister h2's instance (service:write on the name suffices); checking that it heals")
		testlab.Eventually(t, 30*time.Second, "h2's instance registered again by h2", func() bool {
			e := h2Entry()
			return e != nil && e.Node.Node == "h2" && e.Service.Meta["public_key"] != ""
		})
		if !strings.Contains(h2.proc.Log(), "the catalog lacks this node's entry") {
			t.Errorf("h2's log does not say that its entry was gone:\n%s", tail(h2.proc.Log(), 20))
		}
		after, err := h1.device(t)
		if err != nil || len(after.Peers) != len(before.Peers) {
			t.Errorf("h1's peers changed while h2's instance was gone: %d -> %v (%v)", len(before.Peers), after, err)
		}
	} else {
		denied("deregister h2's instance", err)
	}
	// Nor can a policy refuse a rewrite of another host's instance that
	// leaves its node as it is (SkipNodeUpdate: no node:write is needed,
	// only service:write on the name). h2 puts its own entry back as soon
	// as it sees the difference, and h1 ends up holding h2's real key only.
	h2Pub := h2.publicKey(t)
	fake, _ := wgtypes.GeneratePrivateKey()
	_, err = c.Catalog().Register(&api.CatalogRegistration{Node: "h2", SkipNodeUpdate: true,
		Service: &api.AgentService{ID: "meshd-h2", Service: "meshd", Meta: map[string]string{
			"v": "1", "node": "h2", "public_key": fake.PublicKey().String(),
			"endpoint": h1.Addr.String() + ":51820", "prefix": h2.prefix.String()}}}, nil)
	if err == nil {
		rewritten := time.Now()
		t.Log("Consul allowed h1's token to rewrite h2's instance (SkipNodeUpdate, service:write on the name); checking that it heals")
		testlab.Eventually(t, 30*time.Second, "h2's own entry back in the catalog", func() bool {
			e := h2Entry()
			return e != nil && e.Service.Meta["public_key"] == h2Pub.String()
		})
		testlab.Eventually(t, 30*time.Second, "h1 holds h2's real key only and pings h2", func() bool {
			d, err := h1.device(t)
			if err != nil {
				return false
			}
			for _, p := range d.Peers {
				if p.PublicKey == fake.PublicKey() {
					return false
				}
			}
			return h1.hasPeer(t, h2Pub, h2.prefix) && h1.Ping(h2.meshAddr())
		})
		t.Logf("h2's rewritten instance healed in %s", time.Since(rewritten).Round(time.Millisecond))
		if !strings.Contains(h2.proc.Log(), "the catalog shows another entry for this node") || !strings.Contains(h2.proc.Log(), fake.PublicKey().String()) {
			t.Errorf("h2's log does not say that its entry was changed under it (to key %s):\n%s", fake.PublicKey(), tail(h2.proc.Log(), 20))
		}
	} else {
		denied("rewrite h2's instance keeping its node", err)
	}
	if pair, _, err := mgmt.KV().Get(h2Key, nil); err != nil || pair == nil || string(pair.Value) != "h2" {
		t.Errorf("h2's claim after the attempts: %v, %v", pair, err)
	}

	// meshd itself says so clearly when its token may not write.
	out, err := h1.Exec(meshd(t), "init", "--config", h1.config, "--prefix", h2.prefix.String(),
		"--consul-token-file", filepath.Join(h1.Dir, "consul-token"))
	if err == nil || !strings.Contains(out, "Permission denied") || !strings.Contains(out, h2.prefix.String()) {
		t.Errorf("init claiming h2's prefix with h1's token: %v: %q; want a refusal naming the prefix", err, out)
	}

	// The mesh is untouched, and h1 can still manage its own entries.
	converged(t, nodes)
	pingAll(t, nodes)
	st, err := h2.status(t)
	if err != nil {
		t.Fatal(err)
	}
	hints := st.Catalog.Hints
	out, err = h1.Exec(meshd(t), "leave", "--release-prefix", "--config", h1.config,
		"--consul-token-file", filepath.Join(h1.Dir, "consul-token"))
	if err != nil {
		t.Fatalf("leave --release-prefix with h1's own token: %v: %s", err, out)
	}
	// h1's token may write the hint of its leave, and h2's may follow it.
	testlab.Eventually(t, 10*time.Second, "h2 follows the hint of h1's leave", func() bool {
		st, err := h2.status(t)
		return err == nil && st.Catalog.Hints > hints
	})
	for _, n := range nodes {
		if strings.Contains(n.proc.Log(), "no hint written") {
			t.Errorf("%s could not write a hint with its token:\n%s", n.Name, tail(n.proc.Log(), 20))
		}
	}
	if pair, _, err := mgmt.KV().Get(prefixalloc.Key(h1.prefix), nil); err != nil || pair != nil {
		t.Errorf("h1's claim after leave --release-prefix: %v, %v", pair, err)
	}
}

// aclLab is a lab whose Consul server has ACLs on (default deny); mgmt is
// a client with the management token.
func aclLab(t *testing.T) (*testlab.Lab, *testlab.Consul, *api.Client) {
	lab := testlab.NewLab(t)
	lab.ConsulHCL = []string{`acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = "` + rootToken + `"
    agent = "` + rootToken + `"
  }
}`}
	lab.ConsulToken = rootToken
	server := lab.StartConsulServer("consul")
	return lab, server, server.Client(t)
}

// bootstrapACL bootstraps nodes as a provisioning service would: init
// with a bootstrap (here: management) token, the authority's signature of
// what init printed, init --credential, then a token with the host's own
// policy (meshd acl-policy), which the node's meshd runs with. It returns
// each node's token.
func bootstrapACL(t *testing.T, mgmt *api.Client, nodes []*node, roles ...string) map[*node]string {
	t.Helper()
	tokens := map[*node]string{}
	authorityKey := trusttest.KeyFile(t, t.TempDir())
	for _, n := range nodes {
		cmd := n.Command(meshd(t), "init", "--json", "--config", n.config, "--endpoint", n.Addr.String()+":51820")
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_TOKEN="+rootToken)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("init on %s: %v: %s", n.Name, err, out)
		}
		var res struct{ Prefix, Identity string }
		if err := json.Unmarshal(out, &res); err != nil || res.Prefix != n.prefix.String() || res.Identity == "" {
			t.Fatalf("init on %s printed %s (%v), want prefix %s and an identity", n.Name, out, err, n.prefix)
		}
		sign := exec.Command(meshd(t), "authority", "sign", "--key", authorityKey, "--roles", strings.Join(roles, ","))
		if len(roles) == 0 {
			sign = exec.Command(meshd(t), "authority", "sign", "--key", authorityKey)
		}
		sign.Stdin = bytes.NewReader(out)
		cred, err := sign.Output()
		if err != nil {
			t.Fatalf("authority sign for %s: %v", n.Name, err)
		}
		credFile := filepath.Join(n.Dir, "credential.new")
		if err := os.WriteFile(credFile, cred, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := n.Exec(meshd(t), "init", "--config", n.config, "--credential", credFile, "--consul-token", rootToken); err != nil {
			t.Fatalf("init --credential on %s: %v: %s", n.Name, err, out)
		}
		rules, err := n.Exec(meshd(t), "acl-policy", "--config", n.config)
		if err != nil {
			t.Fatalf("acl-policy: %v: %s", err, rules)
		}
		pol, _, err := mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: "meshd-" + n.Name, Rules: rules}, nil)
		if err != nil {
			t.Fatalf("create policy from meshd acl-policy output: %v\n%s", err, rules)
		}
		tok, _, err := mgmt.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tokens[n] = tok.SecretID
		file := filepath.Join(n.Dir, "consul-token")
		if err := os.WriteFile(file, []byte(tok.SecretID), 0o600); err != nil {
			t.Fatal(err)
		}
		n.args = []string{"--consul-token-file", file}
	}
	return tokens
}
