package trust

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"testing"
)

// rfc8032 are the first three test vectors of RFC 8032, section 7.1
// (public key, message, signature; hex).
var rfc8032 = [][3]string{
	{"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
		"e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
	{"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
		"92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
	{"fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
		"6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"},
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVerifierVectors: RFC 8032's vectors verify alone and as one batch;
// a vector with one bit of its signature, message or key changed fails
// alone, and makes the batch holding it fail.
func TestVerifierVectors(t *testing.T) {
	good := NewBatch(len(rfc8032))
	for i, v := range rfc8032 {
		pub, msg, sig := ed25519.PublicKey(unhex(t, v[0])), unhex(t, v[1]), unhex(t, v[2])
		if !(Single{}).Check(pub, msg, sig) {
			t.Errorf("vector %d does not verify", i+1)
		}
		if !good.Check(pub, msg, sig) {
			t.Errorf("a batch answered false for vector %d", i+1)
		}
		for _, bit := range []struct {
			name string
			b    []byte
		}{{"signature R", sig[:1]}, {"signature S", sig[40:41]}, {"key", pub[5:6]}, {"message", append(msg, 0)}} {
			bit.b[0] ^= 1
			p, m, s := pub, msg, sig
			if bit.name == "message" {
				m = bit.b
			}
			if (Single{}).Check(p, m, s) {
				t.Errorf("vector %d with its %s changed verifies", i+1, bit.name)
			}
			bad := NewBatch(len(rfc8032) + 1)
			for _, w := range rfc8032 {
				bad.Check(unhex(t, w[0]), unhex(t, w[1]), unhex(t, w[2]))
			}
			bad.Check(p, m, s)
			if bad.Verify() {
				t.Errorf("a batch holding vector %d with its %s changed verifies", i+1, bit.name)
			}
			if bit.name != "message" {
				bit.b[0] ^= 1
			}
		}
	}
	if !good.Verify() {
		t.Error("the batch of RFC 8032's vectors does not verify")
	}
	if !NewBatch(0).Verify() {
		t.Error("an empty batch does not verify")
	}
	short := NewBatch(1)
	short.Check(make(ed25519.PublicKey, 31), nil, make([]byte, 64))
	if short.Verify() {
		t.Error("a batch holding a 31-byte key verifies")
	}
}

// TestBatchAgreesWithSingle: over many signatures, some of them bad, a
// batch verifies exactly when each of its signatures verifies alone.
func TestBatchAgreesWithSingle(t *testing.T) {
	const n = 64
	pubs := make([]ed25519.PublicKey, n)
	msgs := make([][]byte, n)
	sigs := make([][]byte, n)
	for i := range n {
		seed := make([]byte, 32)
		seed[0], seed[1] = byte(i), 7
		priv := ed25519.NewKeyFromSeed(seed)
		pubs[i] = priv.Public().(ed25519.PublicKey)
		msgs[i] = []byte(fmt.Sprintf("entry %d", i))
		sigs[i] = ed25519.Sign(priv, msgs[i])
	}
	sigs[17] = append([]byte(nil), sigs[17]...)
	sigs[17][10] ^= 0x80
	for _, span := range [][2]int{{0, 17}, {18, n}, {0, n}, {10, 20}, {17, 18}} {
		b := NewBatch(span[1] - span[0])
		all := true
		for i := span[0]; i < span[1]; i++ {
			b.Check(pubs[i], msgs[i], sigs[i])
			all = all && (Single{}).Check(pubs[i], msgs[i], sigs[i])
		}
		if got := b.Verify(); got != all {
			t.Errorf("signatures %d to %d: batch says %t, one by one %t", span[0], span[1]-1, got, all)
		}
	}
}
