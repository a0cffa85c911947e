package handshake

import (
	"encoding/hex"
	"testing"
)

// FuzzConsume feeds Consume any datagram, once as it is and once with a
// right mac1 (so the fuzzer gets past the first check): it never panics,
// and whatever it accepts reads the same again.
func FuzzConsume(f *testing.F) {
	msg, _ := hex.DecodeString(vector.msg)
	f.Add(msg)
	f.Add(msg[:100])
	f.Add([]byte{1, 0, 0, 0})
	var priv [32]byte
	copy(priv[:], "meshd handshake fuzz responder!!")
	r, err := NewResponder(priv)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := r.Consume(b); err == nil {
			t.Fatalf("an initiation for another responder was accepted: %x", b)
		}
		if len(b) != InitiationSize {
			return
		}
		m := append([]byte(nil), b...)
		setMAC1(r, m)
		in, err := r.Consume(m)
		if err != nil {
			return
		}
		again, err := r.Consume(m)
		if err != nil || again != in {
			t.Fatalf("Consume is not repeatable: %+v %v, then %+v %v", in, err, again, err)
		}
	})
}
