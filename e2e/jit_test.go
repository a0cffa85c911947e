package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/internal/testlab"
)

// TestGatewayJIT: a just-in-time gateway (the default) knows every record
// but holds in its kernel only the users that connect. A laptop whose peer
// is not in the kernel reaches a mesh host on its first wg-quick up and
// ping; idle for gateway.idle_timeout, it leaves the kernel (its record
// stays) and comes back on demand; removing its record cuts it off within
// 2 s. Forged initiations sent from another host (bad mac1, an unknown
// key, a replay, a valid key whose record was removed) install nothing,
// and status and metrics count them by reason.
func TestGatewayJIT(t *testing.T) {
	lab := testlab.NewLab(t)
	server := lab.StartConsulServer("consul")
	servers := []*testlab.Consul{server}
	gwIface := fmt.Sprintf("wj%dgw", os.Getpid()%10000)
	gw := newNode(t, lab, servers, 1, fmt.Sprintf("gateway:\n  enabled: true\n  interface: %s\n  idle_timeout: 10s\n", gwIface))
	b := newNode(t, lab, servers, 2, "")
	nodes := []*node{gw, b}
	for _, n := range nodes {
		n.start(t)
	}
	defer checkNoRace(t, nodes)
	converged(t, nodes)
	pingAll(t, nodes)
	kv := server.Client(t)
	var info gateway.Info
	testlab.Eventually(t, 30*time.Second, "the gateway is in the catalog with its role", func() bool {
		var err error
		info, err = gateway.Lookup(context.Background(), kv, "meshd", gw.Name, meshRules)
		return err == nil
	})
	checkLink(t, gw.Host, gwIface, gw.mode)
	jit := func() gateway.JITStatus {
		t.Helper()
		st, err := gw.status(t)
		if err != nil || st.Gateway == nil || st.Gateway.JIT == nil {
			t.Fatalf("gateway status without its JIT state: %+v, %v", st.Gateway, err)
		}
		return *st.Gateway.JIT
	}

	// Records of users who never connect, and one laptop's.
	const others = 20
	for i := range others {
		createPeer(t, b, "--gateway", gw.Name, "--org", "ci", "--name", fmt.Sprintf("job%d", i))
	}
	lap := &laptop{Host: lab.AddHost("lap1"), iface: fmt.Sprintf("wj%dlap", os.Getpid()%10000)}
	res := createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "laptop")
	lapKey := configKey(t, res.Config)
	testlab.Eventually(t, 10*time.Second, "the gateway knows every record", func() bool { return jit().Records == others+1 })
	if n := len(userPeers(t, gw, gwIface)); n != 0 {
		t.Fatalf("the gateway's kernel holds %d user peers before anyone connected, want 0", n)
	}
	pagesOfRecords(t, b, gw, others)

	// First wg-quick up and ping. The gateway initiates back at once, so
	// the first attempt usually completes in well under a second (the
	// unit tests check the kick; TestGatewayScale reports the spread);
	// the bound here leaves room for one more attempt of the laptop's own
	// (WireGuard retries after 5 s) on a loaded machine.
	up := time.Now()
	lap.up(t, res.Config)
	if !lap.pingWithin(b.meshAddr(), budget(8*time.Second)) {
		t.Fatalf("the laptop did not reach %s within %s of wg-quick up; gateway log:\n%s", b.Name, budget(8*time.Second), tail(gw.proc.Log(), 30))
	}
	t.Logf("first echo %s after wg-quick up (WireGuard itself retries an unanswered handshake after 5 s)", time.Since(up).Round(time.Millisecond))
	if got := userPeers(t, gw, gwIface); len(got) != 1 || got[lapKey] == "" {
		t.Errorf("the gateway's kernel holds %v, want only the laptop %s", got, lapKey)
	}
	if j := jit(); j.Active != 1 || j.Installs != 1 {
		t.Errorf("JIT status %+v, want 1 active, 1 install", j)
	}

	// Idle: the laptop goes down; its peer leaves the kernel, the record
	// stays; it comes back on demand.
	if out, err := lap.Exec("wg-quick", "down", lap.conf); err != nil {
		t.Fatalf("wg-quick down: %v: %s", err, out)
	}
	down := time.Now()
	testlab.Eventually(t, 10*time.Second+budget(10*time.Second), "the idle laptop leaves the gateway's kernel", func() bool {
		_, ok := userPeers(t, gw, gwIface)[lapKey]
		return !ok
	})
	t.Logf("evicted %s after the laptop went down (idle_timeout 10s)", time.Since(down).Round(time.Millisecond))
	if _, ok := gatewayKV(t, kv)[gateway.RecordKey(gw.Name, "acme", "laptop")]; !ok {
		t.Errorf("eviction removed the laptop's record")
	}
	if j := jit(); j.Evictions != 1 || j.Active != 0 {
		t.Errorf("JIT status %+v, want 1 eviction, none active", j)
	}
	lap.up(t, res.Config)
	if !lap.pingWithin(b.meshAddr(), budget(8*time.Second)) {
		t.Fatalf("the evicted laptop did not reconnect on demand")
	}

	// Removal cuts the active laptop off within 2 s.
	if out, err := gatewayPeerCmd(b, t, "remove", "--gateway", gw.Name, "--org", "acme", "--name", "laptop").CombinedOutput(); err != nil {
		t.Fatalf("remove: %v: %s", err, out)
	}
	testlab.Eventually(t, budget(2*time.Second), "the removed laptop leaves the gateway's kernel", func() bool {
		_, ok := userPeers(t, gw, gwIface)[lapKey]
		return !ok
	})
	if !lap.cannotPing(b.meshAddr()) {
		t.Errorf("the removed laptop still reaches %s", b.Name)
	}

	// Expiry cuts an active laptop off as removal does: within 2 s of it.
	brief := &laptop{Host: lab.AddHost("lap3"), iface: fmt.Sprintf("wj%dlb", os.Getpid()%10000)}
	lifetime := budget(6 * time.Second)
	resB := createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "brief", "--expires", lifetime.String())
	m := regexp.MustCompile(`expires (\S+)\n`).FindStringSubmatch(resB.Config)
	if m == nil {
		t.Fatalf("the configuration of an expiring peer says nothing of its expiry:\n%s", resB.Config)
	}
	expires, err := time.Parse(time.RFC3339, m[1])
	if err != nil {
		t.Fatal(err)
	}
	brief.up(t, resB.Config)
	if !brief.pingWithin(b.meshAddr(), budget(8*time.Second)) {
		t.Fatalf("the expiring laptop did not reach %s", b.Name)
	}
	testlab.Eventually(t, time.Until(expires)+budget(2*time.Second), "the expired laptop leaves the gateway's kernel", func() bool {
		_, ok := userPeers(t, gw, gwIface)[configKey(t, resB.Config)]
		return !ok
	})
	t.Logf("expired laptop out of the kernel %s after its expiry", time.Since(expires).Round(time.Millisecond))

	// A record deleted without its hint (its writer died after the
	// delete): the active peer is read again every resync_interval and
	// cut off.
	quiet := &laptop{Host: lab.AddHost("lap2"), iface: fmt.Sprintf("wj%dlq", os.Getpid()%10000)}
	resQ := createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "quiet")
	quiet.up(t, resQ.Config)
	if !quiet.pingWithin(b.meshAddr(), budget(8*time.Second)) {
		t.Fatalf("the second laptop did not reach %s", b.Name)
	}
	if _, err := kv.KV().Delete(gateway.RecordKey(gw.Name, "acme", "quiet"), nil); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, budget(5*time.Second), "a peer whose record went without a hint leaves the kernel", func() bool {
		_, ok := userPeers(t, gw, gwIface)[configKey(t, resQ.Config)]
		return !ok
	})

	// Forged initiations from another host on the underlay.
	mallory := lab.AddHost("mallory")
	send := func(msg []byte) {
		t.Helper()
		err := testlab.InNetns(mallory.Netns, func() error {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(info.Endpoint))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write(msg)
			return err
		})
		if err != nil {
			t.Fatalf("send from mallory: %v", err)
		}
	}
	before := jit()
	// A key the test holds, with a record, and two of its initiations.
	stolen, _ := wgtypes.GeneratePrivateKey()
	st0, err := gw.status(t)
	if err != nil || st0.Gateway == nil {
		t.Fatalf("gateway status: %v", err)
	}
	readsBefore := st0.Gateway.RecordReads
	createPeer(t, b, "--gateway", gw.Name, "--org", "acme", "--name", "stolen", "--public-key", stolen.PublicKey().String())
	testlab.Eventually(t, 10*time.Second, "the gateway reads the new record (its hint)", func() bool {
		st, err := gw.status(t)
		return err == nil && st.Gateway != nil && st.Gateway.RecordReads > readsBefore
	})
	first := testlab.Initiation(t, stolen, info.PublicKey)
	later := testlab.Initiation(t, stolen, info.PublicKey)
	junk := make([]byte, 148)
	rand.Read(junk)
	junk[0], junk[1], junk[2], junk[3] = 1, 0, 0, 0
	stranger, _ := wgtypes.GeneratePrivateKey()

	send(junk) // bad mac1
	send(testlab.Initiation(t, stranger, info.PublicKey))
	send(first) // valid: installs
	testlab.Eventually(t, budget(2*time.Second), "a valid initiation installs its peer", func() bool {
		_, ok := userPeers(t, gw, gwIface)[stolen.PublicKey()]
		return ok
	})
	send(first) // the same again: a replay
	if out, err := gatewayPeerCmd(b, t, "remove", "--gateway", gw.Name, "--org", "acme", "--name", "stolen").CombinedOutput(); err != nil {
		t.Fatalf("remove: %v: %s", err, out)
	}
	testlab.Eventually(t, budget(2*time.Second), "the removed record's peer leaves the kernel", func() bool {
		_, ok := userPeers(t, gw, gwIface)[stolen.PublicKey()]
		return !ok
	})
	send(later) // a valid key whose record is gone
	want := map[string]uint64{gateway.RefusedMAC1: 1, gateway.RefusedUnknownKey: 2, gateway.RefusedReplay: 1}
	testlab.Eventually(t, 5*time.Second, "the gateway counts each forged initiation by reason", func() bool {
		j := jit()
		for r, n := range want {
			if j.Refused[r]-before.Refused[r] < n {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second)
	if _, ok := userPeers(t, gw, gwIface)[stolen.PublicKey()]; ok {
		t.Errorf("an initiation of a removed record's key installed it")
	}
	j := jit()
	if j.Installs != before.Installs+1 {
		t.Errorf("installs went from %d to %d during the forgeries, want exactly the one valid initiation", before.Installs, j.Installs)
	}
	t.Logf("refused initiations by reason: %v", j.Refused)
	values := scrape(t, gw)
	if got := values[`meshd_gateway_initiations_refused_total{reason="replay"}`]; got < 1 {
		t.Errorf("meshd_gateway_initiations_refused_total{reason=\"replay\"} = %v, want at least 1", got)
	}
}

// pagesOfRecords lists the gateway's n "ci" records 7 at a time: each page
// continues where the last ended (ORG/NAME order), stderr says how to get
// the next, and the pages together are every record once. A bad --limit
// or --after is bad input.
func pagesOfRecords(t *testing.T, b, gw *node, n int) {
	t.Helper()
	var all []string
	after := ""
	for page := 0; ; page++ {
		args := []string{"--gateway", gw.Name, "--org", "ci", "--limit", "7", "--json"}
		if after != "" {
			args = append(args, "--after", after)
		}
		cmd := gatewayPeerCmd(b, t, "list", args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("list page %d: %v: %s", page, err, stderr.String())
		}
		var rows []struct{ Org, Name string }
		if err := json.Unmarshal(out, &rows); err != nil {
			t.Fatalf("list --json: %v: %s", err, out)
		}
		if len(rows) > 7 {
			t.Fatalf("page %d has %d rows, want at most 7", page, len(rows))
		}
		for _, r := range rows {
			all = append(all, r.Org+"/"+r.Name)
		}
		if len(all) == n {
			if stderr.Len() != 0 {
				t.Errorf("the last page says there is more: %s", stderr.String())
			}
			break
		}
		after = rows[len(rows)-1].Org + "/" + rows[len(rows)-1].Name
		if want := fmt.Sprintf("%d more peers: --after %s for the next page", n-len(all), after); !strings.Contains(stderr.String(), want) {
			t.Errorf("page %d: stderr %q, want %q", page, stderr.String(), want)
		}
		if page > n {
			t.Fatalf("paging does not end: %v", all)
		}
	}
	if !slices.IsSorted(all) || len(slices.Compact(slices.Clone(all))) != n {
		t.Errorf("the pages list %v, want %d distinct records in order", all, n)
	}
	for _, bad := range [][]string{{"--limit", "-1"}, {"--after", "no-slash"}} {
		out, err := gatewayPeerCmd(b, t, "list", append([]string{"--gateway", gw.Name}, bad...)...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), bad[0]) {
			t.Errorf("list %v: %v %q, want exit 2 naming %s", bad, err, out, bad[0])
		}
	}
}
