package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/internal/testlab"
)

// health runs `meshd health` on n and returns its exit code and line.
func (n *node) health(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := n.Exec(append([]string{meshd(t), "health", "--config", n.config}, args...)...)
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("meshd health on %s: %v", n.Name, err)
	}
	return code, strings.TrimSpace(out)
}

// statusJSON parses `meshd status --json` on n with the documented schema.
func (n *node) statusJSON(t *testing.T) agent.Status {
	t.Helper()
	out, err := n.Command(meshd(t), "status", "--json", "--config", n.config).Output()
	if err != nil {
		t.Fatalf("meshd status --json on %s: %v", n.Name, err)
	}
	var st agent.Status
	dec := json.NewDecoder(strings.NewReader(string(out)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("status --json of %s does not match the schema: %v\n%s", n.Name, err, out)
	}
	return st
}

// TestHealth checks the operator's view on real namespace hosts: status and
// health on a converged mesh, a rejected entry, a host whose underlay is
// cut, and a stopped agent.
func TestHealth(t *testing.T) {
	lab := testlab.NewLab(t)
	server := lab.StartConsulServer("consul")
	var nodes []*node
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, newNode(t, lab, []*testlab.Consul{server}, i, "removal_grace: 10m\nkeepalive: 1s\n"))
	}
	for _, n := range nodes {
		n.start(t)
	}
	defer checkNoRace(t, nodes)
	converged(t, nodes)
	h1, h2, h3 := nodes[0], nodes[1], nodes[2]

	// Every host lists every other as applied, with a handshake.
	for _, n := range nodes {
		testlab.Eventually(t, 30*time.Second, n.Name+" status lists the others applied with a handshake", func() bool {
			st := n.statusJSON(t)
			ok := 0
			for _, p := range st.Peers {
				if p.State == agent.PeerApplied && p.LatestHandshake != nil && p.RxBytes > 0 {
					ok++
				}
			}
			return st.Converged && st.LinkPresent && ok == len(nodes)-1
		})
		code, line := n.health(t)
		if code != 0 || !strings.HasPrefix(line, "OK") {
			t.Errorf("health on %s: %d %q, want 0 OK", n.Name, code, line)
		}
	}
	out, err := h1.Exec(meshd(t), "status", "--config", h1.config)
	if err != nil || !strings.Contains(out, "converged: yes") || !strings.Contains(out, "HANDSHAKE") {
		t.Errorf("meshd status: %v\n%s", err, out)
	}

	// A rejected catalog entry shows with its reason, and warns.
	c := server.Client(t)
	_, err = c.Catalog().Register(&api.CatalogRegistration{Node: "bogus", Address: "198.18.9.9",
		Service: &api.AgentService{ID: "meshd-bogus", Service: "meshd", Meta: map[string]string{
			"v": "1", "node": "bogus", "public_key": "nope", "endpoint": "198.18.9.9:51820", "prefix": "fdaa:0:9::/48"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "h1 lists the bogus entry as rejected with its reason", func() bool {
		for _, p := range h1.statusJSON(t).Peers {
			if p.ServiceID == "meshd-bogus" {
				return p.State == agent.PeerRejected && strings.Contains(p.Reason, "public_key")
			}
		}
		return false
	})
	if code, line := h1.health(t); code != 1 || !strings.Contains(line, "rejected") {
		t.Errorf("health with a rejected entry: %d %q, want 1 naming it", code, line)
	}
	if _, err := c.Catalog().Deregister(&api.CatalogDeregistration{Node: "bogus"}, nil); err != nil {
		t.Fatal(err)
	}
	testlab.Eventually(t, 20*time.Second, "h1 healthy again", func() bool { code, _ := h1.health(t); return code == 0 })

	// Cut h3's underlay. WireGuard re-handshakes every 2 minutes while
	// keepalives flow, so healthy peers stay under 135s and h3 goes over.
	if out, err := h3.Exec("ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatalf("cut h3's underlay: %v: %s", err, out)
	}
	for _, n := range []*node{h1, h2} {
		var line string
		testlab.Eventually(t, 4*time.Minute, n.Name+" health warns about h3", func() bool {
			var code int
			code, line = n.health(t, "--handshake-age", "135s")
			return code == 1 && strings.Contains(line, "(h3)")
		}, &line)
		t.Logf("%s: %s", n.Name, line)
	}

	// A stopped agent is critical.
	h1.proc.Signal(syscall.SIGTERM)
	if exited, _ := h1.proc.Wait(10 * time.Second); !exited {
		t.Fatal("meshd did not stop")
	}
	if code, line := h1.health(t); code != 2 || !strings.Contains(line, "not running") {
		t.Errorf("health with the agent stopped: %d %q, want 2", code, line)
	}
	if out, err := h1.Exec(meshd(t), "status", "--config", h1.config); err == nil || !strings.Contains(out, "not running") || !strings.Contains(out, "still up") {
		t.Errorf("status with the agent stopped: %v\n%s", err, out)
	}
}
