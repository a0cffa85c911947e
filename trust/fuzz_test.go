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

// FuzzBatch: a batch of good signatures and the input's verifies exactly
// when the input's signature verifies alone, so a host never judges an
// entry differently for having verified it among others. Two of the good
// ones are by the seeds' key: an input by it shares their term.
func FuzzBatch(f *testing.F) {
	signer := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	pub := signer.Public().(ed25519.PublicKey)
	f.Add([]byte(pub), []byte("m"), ed25519.Sign(signer, []byte("m")))
	f.Add([]byte(pub), []byte("m"), ed25519.Sign(signer, []byte("n")))
	pubs, sigs := zip215(f)
	for i := 0; i < len(pubs); i += 20 {
		f.Add(pubs[i], []byte("Zcash"), sigs[i])
		f.Add(pubs[i], []byte("Zcash?"), sigs[i])
	}
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{4}, 32))
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte) {
		alone := (Single{}).Check(pub, msg, sig)
		b := NewBatch(4)
		b.Check(pub, msg, sig)
		for i, k := range []ed25519.PrivateKey{signer, other, signer} {
			m := []byte{byte(i)}
			b.Check(k.Public().(ed25519.PublicKey), m, ed25519.Sign(k, m))
		}
		if got := b.Verify(); got != alone {
			t.Fatalf("batch says %t, alone %t (key %x, message %q, signature %x)", got, alone, pub, msg, sig)
		}
	})
}
