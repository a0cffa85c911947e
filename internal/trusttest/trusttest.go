// Package trusttest is the test fleet's authority: tests sign their hosts'
// entries with it, as a bootstrap service would, so that every test runs
// with trust on. Its seed is fixed, so that a failure reproduces.
package trusttest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"net/netip"
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
func Trust() *peers.Trust { return &peers.Trust{Authorities: []ed25519.PublicKey{Authority().Public()}} }

// Signer makes a new identity for node and has the test authority issue
// its credential for prefix and roles, valid for a day.
func Signer(t testing.TB, node string, prefix netip.Prefix, roles ...string) *trust.Signer {
	t.Helper()
	return SignerBy(t, Authority(), node, prefix, time.Now().Add(24*time.Hour), roles...)
}

// SignerBy is Signer with another authority and expiry.
func SignerBy(t testing.TB, a trust.AuthorityKey, node string, prefix netip.Prefix, notAfter time.Time, roles ...string) *trust.Signer {
	t.Helper()
	idSeed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(idSeed); err != nil {
		t.Fatal(err)
	}
	c, err := a.Issue(trust.Credential{Node: node, Prefix: prefix, Roles: roles, NotAfter: notAfter.Truncate(time.Second),
		Identity: ed25519.NewKeyFromSeed(idSeed).Public().(ed25519.PublicKey)})
	if err != nil {
		t.Fatal(err)
	}
	s, err := trust.NewSigner(idSeed, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
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
