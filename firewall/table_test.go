package firewall_test

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"meshd.dev/meshd/firewall"
	"meshd.dev/meshd/internal/testlab"
)

func TestMain(m *testing.M) { testlab.Main(m) }

func nft(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	// One space for every run of white space: nft wraps long lines.
	return strings.Join(strings.Fields(string(out)), " ")
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestTable applies rulesets to the kernel and reads them back with the nft
// command: the rules say what they should, only changed sources are
// written, an unchanged ruleset writes nothing, and other tables are never
// touched.
func TestTable(t *testing.T) {
	testlab.RequireRoot(t)
	// A table of someone else's, with a rule, must survive everything.
	nft(t, "add", "table", "ip6", "other")
	nft(t, "add", "chain", "ip6", "other", "c")
	nft(t, "add", "rule", "ip6", "other", "c", "ip6", "daddr", "fdaa::1", "accept")
	foreign := nft(t, "list", "table", "ip6", "other")

	tbl, err := firewall.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Remove() })

	rs := firewall.Ruleset{Interface: "wg-gw", MeshInterface: "wg0", Rules: []firewall.Rule{
		{Sources: addrs("fdaa:1:0:8000::1", "fdaa:1:0:8000::2"), Destinations: prefixes("fdaa::/16")},
		{Sources: addrs("fdaa:1:0:8000::3"), Destinations: prefixes("fdaa:2::/48", "fdaa:3::/48")},
	}}
	if err := tbl.Apply(rs); err != nil {
		t.Fatal(err)
	}
	got := nft(t, "list", "table", "ip6", "meshd")
	for _, want := range []string{
		`iifname "wg-gw" jump users`,
		`oifname "wg0" iifname != "wg-gw" iifname != "wg0" counter packets 0 bytes 0 drop`,
		"type filter hook input priority filter; policy accept;",
		"type filter hook forward priority filter; policy accept;",
		"ip6 saddr @sources0 ip6 daddr fdaa::/16 accept",
		"ip6 saddr @sources1 ip6 daddr fdaa:2::/48 accept",
		"ip6 saddr @sources1 ip6 daddr fdaa:3::/48 accept",
		"counter packets 0 bytes 0 drop",
		"elements = { fdaa:1:0:8000::1, fdaa:1:0:8000::2 }",
		"elements = { fdaa:1:0:8000::3 }",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	writes := tbl.Writes()

	// The same ruleset again: nothing written.
	if err := tbl.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if n := tbl.Writes() - writes; n != 0 {
		t.Errorf("unchanged ruleset made %d writes, want 0", n)
	}

	// One more source: one transaction, the rest of the table as it was.
	rs.Rules[0].Sources = append(rs.Rules[0].Sources, netip.MustParseAddr("fdaa:1:0:8000::4"))
	if err := tbl.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if n := tbl.Writes() - writes; n != 1 {
		t.Errorf("one new source made %d writes, want 1", n)
	}
	got = nft(t, "list", "set", "ip6", "meshd", "sources0")
	if !strings.Contains(got, "fdaa:1:0:8000::4") || !strings.Contains(got, "fdaa:1:0:8000::1") {
		t.Errorf("sources0 after adding ::4:\n%s", got)
	}

	// Removing a source and a whole policy rebuilds, leaving only what
	// is asked for.
	rs.Rules = rs.Rules[:1]
	rs.Rules[0].Sources = addrs("fdaa:1:0:8000::2")
	if err := tbl.Apply(rs); err != nil {
		t.Fatal(err)
	}
	got = nft(t, "list", "table", "ip6", "meshd")
	if strings.Contains(got, "sources1") || strings.Contains(got, "8000::1") || !strings.Contains(got, "elements = { fdaa:1:0:8000::2 }") {
		t.Errorf("table after dropping a policy:\n%s", got)
	}

	// Rules flushed behind meshd's back (the table stays): Intact says
	// so, and after Forget the next Apply rebuilds.
	if ok, err := tbl.Intact(); !ok || err != nil {
		t.Fatalf("Intact on the table as applied: %v, %v", ok, err)
	}
	nft(t, "flush", "table", "ip6", "meshd")
	if ok, err := tbl.Intact(); ok || err != nil {
		t.Errorf("Intact after nft flush table: %v, %v; want false", ok, err)
	}
	tbl.Forget()
	if err := tbl.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if got := nft(t, "list", "table", "ip6", "meshd"); !strings.Contains(got, "ip6 saddr @sources0 ip6 daddr fdaa::/16 accept") {
		t.Errorf("rules not rebuilt after a flush:\n%s", got)
	}
	if ok, err := tbl.Intact(); !ok || err != nil {
		t.Errorf("Intact after the rebuild: %v, %v", ok, err)
	}

	// A table deleted behind meshd's back comes back on the next Apply.
	nft(t, "delete", "table", "ip6", "meshd")
	if ok, err := tbl.Intact(); ok || err != nil {
		t.Errorf("Intact after nft delete table: %v, %v; want false", ok, err)
	}
	if err := tbl.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if got := nft(t, "list", "table", "ip6", "meshd"); !strings.Contains(got, "elements = { fdaa:1:0:8000::2 }") {
		t.Errorf("table not rebuilt:\n%s", got)
	}

	// A second Table (meshd restarted) rebuilds once, then is idle.
	tbl2, err := firewall.Open()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := tbl2.Apply(rs); err != nil {
			t.Fatal(err)
		}
	}
	if tbl2.Writes() != 1 {
		t.Errorf("restarted table made %d writes for two equal applies, want 1", tbl2.Writes())
	}

	if err := tbl.Remove(); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nft", "list", "table", "ip6", "meshd").CombinedOutput(); err == nil {
		t.Errorf("table still there after Remove:\n%s", out)
	}
	if err := tbl.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if got := nft(t, "list", "table", "ip6", "other"); got != foreign {
		t.Errorf("foreign table changed:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}
}

// TestTableReserved writes a ruleset with a pool, the gateway's own prefix
// and another gateway's prefix, and reads it back: the rules come in the
// documented order, and a change of one organization's reach is one write
// of that set alone.
func TestTableReserved(t *testing.T) {
	testlab.RequireRoot(t)
	tbl, err := firewall.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Remove() })
	rs := firewall.Ruleset{Interface: "wg-gw", MeshInterface: "wg0",
		Pool: netip.MustParsePrefix("fdaa:1:0:8000::/49"), Own: netip.MustParsePrefix("fdaa:1::/48"),
		Reserved: prefixes("fdaa:7::/48"),
		Rules: []firewall.Rule{
			{Sources: addrs("fdaa:1:0:8000::1"), Destinations: prefixes("fdaa::/16")},
			{Sources: addrs("fdaa:1:0:8000::2", "fdaa:1:0:8000::3"), Group: "acme",
				Named: prefixes("fdaa:1::/48", "fdaa:7::1/128"), Reach: addrs("fdaa:1:0:8000::2", "fdaa:1:0:8000::3"),
				Destinations: prefixes("fdaa::/16")},
		}}
	if err := tbl.Apply(rs); err != nil {
		t.Fatal(err)
	}
	got := nft(t, "list", "table", "ip6", "meshd")
	if want := `oifname "wg-gw" ip6 saddr fdaa:7::/48 ct state ! established,related counter packets 0 bytes 0 drop`; !strings.Contains(got, want) {
		t.Errorf("table lacks %q:\n%s", want, got)
	}
	order := []string{
		"chain users {",
		"ip6 saddr @sources1 ip6 daddr fdaa:1::/48 ip6 daddr @reach1 accept",
		"ip6 daddr fdaa:1:0:8000::/49 counter packets 0 bytes 0 drop",
		"ip6 saddr @sources1 ip6 daddr fdaa:1::/48 accept",
		"ip6 saddr @sources1 ip6 daddr fdaa:7::1 accept",
		"ip6 daddr fdaa:1::/48 counter packets 0 bytes 0 drop",
		"ip6 daddr fdaa:7::/48 counter packets 0 bytes 0 drop",
		"ip6 saddr @sources0 ip6 daddr fdaa::/16 accept",
		"ip6 saddr @sources1 ip6 daddr fdaa::/16 accept",
	}
	at := 0
	for _, want := range order {
		i := strings.Index(got[at:], want)
		if i < 0 {
			t.Fatalf("table lacks %q after position %d:\n%s", want, at, got)
		}
		at += i + len(want)
	}
	if strings.Contains(got, "reach0") {
		t.Errorf("a rule that names nothing in the pool has a reach set:\n%s", got)
	}
	writes := tbl.Writes()
	rs.Rules[1].Reach = addrs("fdaa:1:0:8000::2")
	if err := tbl.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if n := tbl.Writes() - writes; n != 1 {
		t.Errorf("a smaller reach made %d writes, want 1", n)
	}
	if got := nft(t, "list", "set", "ip6", "meshd", "reach1"); !strings.Contains(got, "elements = { fdaa:1:0:8000::2 }") {
		t.Errorf("reach1 after removing ::3:\n%s", got)
	}
	if ok, err := tbl.Intact(); !ok || err != nil {
		t.Errorf("Intact: %v, %v", ok, err)
	}
}
