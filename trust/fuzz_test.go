package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"testing"
)

// FuzzParseCredential: no input panics; an input that parses has exactly
// one reading (its fields encode back to the same body) and verifies only
// if it is the genuine credential.
func FuzzParseCredential(f *testing.F) {
	cred, _ := authority.Issue(vectorCredential())
	f.Add(cred)
	f.Add(cred[:40])
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, sig, err := ParseCredential(b)
		if err != nil {
			return
		}
		body, err := c.body()
		if err != nil {
			return // fields Issue refuses (empty roles) parse but never verify as issued
		}
		if !bytes.Equal(append(body, sig...), b) {
			t.Fatalf("non-canonical encoding parsed:\n%x\n%x", b, append(body, sig...))
		}
		if _, err := VerifyCredential(b, []ed25519.PublicKey{authority.Public()}, now); err == nil && !bytes.Equal(b, cred) {
			t.Fatalf("a forged credential verifies: %x", b)
		}
	})
}

// FuzzParseSignature: a Meta signature value parses only as the one
// base64 spelling of 64 bytes.
func FuzzParseSignature(f *testing.F) {
	f.Add(base64.StdEncoding.EncodeToString(Sign(identity, vectorClaims())))
	f.Add("")
	f.Add("AAAA\n")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseSignature(s)
		if err != nil {
			return
		}
		if len(b) != ed25519.SignatureSize || base64.StdEncoding.EncodeToString(b) != s {
			t.Fatalf("%q parsed as %x", s, b)
		}
	})
}

// FuzzParseRevocation: no input panics; one that parses has exactly one
// reading, and verifies only if it is a revocation the authority signed.
func FuzzParseRevocation(f *testing.F) {
	node, _ := authority.Revoke(Revocation{Node: "h1"})
	id, _ := authority.Revoke(Revocation{Identity: identity.Public().(ed25519.PublicKey)})
	f.Add(node)
	f.Add(id)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, sig, err := ParseRevocation(b)
		if err != nil {
			return
		}
		body, err := r.body()
		if err != nil {
			return
		}
		if !bytes.Equal(append(body, sig...), b) {
			t.Fatalf("non-canonical encoding parsed: %x", b)
		}
		if _, err := VerifyRevocation(b, []ed25519.PublicKey{authority.Public()}); err == nil && !bytes.Equal(b, node) && !bytes.Equal(b, id) {
			t.Fatalf("a forged revocation verifies: %x", b)
		}
	})
}
