package handshake

import (
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// InitiationSize is the size of a handshake initiation, and
// InitiationType its first byte (a little-endian uint32 message type).
const (
	InitiationSize = 148
	InitiationType = 1
)

// Offsets of the fields of an initiation.
const (
	offSender    = 4
	offEphemeral = 8
	offStatic    = offEphemeral + 32
	offTimestamp = offStatic + 32 + chacha20poly1305.Overhead
	offMAC1      = offTimestamp + 12 + chacha20poly1305.Overhead
	offMAC2      = offMAC1 + blake2s.Size128
)

const (
	construction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	identifier   = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	labelMAC1    = "mac1----"
)

// Why an initiation was not read; each is a reason in the gateway's
// metrics and logs.
var (
	ErrNotInitiation = errors.New("not a handshake initiation")
	ErrMAC1          = errors.New("mac1 does not match this responder's public key")
	ErrEphemeral     = errors.New("ephemeral key gives a zero shared secret")
	ErrStatic        = errors.New("initiator's static key does not decrypt")
	ErrTimestamp     = errors.New("timestamp does not decrypt")
	ErrNotWanted     = errors.New("initiator's static key is not one the caller wants")
)

// Initiation is what a responder learns from an initiation it can read.
type Initiation struct {
	// Sender is the initiator's session index.
	Sender uint32
	// Static is the initiator's static public key.
	Static [32]byte
	// Timestamp is the initiator's TAI64N timestamp: it only grows for
	// one initiator, so an initiation that does not pass the last one seen
	// from its key is a replay.
	Timestamp Timestamp
}

// Timestamp is a TAI64N label (12 bytes, big-endian): later ones compare
// greater.
type Timestamp [12]byte

// After reports whether t is later than u.
func (t Timestamp) After(u Timestamp) bool {
	for i := range t {
		if t[i] != u[i] {
			return t[i] > u[i]
		}
	}
	return false
}

// Time is t as a time. A TAI64N label counts from 2^62 in TAI, which is
// UTC plus 10 s here as in wireguard-go (device/../tai64n).
func (t Timestamp) Time() time.Time {
	s := binary.BigEndian.Uint64(t[:8]) - (1<<62 + 10)
	ns := binary.BigEndian.Uint32(t[8:])
	return time.Unix(int64(s), int64(ns))
}

// Responder reads initiations sent to one static key pair. It is safe for
// concurrent use (it holds only what NewResponder computed).
type Responder struct {
	private, public [32]byte
	hash0           [32]byte // the handshake hash after mixing the responder's public key
	mac1Key         [32]byte
}

// NewResponder returns a responder for the (Curve25519) private key priv.
func NewResponder(priv [32]byte) (*Responder, error) {
	r := &Responder{private: priv}
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("responder key: %w", err)
	}
	copy(r.public[:], pub)
	ck := blake2s.Sum256([]byte(construction))
	h := mixHash(mixHash(ck, []byte(identifier)), r.public[:])
	r.hash0 = h
	r.mac1Key = hashOf([]byte(labelMAC1), r.public[:])
	return r, nil
}

// PublicKey is the responder's public key.
func (r *Responder) PublicKey() [32]byte { return r.public }

// CheckMAC1 reports whether msg is an initiation whose mac1 was made with
// the responder's public key: one keyed BLAKE2s, and nothing else.
func (r *Responder) CheckMAC1(msg []byte) bool {
	if len(msg) != InitiationSize || msg[0] != InitiationType || msg[1]|msg[2]|msg[3] != 0 {
		return false
	}
	mac, _ := blake2s.New128(r.mac1Key[:])
	mac.Write(msg[:offMAC1])
	var sum [blake2s.Size128]byte
	return hmac.Equal(mac.Sum(sum[:0]), msg[offMAC1:offMAC2])
}

// Consume reads an initiation: mac1 first, then the initiator's static key
// and timestamp. It does not judge replays (the caller keeps the last
// timestamp of each key) and keeps no state.
func (r *Responder) Consume(msg []byte) (Initiation, error) { return r.ConsumeIf(msg, nil) }

// ConsumeIf is Consume that stops after the initiator's static key when
// want (if not nil) does not want it: an unknown key costs one
// Diffie-Hellman and one decryption, not two. It then returns
// ErrNotWanted, with the key in the Initiation.
func (r *Responder) ConsumeIf(msg []byte, want func(static [32]byte) bool) (Initiation, error) {
	var in Initiation
	if len(msg) != InitiationSize || msg[0] != InitiationType || msg[1]|msg[2]|msg[3] != 0 {
		return in, ErrNotInitiation
	}
	if !r.CheckMAC1(msg) {
		return in, ErrMAC1
	}
	in.Sender = binary.LittleEndian.Uint32(msg[offSender:])
	ephemeral := msg[offEphemeral:offStatic]
	h := mixHash(r.hash0, ephemeral)
	ck := kdf1(blake2s.Sum256([]byte(construction)), ephemeral)

	ss, err := curve25519.X25519(r.private[:], ephemeral)
	if err != nil {
		return in, ErrEphemeral
	}
	var key [32]byte
	ck, key = kdf2(ck, ss)
	aead, _ := chacha20poly1305.New(key[:])
	var zero [chacha20poly1305.NonceSize]byte
	static := msg[offStatic:offTimestamp]
	if _, err := aead.Open(in.Static[:0], zero[:], static, h[:]); err != nil {
		return in, ErrStatic
	}
	h = mixHash(h, static)
	if want != nil && !want(in.Static) {
		return in, ErrNotWanted
	}

	ss, err = curve25519.X25519(r.private[:], in.Static[:])
	if err != nil {
		return in, ErrStatic
	}
	_, key = kdf2(ck, ss)
	aead, _ = chacha20poly1305.New(key[:])
	if _, err := aead.Open(in.Timestamp[:0], zero[:], msg[offTimestamp:offMAC1], h[:]); err != nil {
		return in, ErrTimestamp
	}
	return in, nil
}

func newBLAKE2s() hash.Hash {
	h, _ := blake2s.New256(nil)
	return h
}

// hashOf is BLAKE2s-256 of the concatenation of parts.
func hashOf(parts ...[]byte) [32]byte {
	h := newBLAKE2s()
	for _, p := range parts {
		h.Write(p)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func mixHash(h [32]byte, data []byte) [32]byte { return hashOf(h[:], data) }

func hmacOf(key []byte, parts ...[]byte) [32]byte {
	m := hmac.New(newBLAKE2s, key)
	for _, p := range parts {
		m.Write(p)
	}
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// kdf1 and kdf2 are WireGuard's HKDF over HMAC-BLAKE2s with one and two
// outputs.
func kdf1(key [32]byte, input []byte) [32]byte {
	prk := hmacOf(key[:], input)
	return hmacOf(prk[:], []byte{1})
}

func kdf2(key [32]byte, input []byte) ([32]byte, [32]byte) {
	prk := hmacOf(key[:], input)
	t0 := hmacOf(prk[:], []byte{1})
	t1 := hmacOf(prk[:], t0[:], []byte{2})
	return t0, t1
}
