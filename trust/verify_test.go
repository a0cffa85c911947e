package trust

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hdevalence/ed25519consensus"
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

// zip215 reads testdata/zip215.txt: ZIP 215's cases, each valid under its
// rules (most of them only there: small-order keys and R, non-canonical
// point encodings), over the message "Zcash".
func zip215(t testing.TB) (pubs, sigs [][]byte) {
	b, err := os.ReadFile("testdata/zip215.txt")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		pub, err1 := hex.DecodeString(f[0])
		sig, err2 := hex.DecodeString(f[1])
		if len(f) != 2 || err1 != nil || err2 != nil {
			t.Fatalf("testdata/zip215.txt: bad line %q", line)
		}
		pubs, sigs = append(pubs, pub), append(sigs, sig)
	}
	if len(pubs) != 196 {
		t.Fatalf("testdata/zip215.txt: %d cases, want 196", len(pubs))
	}
	return pubs, sigs
}

// TestZIP215: every one of ZIP 215's cases verifies alone and in one
// batch (where many share a key, gathered into one term), so a batch and
// a single check never judge an entry differently; each with its message
// changed fails alone, and makes a batch of all the others fail.
func TestZIP215(t *testing.T) {
	pubs, sigs := zip215(t)
	all := NewBatch(len(pubs))
	for i := range pubs {
		if !(Single{}).Check(pubs[i], []byte("Zcash"), sigs[i]) {
			t.Errorf("case %d does not verify alone", i)
		}
		all.Check(pubs[i], []byte("Zcash"), sigs[i])
	}
	if len(all.enc) >= len(pubs) {
		t.Errorf("a batch of %d cases holds %d keys: the shared keys are not gathered", len(pubs), len(all.enc))
	}
	if !all.Verify() {
		t.Error("the batch of ZIP 215's cases does not verify")
	}
	// A small-order key's signature verifies over any message; the others
	// must not.
	for _, i := range []int{0, 50, 100, 195} {
		msg := []byte("Zcash!")
		alone := (Single{}).Check(pubs[i], msg, sigs[i])
		b := NewBatch(len(pubs))
		for j := range pubs {
			if j != i {
				b.Check(pubs[j], []byte("Zcash"), sigs[j])
			}
		}
		b.Check(pubs[i], msg, sigs[i])
		if got := b.Verify(); got != alone {
			t.Errorf("case %d over another message: batch says %t, alone %t", i, got, alone)
		}
	}
}

// TestBatchSharedKey: with one key signing most of a batch (a fleet's
// authority signs every credential), one bad signature by that key, or by
// another, fails the batch; all good ones pass.
func TestBatchSharedKey(t *testing.T) {
	authority := ed25519.NewKeyFromSeed(make([]byte, 32))
	const n = 100
	type sig struct {
		pub      ed25519.PublicKey
		msg, sig []byte
	}
	var sigs []sig
	for i := range n {
		m := []byte(fmt.Sprintf("credential %d", i))
		sigs = append(sigs, sig{authority.Public().(ed25519.PublicKey), m, ed25519.Sign(authority, m)})
		seed := make([]byte, 32)
		seed[0], seed[1] = byte(i), 9
		id := ed25519.NewKeyFromSeed(seed)
		m = []byte(fmt.Sprintf("entry %d", i))
		sigs = append(sigs, sig{id.Public().(ed25519.PublicKey), m, ed25519.Sign(id, m)})
	}
	verify := func(bad int) bool {
		b := NewBatch(len(sigs))
		for i, s := range sigs {
			sg := s.sig
			if i == bad {
				sg = append([]byte(nil), sg...)
				sg[33] ^= 1
			}
			b.Check(s.pub, s.msg, sg)
		}
		if len(b.enc) != n+1 {
			t.Errorf("%d keys in the batch, want %d", len(b.enc), n+1)
		}
		return b.Verify()
	}
	if !verify(-1) {
		t.Error("a batch of good signatures does not verify")
	}
	for _, bad := range []int{0, 1, 2*n - 2, 2*n - 1, 77} {
		if verify(bad) {
			t.Errorf("a batch with signature %d changed verifies", bad)
		}
	}
}

// BenchmarkBatch verifies the signatures of 256 entries (each a
// credential by the one authority and an entry by its own identity), as
// the planner's chunks do: with the authority's terms gathered (Batch)
// and, for comparison, one by one (Single) and in ed25519consensus's
// batch, which has a term for every signature's key.
func BenchmarkBatch(b *testing.B) {
	authority := ed25519.NewKeyFromSeed(make([]byte, 32))
	const n = 256
	var pubs []ed25519.PublicKey
	var msgs, sigs [][]byte
	for i := range n {
		m := []byte(fmt.Sprintf("credential %d", i))
		pubs, msgs, sigs = append(pubs, authority.Public().(ed25519.PublicKey)), append(msgs, m), append(sigs, ed25519.Sign(authority, m))
		seed := make([]byte, 32)
		seed[0], seed[1] = byte(i), 9
		id := ed25519.NewKeyFromSeed(seed)
		m = []byte(fmt.Sprintf("entry %d", i))
		pubs, msgs, sigs = append(pubs, id.Public().(ed25519.PublicKey)), append(msgs, m), append(sigs, ed25519.Sign(id, m))
	}
	b.Run("gathered", func(b *testing.B) {
		for b.Loop() {
			v := NewBatch(len(sigs))
			for i := range sigs {
				v.Check(pubs[i], msgs[i], sigs[i])
			}
			if !v.Verify() {
				b.Fatal("does not verify")
			}
		}
	})
	b.Run("single", func(b *testing.B) {
		for b.Loop() {
			for i := range sigs {
				if !(Single{}).Check(pubs[i], msgs[i], sigs[i]) {
					b.Fatal("does not verify")
				}
			}
		}
	})
	b.Run("ed25519consensus", func(b *testing.B) {
		for b.Loop() {
			v := ed25519consensus.NewPreallocatedBatchVerifier(len(sigs))
			for i := range sigs {
				v.Add(pubs[i], msgs[i], sigs[i])
			}
			if !v.Verify() {
				b.Fatal("does not verify")
			}
		}
	})
}
