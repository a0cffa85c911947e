package agent

import (
	"maps"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/trusttest"
	"meshd.dev/meshd/peers"
)

func signedRegistration(t *testing.T) catalogsync.Registration {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	r := catalogsync.Registration{Service: "meshd", Node: "r1", PublicKey: k.PublicKey(),
		Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"), Prefix: netip.MustParsePrefix("fdaa:0:1::/48"),
		Serial: catalogsync.NewSerial(0)}
	r.Signer = trusttest.Signer(t, r.Node, r.Prefix)
	return r
}

// TestMatchesOwn: the remembered match holds only for the entry version
// that matched (its ModifyIndex) under the serial and key it matched; a
// rewritten entry (a new index), an entry without an index, a rotated key
// or a new serial are each checked again, and a rewrite is caught.
func TestMatchesOwn(t *testing.T) {
	reg := signedRegistration(t)
	a := &Agent{opts: Options{Registration: reg}}
	own := peers.Entry{ServiceID: reg.ID(), Meta: reg.Meta(), Tags: reg.Tags, ModifyIndex: 10}
	rewritten := own
	rewritten.Meta = maps.Clone(own.Meta)
	rewritten.Meta[peers.MetaEndpoint] = "198.18.0.99:51820"
	rewritten.ModifyIndex = 11

	if !a.matchesOwn(own) {
		t.Fatal("own entry does not match")
	}
	// The second time signs nothing: with the signer taken away (an
	// unsigned Meta cannot match a signed entry), the remembered match
	// still holds.
	signer := a.opts.Registration.Signer
	a.opts.Registration.Signer = nil
	if !a.matchesOwn(own) {
		t.Fatal("own entry does not match the second time: the match was not remembered")
	}
	a.opts.Registration.Signer = signer
	if a.matchesOwn(rewritten) {
		t.Fatal("a rewritten entry (new ModifyIndex) matches")
	}
	// The same content under an index never seen is checked, not assumed.
	noIndex := rewritten
	noIndex.ModifyIndex = 0
	if a.matchesOwn(noIndex) {
		t.Fatal("a rewritten entry without an index matches")
	}
	if !a.matchesOwn(own) {
		t.Fatal("own entry does not match after a rewrite was seen")
	}
	// A new serial (a rotation signs anew): the old entry no longer says
	// what the registration does.
	a.opts.Registration.Serial = catalogsync.NewSerial(reg.Serial)
	if a.matchesOwn(own) {
		t.Fatal("the entry signed under the old serial matches after the serial changed")
	}
	a.opts.Registration.Serial = reg.Serial
	a.opts.Registration.PublicKey = signedRegistration(t).PublicKey
	if a.matchesOwn(own) {
		t.Fatal("the entry of the old key matches after the key changed")
	}
}
