package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"maps"
	"meshd.dev/meshd/trust"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/internal/testlab"
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/keystore"
	"meshd.dev/meshd/peers"
)

// TestTrustAttacks: h1 (the attacker) holds nothing but its own ordinary
// ACL token, against a real Consul with ACLs on. Each way it has to
// divert another host's traffic (rewrite h2's key, claim a wider prefix
// over everyone, hint an instance gone or forged, a duplicate of h2's
// gateway instance with another user-link key) changes no kernel of the
// others: h3 pings h2 throughout without losing an echo, h3's status
// shows the rejected entries with their reasons, h2 says that someone
// published entries for its node, and a user config printed for h2's
// gateway names h2's own user-link key.
func TestTrustAttacks(t *testing.T) {
	lab, server, mgmt := aclLab(t)
	gwIface := fmt.Sprintf("wt%dgw", os.Getpid()%10000)
	h1 := newNode(t, lab, []*testlab.Consul{server}, 1, "removal_grace: 1m\n")
	h2 := newNode(t, lab, []*testlab.Consul{server}, 2, fmt.Sprintf("removal_grace: 1m\ngateway:\n  enabled: true\n  interface: %s\n", gwIface))
	h3 := newNode(t, lab, []*testlab.Consul{server}, 3, "removal_grace: 1m\n")
	nodes := []*node{h1, h2, h3}
	tokens := bootstrapACL(t, mgmt, []*node{h1, h3})
	maps.Copy(tokens, bootstrapACL(t, mgmt, []*node{h2}, gateway.Tag))
	for _, n := range nodes {
		n.start(t)
	}
	defer checkNoRace(t, nodes)
	converged(t, nodes)
	pingAll(t, nodes)
	waitConverged(t, h3)

	ctx := context.Background()
	c := h1.Consul.ClientWithToken(t, tokens[h1])
	h2Pub := h2.publicKey(t)
	h3Before := peerKeys(t, h3)
	h2Entry := instance(t, mgmt, "h2", "meshd-h2")
	if h2Entry == nil {
		t.Fatal("h2's instance is not in the catalog")
	}
	gwKey, err := keystore.Load(filepath.Join(h2.Dir, "state", "gateway.key"))
	if err != nil {
		t.Fatal(err)
	}

	// h3 pings h2 every 100 ms for the whole attack.
	pinger := h3.Start("ping.log", "ping", "-n", "-i", "0.1", "-W", "1", h2.meshAddr().String())
	// checkH3 fails the test if h3's kernel ever holds another peer than
	// h1's and h2's real keys.
	checkH3 := func(what string) {
		t.Helper()
		if got := peerKeys(t, h3); !maps.Equal(got, h3Before) {
			t.Errorf("%s: h3's peers changed: %v, was %v", what, got, h3Before)
		}
	}
	fake, _ := wgtypes.GeneratePrivateKey()

	t.Run("rewrite h2's key", func(t *testing.T) {
		forged := maps.Clone(h2Entry.Service.Meta)
		forged[peers.MetaPublicKey] = fake.PublicKey().String()
		forged[peers.MetaEndpoint] = h1.Addr.String() + ":51820"
		// The attacker rewrites it again whenever h2 puts its own back,
		// and hints every rewrite so that every host reads it at once
		// (a rewrite alone is read with the whole list, now and then),
		// for 4 s and until h3 has read one.
		start := time.Now()
		var seen bool
		for i := 0; time.Since(start) < 4*time.Second || !seen && time.Since(start) < 30*time.Second; i++ {
			_, err := c.Catalog().Register(&api.CatalogRegistration{Node: "h2", SkipNodeUpdate: true,
				Service: &api.AgentService{ID: "meshd-h2", Service: "meshd", Tags: h2Entry.Service.Tags, Meta: forged}}, nil)
			if err != nil {
				t.Fatalf("Consul refused the rewrite with h1's token (%v); TestACL shows it allowed: has Consul changed?", err)
			}
			if i%2 == 0 {
				_, meta, err := c.Catalog().NodeServiceList("h2", nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := catalogsync.WriteHint(ctx, c, "meshd/hint", catalogsync.Hint{ConsulNode: "h2", ServiceID: "meshd-h2", Index: meta.LastIndex}); err != nil {
					t.Fatalf("h1 writing a hint: %v", err)
				}
			}
			seen = seen || rejected(t, h3, "meshd-h2", "signature")
			checkH3("while h2's instance is rewritten")
			time.Sleep(200 * time.Millisecond)
		}
		testlab.Eventually(t, 10*time.Second, "h3 shows the forged entry rejected for its signature", func() bool {
			seen = seen || rejected(t, h3, "meshd-h2", "signature")
			return seen
		})
		testlab.Eventually(t, 10*time.Second, "h2 reports its instance rewritten", func() bool {
			st, err := h2.status(t)
			return err == nil && st.Impersonation != nil && st.Impersonation.Rewritten > 0
		})
		testlab.Eventually(t, 30*time.Second, "h2's own entry back", func() bool {
			e := instance(t, mgmt, "h2", "meshd-h2")
			return e != nil && e.Service.Meta[peers.MetaPublicKey] == h2Pub.String()
		})
		checkH3("after the rewrite")
	})

	t.Run("entries carried in hints", func(t *testing.T) {
		// h1 writes hints that carry h2's entry themselves, claiming an
		// index far ahead of the catalog's: forged (h1's key and
		// endpoint), then h2's own, signed by h2 at a serial below the one
		// h3 holds (captured earlier, say). Neither verifies as new.
		holdsH2 := func() bool {
			st, err := h3.status(t)
			if err != nil {
				return false
			}
			for _, p := range st.Peers {
				if p.ServiceID == "meshd-h2" && p.State == agent.PeerRejected {
					return false
				}
			}
			return true
		}
		testlab.Eventually(t, 30*time.Second, "h3 holds h2's own entry, nothing of it rejected", holdsH2)
		cur := instance(t, mgmt, "h2", "meshd-h2")
		if cur == nil {
			t.Fatal("h2's instance is not in the catalog")
		}
		before, err := h3.status(t)
		if err != nil {
			t.Fatal(err)
		}
		carry := func(meta map[string]string) {
			t.Helper()
			h := catalogsync.Hint{ConsulNode: "h2", ServiceID: "meshd-h2", Index: 1 << 40, Carried: &catalogsync.Carried{Meta: meta, Tags: cur.Service.Tags}}
			if _, err := catalogsync.WriteHint(ctx, c, "meshd/hint", h); err != nil {
				t.Fatalf("h1 writing a hint: %v", err)
			}
		}
		forged := maps.Clone(cur.Service.Meta)
		forged[peers.MetaPublicKey] = fake.PublicKey().String()
		forged[peers.MetaEndpoint] = h1.Addr.String() + ":51820"
		carry(forged)
		testlab.Eventually(t, 10*time.Second, "h3 shows the carried forgery rejected for its signature", func() bool {
			return rejected(t, h3, "meshd-h2", "signature")
		})
		checkH3("after a forged entry carried in a hint")

		p, err := peers.ParseEntry(peers.Entry{ServiceID: cur.Service.ID, Meta: cur.Service.Meta, Tags: cur.Service.Tags}, meshRules)
		if err != nil {
			t.Fatalf("h2's own entry: %v", err)
		}
		id, err := keystore.Load(filepath.Join(h2.Dir, "state", "identity.key"))
		if err != nil {
			t.Fatal(err)
		}
		credential, err := base64.StdEncoding.DecodeString(cur.Service.Meta[peers.MetaCredential])
		if err != nil {
			t.Fatal(err)
		}
		seed := id.WG()
		signer, err := trust.NewSigner(seed[:], credential)
		if err != nil {
			t.Fatal(err)
		}
		older, err := peers.Sign(cur.Service.Meta, p, signer, p.Serial-1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := peers.ParseEntry(peers.Entry{ServiceID: cur.Service.ID, Meta: older, Tags: cur.Service.Tags}, meshRules); err != nil {
			t.Fatalf("h2's entry signed at serial %d does not verify: %v", p.Serial-1, err)
		}
		carry(older)
		testlab.Eventually(t, 10*time.Second, "h3 shows the carried older entry rejected as a replay", func() bool {
			return rejected(t, h3, "meshd-h2", peers.CodeReplay)
		})
		checkH3("after h2's older entry carried in a hint")
		if st, err := h3.status(t); err != nil || st.Catalog.HintsCarried < before.Catalog.HintsCarried+2 {
			t.Errorf("h3 counted %d carried hints during the attack (%v); want 2 at least", st.Catalog.HintsCarried-before.Catalog.HintsCarried, err)
		}

		// The whole list is the authority again once it is past the
		// hints: a catalog change (h1 registers and removes an instance on
		// its own agent, all its token may write), and h3 holds h2's own
		// entry with nothing rejected.
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "meshd-decoy-carried", Name: "meshd"}); err != nil {
			t.Fatalf("h1 registering a decoy: %v", err)
		}
		time.Sleep(2 * time.Second) // the agent syncs it to the servers
		if err := c.Agent().ServiceDeregister("meshd-decoy-carried"); err != nil {
			t.Fatal(err)
		}
		testlab.Eventually(t, 30*time.Second, "h3 holds h2's own entry again, nothing of it rejected", holdsH2)
		checkH3("after the carried entries")
	})

	t.Run("a wider prefix over everyone", func(t *testing.T) {
		evil := maps.Clone(h2Entry.Service.Meta)
		evil[peers.MetaNode] = "aaa-evil"
		evil[peers.MetaPrefix] = "fdaa::/24"
		evil[peers.MetaPublicKey] = fake.PublicKey().String()
		evil[peers.MetaEndpoint] = h1.Addr.String() + ":51820"
		// Registered through h1's own agent, as any host may: an older
		// registration than nobody's, but its credential is h2's.
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "meshd-aaa-evil", Name: "meshd", Meta: evil}); err != nil {
			t.Fatalf("h1 registering an instance on its own agent: %v", err)
		}
		defer c.Agent().ServiceDeregister("meshd-aaa-evil")
		testlab.Eventually(t, 10*time.Second, "h3 shows the wider prefix rejected", func() bool {
			return rejected(t, h3, "meshd-aaa-evil", "credential")
		})
		checkH3("with a wider prefix in the catalog")
	})

	t.Run("a withdrawal of h2 signed by h1", func(t *testing.T) {
		// h1 signs "h2 left" with its own identity, at a serial above
		// h2's, and hints it where the read finds no instance (h1's own
		// node, freshly changed so that the read is newer than the list).
		k, err := keystore.Load(filepath.Join(h1.Dir, "state", "identity.key"))
		if err != nil {
			t.Fatal(err)
		}
		seed := k.WG()
		serial := uint64(time.Now().Add(time.Hour).UnixNano())
		forged := &peers.Withdrawal{Serial: serial, Signature: ed25519.Sign(ed25519.NewKeyFromSeed(seed[:]), trust.WithdrawalBytes("h2", serial))}
		h1Node, err := c.Agent().NodeName()
		if err != nil {
			t.Fatal(err)
		}
		// Only a read newer than h3's list carries a withdrawal to its
		// planner: h1 changes the catalog (a decoy instance, all its
		// token may write) and hints at once, until one wins the race.
		before, _ := h3.status(t)
		refused := func() bool {
			st, err := h3.status(t)
			return err == nil && st.Withdrawals.Refused > before.Withdrawals.Refused
		}
		for i := 0; i < 20 && !refused(); i++ {
			id := fmt.Sprintf("meshd-decoy%d", i)
			if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "meshd"}); err != nil {
				t.Fatalf("h1 registering a decoy: %v", err)
			}
			defer c.Agent().ServiceDeregister(id)
			_, meta, err := c.Catalog().NodeServiceList(h1Node, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := catalogsync.WriteHint(ctx, c, "meshd/hint", catalogsync.Hint{ConsulNode: h1Node, ServiceID: "meshd-h2", Index: meta.LastIndex, Withdrawal: forged}); err != nil {
				t.Fatalf("h1 writing a hint: %v", err)
			}
			time.Sleep(500 * time.Millisecond)
			checkH3("after a withdrawal of h2 signed by h1")
		}
		testlab.Eventually(t, 10*time.Second, "h3 counts the forged withdrawal refused", refused)
		if st, _ := h3.status(t); st.Withdrawals.Verified != before.Withdrawals.Verified {
			t.Errorf("h3 verified %d withdrawals during the attack, want none", st.Withdrawals.Verified-before.Withdrawals.Verified)
		}
	})

	t.Run("hints naming h2's instance", func(t *testing.T) {
		// A duplicate of h2's instance ID on h1's own node, with h2's
		// gateway tag and another user-link key, then hints naming it and
		// naming h2's instance on a node where it does not exist (gone).
		dup := maps.Clone(h2Entry.Service.Meta)
		dup[gateway.MetaGatewayPublicKey] = fake.PublicKey().String()
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "meshd-h2", Name: "meshd", Tags: []string{gateway.Tag}, Meta: dup}); err != nil {
			t.Fatalf("h1 registering a duplicate of h2's instance: %v", err)
		}
		defer c.Agent().ServiceDeregister("meshd-h2")
		h1Node, err := c.Agent().NodeName()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{h1Node, "nowhere"} {
			if _, err := catalogsync.WriteHint(ctx, c, "meshd/hint", catalogsync.Hint{ConsulNode: n, ServiceID: "meshd-h2", Index: 1 << 40}); err != nil {
				t.Fatalf("h1 writing a hint: %v", err)
			}
			time.Sleep(time.Second)
			checkH3("after a hint naming meshd-h2 on " + n)
		}
		testlab.Eventually(t, 10*time.Second, "h3 shows the duplicate rejected", func() bool {
			return rejected(t, h3, "meshd-h2", "signature")
		})
		testlab.Eventually(t, 10*time.Second, "h2 reports the duplicate", func() bool {
			st, err := h2.status(t)
			return err == nil && st.Impersonation != nil && st.Impersonation.Rewritten > 0
		})
		// A user's configuration for h2's gateway names h2's own key.
		res := createPeer(t, h3, "--gateway", "h2", "--org", "acme", "--name", "laptop", "--consul-token", rootToken)
		if !strings.Contains(res.Config, "PublicKey = "+gwKey.Public().String()) || strings.Contains(res.Config, fake.PublicKey().String()) {
			t.Errorf("user config for h2's gateway does not name h2's user-link key %s:\n%s", gwKey.Public(), res.Config)
		}
		checkH3("with a duplicate gateway instance")
	})

	pinger.Signal(os.Interrupt)
	pinger.Wait(5 * time.Second)
	if sent, lost := unanswered(pinger.Log()); sent == 0 || len(lost) > 0 {
		t.Errorf("h3 -> h2 pings during the attacks: %d sent, unanswered %v; want every echo answered\n%s", sent, lost, pinger.Log())
	} else {
		t.Logf("h3 -> h2: %d echoes sent during the attacks, all answered", sent)
	}
	converged(t, nodes)
	pingAll(t, nodes)
}

// peerKeys is n's device's peers: key -> allowed IPs.
func peerKeys(t *testing.T, n *node) map[wgtypes.Key]string {
	t.Helper()
	d, err := n.device(t)
	if err != nil {
		t.Fatal(err)
	}
	m := map[wgtypes.Key]string{}
	for _, p := range d.Peers {
		m[p.PublicKey] = fmt.Sprint(p.AllowedIPs)
	}
	return m
}

// rejected reports whether n's status lists an entry of service ID id
// rejected with code.
func rejected(t *testing.T, n *node, id, code string) bool {
	st, err := n.status(t)
	if err != nil {
		return false
	}
	for _, p := range st.Peers {
		if p.ServiceID == id && p.State == agent.PeerRejected && p.Code == code {
			return true
		}
	}
	return false
}

// instance is the catalog's instance id on Consul node, or nil.
func instance(t *testing.T, c *api.Client, node, id string) *api.ServiceEntry {
	entries, _, err := c.Health().Service("meshd", "", false, nil)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		if e.Node.Node == node && e.Service.ID == id {
			return e
		}
	}
	return nil
}

// TestRevokeAndExpire: a revoked identity and an expired credential are
// removed from every other host within 10 s, with a removal grace of ten
// minutes; the host whose credential is about to expire warns, and once
// it has, is critical.
func TestRevokeAndExpire(t *testing.T) {
	_, _, nodes := startHosts(t, 3, "removal_grace: 10m\n")
	h1, h2, h3 := nodes[0], nodes[1], nodes[2]
	pingAll(t, nodes)
	h2Key, h3Key := h2.publicKey(t), h3.publicKey(t)

	// The authority revokes h2's identity.
	id := trusttest.IdentityIn(t, filepath.Join(h2.Dir, "state", "identity.key"))
	authorityKey := trusttest.KeyFile(t, t.TempDir())
	if out, err := h1.Exec(meshd(t), "authority", "revoke", "--config", h1.config, "--key", authorityKey,
		"--identity", base64.StdEncoding.EncodeToString(id)); err != nil {
		t.Fatalf("authority revoke: %v: %s", err, out)
	}
	revoked := time.Now()
	for _, n := range []*node{h1, h3} {
		testlab.Eventually(t, 10*time.Second, n.Name+" removed h2's peer (revoked)", func() bool {
			return !peerHeld(t, n, h2Key)
		})
	}
	t.Logf("h2's revoked identity left the others' kernels within %s", time.Since(revoked).Round(time.Millisecond))
	if !rejected(t, h1, "meshd-h2", peers.CodeRevoked) {
		t.Errorf("h1's status does not show h2's entry rejected as revoked")
	}

	// h3 gets a credential that expires in 20 s and restarts with it.
	notAfter := time.Now().Add(20 * time.Second).Truncate(time.Second)
	trusttest.ProvisionUntil(t, trusttest.Authority(), filepath.Join(h3.Dir, "state"), "h3", h3.prefix.String(),
		filepath.Join(h3.Dir, "state", "identity.key"), notAfter)
	h3.proc.Signal(syscall.SIGTERM)
	if exited, err := h3.proc.Wait(10 * time.Second); !exited {
		t.Fatalf("h3's meshd did not stop: %v", err)
	}
	h3.start(t)
	testlab.Eventually(t, 10*time.Second, "h3 warns that its credential expires", func() bool {
		out, _ := h3.Exec(meshd(t), "health", "--config", h3.config)
		return strings.Contains(out, "credential expires in")
	})
	if !peerHeld(t, h1, h3Key) {
		t.Fatal("h1 does not hold h3 before its credential expires")
	}
	time.Sleep(time.Until(notAfter))
	testlab.Eventually(t, 10*time.Second, "h1 removed h3's peer (expired)", func() bool { return !peerHeld(t, h1, h3Key) })
	t.Logf("h3's expired credential left h1's kernel %s after its not-after", time.Since(notAfter).Round(time.Millisecond))
	out, err := h3.Exec(meshd(t), "health", "--config", h3.config)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(out, "credential expired") {
		t.Errorf("meshd health on h3 after expiry: %v: %q; want exit 2 saying the credential expired", err, out)
	}
}

// peerHeld reports whether n's device has a peer with key k.
func peerHeld(t *testing.T, n *node, k wgtypes.Key) bool {
	_, ok := peerKeys(t, n)[k]
	return ok
}
