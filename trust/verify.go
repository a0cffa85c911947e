package trust

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"

	"filippo.io/edwards25519"
	"github.com/hdevalence/ed25519consensus"
)

// Signatures are verified under ZIP-215's rules (ed25519consensus, as
// Tailscale's tka does), alone or in a batch: the two agree on every
// signature by construction, so every host judges an entry the same,
// whether it came alone (a hint's read) or among thousands (a first
// read, verified in batches). Any signature crypto/ed25519 accepts is
// accepted; beyond those, ZIP-215 accepts only non-canonical encodings of
// points, which no signer of this project produces and which give a forger
// nothing.

// Verifier checks ed25519 signatures for the checks of this package
// (CheckEntryWith): Single, or a Batch.
type Verifier interface {
	// Check reports whether sig is pub's signature over msg (a Batch says
	// true and checks it later).
	Check(pub ed25519.PublicKey, msg, sig []byte) bool
}

// Single verifies each signature when asked.
type Single struct{}

// Check verifies sig at once.
func (Single) Check(pub ed25519.PublicKey, msg, sig []byte) bool { return verify(pub, msg, sig) }

func verify(pub ed25519.PublicKey, msg, sig []byte) bool {
	return len(pub) == ed25519.PublicKeySize && len(sig) == ed25519.SignatureSize && ed25519consensus.Verify(pub, msg, sig)
}

// Batch collects the signatures it is asked about, answering true to
// each, and verifies them all at once in Verify, under the same rules as
// Single. Whatever was decided on its answers stands only if Verify says
// true; otherwise it must be decided again with Single, which finds the
// bad signatures (a batch cannot say which).
//
// It checks ed25519consensus's batch equation, [8](-(sum z_i s_i) B +
// sum z_i R_i + sum z_i k_i A_i) = 0 with random 128-bit z_i, but with
// the terms of one public key gathered into one: every credential of a
// fleet is signed by the same authority key, so a batch of n entries (2n
// signatures) multiplies n+1 keys, not 2n, and decompresses each once.
type Batch struct {
	sigs []batchSig
	enc  [][32]byte       // the keys, each once, in the order first added
	idx  map[[32]byte]int // a key's place in enc
	ok   bool             // no malformed key or signature was added
}

// batchSig is one signature of a Batch: its key's index, R and s, and
// the hash k = SHA-512(R || A || M) (reduced in Verify).
type batchSig struct {
	key    int
	sig    [ed25519.SignatureSize]byte
	digest [sha512.Size]byte
}

// NewBatch returns a batch with room for n signatures.
func NewBatch(n int) *Batch {
	return &Batch{sigs: make([]batchSig, 0, n), idx: map[[32]byte]int{}, ok: true}
}

// Check adds the signature to the batch and answers true.
func (b *Batch) Check(pub ed25519.PublicKey, msg, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		b.ok = false
		return true
	}
	k := [32]byte(pub)
	i, seen := b.idx[k]
	if !seen {
		i = len(b.enc)
		b.idx[k] = i
		b.enc = append(b.enc, k)
	}
	b.sigs = append(b.sigs, batchSig{key: i, sig: [ed25519.SignatureSize]byte(sig)})
	s := &b.sigs[len(b.sigs)-1]
	h := sha512.New()
	h.Write(sig[:32])
	h.Write(pub)
	h.Write(msg)
	h.Sum(s.digest[:0])
	return true
}

// Verify reports whether every signature added verifies (true for none).
func (b *Batch) Verify() bool {
	if !b.ok {
		return false
	}
	n, nk := len(b.sigs), len(b.enc)
	if n == 0 {
		return true
	}
	// Terms: B, then each signature's R, then each key.
	svals := make([]edwards25519.Scalar, 1+n+nk)
	pvals := make([]edwards25519.Point, 1+n+nk)
	scalars := make([]*edwards25519.Scalar, len(svals))
	points := make([]*edwards25519.Point, len(pvals))
	for i := range svals {
		scalars[i], points[i] = &svals[i], &pvals[i]
	}
	points[0].Set(edwards25519.NewGeneratorPoint())
	for j := range b.enc {
		if _, err := points[1+n+j].SetBytes(b.enc[j][:]); err != nil {
			return false
		}
	}
	var (
		buf     [32]byte // z's bytes: 16 random, 16 zero
		z, s, k edwards25519.Scalar
	)
	for i := range b.sigs {
		e := &b.sigs[i]
		if _, err := points[1+i].SetBytes(e.sig[:32]); err != nil {
			return false
		}
		if _, err := s.SetCanonicalBytes(e.sig[32:]); err != nil {
			return false
		}
		if _, err := rand.Read(buf[:16]); err != nil {
			return false
		}
		if _, err := z.SetCanonicalBytes(buf[:]); err != nil {
			return false
		}
		if _, err := k.SetUniformBytes(e.digest[:]); err != nil {
			return false
		}
		scalars[1+i].Set(&z)
		scalars[0].MultiplyAdd(&z, &s, scalars[0])
		a := scalars[1+n+e.key]
		a.MultiplyAdd(&z, &k, a)
	}
	scalars[0].Negate(scalars[0]) // that term is subtracted
	check := new(edwards25519.Point).VarTimeMultiScalarMult(scalars, points)
	check.MultByCofactor(check)
	return check.Equal(edwards25519.NewIdentityPoint()) == 1
}
