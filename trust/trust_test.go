package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

// Fixed keys from fixed seeds: ed25519 is deterministic, so the committed
// vectors are exact.
var (
	authority, _ = AuthorityFromSeed(bytes.Repeat([]byte{1}, 32))
	identity     = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	now          = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
)

func vectorCredential() Credential {
	return Credential{Node: "h1", Prefix: netip.MustParsePrefix("fdaa:0:1::/48"),
		Identity: identity.Public().(ed25519.PublicKey), Roles: []string{"gateway"},
		NotAfter: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func vectorClaims() Claims {
	var k, g wgtypes.Key
	k[0], g[0] = 0xaa, 0xbb
	return Claims{Node: "h1", PublicKey: k, Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"),
		Prefix: netip.MustParsePrefix("fdaa:0:1::/48"), Keepalive: 25 * time.Second,
		GatewayKey: g, GatewayEndpoint: netip.MustParseAddrPort("[2001:db8::1]:51821"), Serial: 7}
}

type vectors struct {
	Authority  string `json:"authority"`  // base64 public key
	Credential string `json:"credential"` // hex
	Claims     string `json:"claims"`     // hex of the signed bytes
	Signature  string `json:"signature"`  // base64, as in Meta
	Revocation string `json:"revocation"` // hex, of node h1
	Withdrawal string `json:"withdrawal"` // base64, h1's identity withdrawing h1 at serial 9
}

// TestVectors checks the committed vectors: the credential and entry
// signed once and stored verify, decode to the fields they were made
// from, and signing those fields again gives the same bytes.
func TestVectors(t *testing.T) {
	cred, err := authority.Issue(vectorCredential())
	if err != nil {
		t.Fatal(err)
	}
	revocation, err := authority.Revoke(Revocation{Node: "h1", Issued: time.Date(2027, 6, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	v := vectors{
		Revocation: hex.EncodeToString(revocation),
		Authority:  base64.StdEncoding.EncodeToString(authority.Public()),
		Credential: hex.EncodeToString(cred),
		Claims:     hex.EncodeToString(vectorClaims().Bytes()),
		Signature:  base64.StdEncoding.EncodeToString(Sign(identity, vectorClaims())),
		Withdrawal: base64.StdEncoding.EncodeToString(ed25519.Sign(identity, WithdrawalBytes("h1", 9))),
	}
	path := filepath.Join("testdata", "vectors.json")
	if *update {
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stored vectors
	if err := json.Unmarshal(b, &stored); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(stored, v); diff != "" {
		t.Errorf("the code no longer makes the committed bytes (-committed +now):\n%s", diff)
	}
	trusted, _ := base64.StdEncoding.DecodeString(stored.Authority)
	credBytes, _ := hex.DecodeString(stored.Credential)
	sig, err := ParseSignature(stored.Signature)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyEntry(credBytes, vectorClaims(), sig, []ed25519.PublicKey{trusted}, now)
	if err != nil {
		t.Fatalf("committed vectors do not verify: %v", err)
	}
	want := vectorCredential()
	want.Authority = trusted
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("committed credential decodes to (-want +got):\n%s", diff)
	}
	revBytes, _ := hex.DecodeString(stored.Revocation)
	if r, err := VerifyRevocation(revBytes, []ed25519.PublicKey{trusted}); err != nil || !r.Revokes(got) {
		t.Errorf("committed revocation: %+v, %v; want it to revoke the committed credential", r, err)
	}
	if w, _ := base64.StdEncoding.DecodeString(stored.Withdrawal); !VerifyWithdrawal(got.Identity, "h1", 9, w) {
		t.Errorf("committed withdrawal does not verify with the committed credential's identity")
	}
	if claims, _ := hex.DecodeString(stored.Claims); !bytes.HasPrefix(claims, []byte("meshd-entry-v1\x00\x01")) {
		t.Errorf("signed claims do not start with the context and version: %q", claims[:20])
	}
}

func TestVerifyRefuses(t *testing.T) {
	cred, _ := authority.Issue(vectorCredential())
	sig := Sign(identity, vectorClaims())
	trusted := []ed25519.PublicKey{authority.Public()}
	other, _ := AuthorityFromSeed(bytes.Repeat([]byte{3}, 32))
	otherCred, _ := other.Issue(vectorCredential())
	credSig := cred[len(cred)-ed25519.SignatureSize:]
	tests := []struct {
		name   string
		cred   []byte
		claims func(*Claims)
		sig    []byte
		now    time.Time
		want   error
	}{
		{name: "valid", cred: cred, sig: sig, now: now},
		{name: "unknown authority", cred: otherCred, sig: sig, now: now, want: ErrUntrusted},
		{name: "expired", cred: cred, sig: sig, now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), want: ErrExpired},
		{name: "key rewritten", cred: cred, sig: sig, now: now, claims: func(c *Claims) { c.PublicKey[1] = 1 }, want: ErrBadSig},
		{name: "endpoint rewritten", cred: cred, sig: sig, now: now, claims: func(c *Claims) { c.Endpoint = netip.MustParseAddrPort("198.51.100.1:51820") }, want: ErrBadSig},
		{name: "gateway key rewritten", cred: cred, sig: sig, now: now, claims: func(c *Claims) { c.GatewayKey[2] = 9 }, want: ErrBadSig},
		{name: "serial replayed lower", cred: cred, sig: sig, now: now, claims: func(c *Claims) { c.Serial = 6 }, want: ErrBadSig},
		{name: "wider prefix", cred: cred, sig: sig, now: now, claims: func(c *Claims) { c.Prefix = netip.MustParsePrefix("fdaa::/32") }, want: ErrMismatch},
		{name: "other node", cred: cred, sig: sig, now: now, claims: func(c *Claims) { c.Node = "h2" }, want: ErrMismatch},
		{name: "credential's signature as the entry's", cred: cred, sig: credSig, now: now, want: ErrBadSig},
		{name: "short signature", cred: cred, sig: sig[:63], now: now, want: ErrBadSig},
		{name: "truncated credential", cred: cred[:len(cred)-1], sig: sig, now: now, want: ErrMalformed},
		{name: "trailing byte", cred: append(append([]byte{}, cred...), 0), sig: sig, now: now, want: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := vectorClaims()
			if tt.claims != nil {
				tt.claims(&c)
			}
			_, err := VerifyEntry(tt.cred, c, tt.sig, trusted, tt.now)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("VerifyEntry = %v, want %v", err, tt.want)
			}
		})
	}
	// Every single flipped bit of a credential is refused.
	for i := range len(cred) * 8 {
		bad := append([]byte{}, cred...)
		bad[i/8] ^= 1 << (i % 8)
		if _, err := VerifyCredential(bad, trusted, now); err == nil {
			t.Fatalf("credential with bit %d flipped verifies", i)
		}
	}
}

// TestDomainSeparation: an authority's signature over a message shaped
// like entry claims does not verify as a credential, and the reverse.
func TestDomainSeparation(t *testing.T) {
	cred, _ := authority.Issue(vectorCredential())
	body := cred[:len(cred)-ed25519.SignatureSize]
	if ed25519.Verify(authority.Public(), body, cred[len(cred)-ed25519.SignatureSize:]) {
		t.Error("the credential's signature verifies without its context")
	}
	if !strings.HasPrefix(credentialContext, "meshd-credential-v1") || credentialContext == entryContext {
		t.Error("contexts are not distinct")
	}
}

func TestAuthorityKeyNeverPrints(t *testing.T) {
	seed := base64.StdEncoding.EncodeToString(authority.Seed())
	priv := base64.StdEncoding.EncodeToString(authority.priv)
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(f, authority)
		if strings.Contains(out, seed) || strings.Contains(out, priv) || strings.Contains(out, hex.EncodeToString(authority.Seed())) {
			t.Errorf("%s prints the private key: %s", f, out)
		}
	}
	if _, err := AuthorityFromSeed([]byte("short")); !errors.Is(err, ErrMalformed) {
		t.Errorf("a short seed: %v", err)
	}
}

func TestIssueRefuses(t *testing.T) {
	for name, mod := range map[string]func(*Credential){
		"no node":        func(c *Credential) { c.Node = "" },
		"long node":      func(c *Credential) { c.Node = strings.Repeat("a", 64) },
		"IPv4 prefix":    func(c *Credential) { c.Prefix = netip.MustParsePrefix("10.0.0.0/8") },
		"host bits":      func(c *Credential) { c.Prefix = netip.MustParsePrefix("fdaa::1/48") },
		"short identity": func(c *Credential) { c.Identity = c.Identity[:31] },
		"five roles":     func(c *Credential) { c.Roles = []string{"a", "b", "c", "d", "e"} },
		"empty role":     func(c *Credential) { c.Roles = []string{""} },
	} {
		c := vectorCredential()
		mod(&c)
		if _, err := authority.Issue(c); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Issue = %v, want ErrMalformed", name, err)
		}
	}
	c := vectorCredential()
	c.Node, c.Roles = strings.Repeat("a", 63), []string{strings.Repeat("r", 32), strings.Repeat("s", 32), strings.Repeat("t", 32), strings.Repeat("u", 32)}
	cred, err := authority.Issue(c)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(base64.StdEncoding.EncodeToString(cred)); n > 512 {
		t.Errorf("the largest credential is %d characters in base64, over Consul's 512", n)
	}
}

// TestRevocation: a revocation of a node or of an identity key verifies
// against the trusted authority and withdraws exactly the credentials it
// names; an untrusted authority's, a flipped bit, or one naming both is
// refused.
func TestRevocation(t *testing.T) {
	trusted := []ed25519.PublicKey{authority.Public()}
	cred := vectorCredential()
	other := vectorCredential()
	other.Node, other.Identity = "h2", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{4}, 32)).Public().(ed25519.PublicKey)
	issued := time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC)
	for _, r := range []Revocation{{Node: "h1", Issued: issued}, {Identity: cred.Identity, Issued: issued}} {
		b, err := authority.Revoke(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := VerifyRevocation(b, trusted)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Revokes(cred) || got.Revokes(other) || !got.Issued.Equal(issued) {
			t.Errorf("%+v revokes h1: %v, h2: %v", got, got.Revokes(cred), got.Revokes(other))
		}
		for i := range len(b) * 8 {
			bad := append([]byte{}, b...)
			bad[i/8] ^= 1 << (i % 8)
			if _, err := VerifyRevocation(bad, trusted); err == nil {
				t.Fatalf("revocation with bit %d flipped verifies", i)
			}
		}
		if _, err := VerifyRevocation(b, []ed25519.PublicKey{identity.Public().(ed25519.PublicKey)}); !errors.Is(err, ErrUntrusted) {
			t.Errorf("revocation against another authority: %v", err)
		}
	}
	if _, err := authority.Revoke(Revocation{Node: "h1", Identity: cred.Identity}); !errors.Is(err, ErrMalformed) {
		t.Errorf("a revocation naming both: %v", err)
	}
	if _, err := authority.Revoke(Revocation{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("a revocation naming nothing: %v", err)
	}
}

// TestWithdrawal: a withdrawal verifies for its node and serial under the
// identity that signed it, and for nothing else.
func TestWithdrawal(t *testing.T) {
	cred, _ := authority.Issue(vectorCredential())
	s, err := NewSigner(identity.Seed(), cred)
	if err != nil {
		t.Fatal(err)
	}
	sig := s.SignWithdrawal(9)
	pub := identity.Public().(ed25519.PublicKey)
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32)).Public().(ed25519.PublicKey)
	if !VerifyWithdrawal(pub, "h1", 9, sig) {
		t.Fatal("a withdrawal does not verify")
	}
	for _, tc := range []struct {
		name   string
		id     ed25519.PublicKey
		node   string
		serial uint64
		sig    []byte
	}{
		{"another node", pub, "h2", 9, sig},
		{"another serial", pub, "h1", 10, sig},
		{"another identity", other, "h1", 9, sig},
		{"truncated signature", pub, "h1", 9, sig[:63]},
		{"no identity", nil, "h1", 9, sig},
		{"an entry signature", pub, "h1", 9, Sign(identity, vectorClaims())},
	} {
		if VerifyWithdrawal(tc.id, tc.node, tc.serial, tc.sig) {
			t.Errorf("%s: verifies", tc.name)
		}
	}
}
