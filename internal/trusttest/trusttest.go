// Package trusttest is the test fleet's authority: tests sign their hosts'
// entries with it, as a bootstrap service would, so that every test runs
// with trust on. Its seed is fixed, so that a failure reproduces.
package trusttest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"meshd.dev/meshd/keystore"
	"meshd.dev/meshd/peers"
	"meshd.dev/meshd/trust"
)

var seed = []byte("meshd test fleet authority seed!") // 32 bytes

// Authority is the test fleet's authority key.
func Authority() trust.AuthorityKey {
	a, err := trust.AuthorityFromSeed(seed)
	if err != nil {
		panic(err)
	}
	return a
}

// PublicKey is the authority's public key as trust.authorities lists it.
func PublicKey() string { return base64.StdEncoding.EncodeToString(Authority().Public()) }

// Trust is what a test host trusts: the test authority.
func Trust() *peers.Trust {
	return &peers.Trust{Authorities: []ed25519.PublicKey{Authority().Public()}}
}

// Signer makes a new identity for node and has the test authority issue
// its credential for prefix and roles, valid for Validity.
func Signer(t testing.TB, node string, prefix netip.Prefix, roles ...string) *trust.Signer {
	t.Helper()
	return SignerBy(t, Authority(), node, prefix, time.Now().Add(Validity), roles...)
}

// SignerBy is Signer with another authority and expiry.
func SignerBy(t testing.TB, a trust.AuthorityKey, node string, prefix netip.Prefix, notAfter time.Time, roles ...string) *trust.Signer {
	t.Helper()
	s, err := NewSigner(a, node, prefix, notAfter, roles...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// NewSigner is SignerBy for code outside a test (the benchmark's
// simulated nodes).
func NewSigner(a trust.AuthorityKey, node string, prefix netip.Prefix, notAfter time.Time, roles ...string) (*trust.Signer, error) {
	idSeed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(idSeed); err != nil {
		return nil, err
	}
	c, err := a.Issue(trust.Credential{Node: node, Prefix: prefix, Roles: roles, NotAfter: notAfter.Truncate(time.Second),
		Identity: ed25519.NewKeyFromSeed(idSeed).Public().(ed25519.PublicKey)})
	if err != nil {
		return nil, err
	}
	return trust.NewSigner(idSeed, c)
}

// KeyFile writes the authority's key file (as `meshd authority init`
// does) into dir and returns its path.
func KeyFile(t testing.TB, dir string) string {
	t.Helper()
	k, err := keystore.Parse(base64.StdEncoding.EncodeToString(seed))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "authority.key")
	if err := keystore.Save(path, k); err != nil {
		t.Fatal(err)
	}
	return path
}

// Provision writes what a host needs to sign its entries, as `meshd init
// --authority-key` would: its identity key (or takes the one at identity)
// and a credential that a signs for node, prefix and roles, valid for
// Validity, into dir (identity.key, credential). It returns both paths.
func Provision(t testing.TB, a trust.AuthorityKey, dir, node, prefix, identity string, roles ...string) (string, string) {
	t.Helper()
	return ProvisionUntil(t, a, dir, node, prefix, identity, time.Now().Add(Validity), roles...)
}

// ProvisionUntil is Provision with a credential valid until notAfter.
func ProvisionUntil(t testing.TB, a trust.AuthorityKey, dir, node, prefix, identity string, notAfter time.Time, roles ...string) (string, string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if identity == "" {
		identity = filepath.Join(dir, "identity.key")
		if _, _, err := keystore.LoadOrCreate(identity); err != nil {
			t.Fatal(err)
		}
	}
	pub := IdentityIn(t, identity)
	c, err := a.Issue(trust.Credential{Node: node, Prefix: netip.MustParsePrefix(prefix), Identity: pub, Roles: roles,
		NotAfter: notAfter.Truncate(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	credential := filepath.Join(dir, "credential")
	if err := os.WriteFile(credential, []byte(base64.StdEncoding.EncodeToString(c)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return identity, credential
}

// Validity is how long the test credentials are valid: a year, as a
// bootstrap service would issue them (under 30 days, meshd health warns).
const Validity = 365 * 24 * time.Hour

// IdentityIn is the public key of the identity key file at path.
func IdentityIn(t testing.TB, path string) ed25519.PublicKey {
	t.Helper()
	k, err := keystore.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	seed := k.WG()
	pub, err := trust.IdentityPublic(seed[:])
	if err != nil {
		t.Fatal(err)
	}
	return pub
}
