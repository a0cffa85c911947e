package handshake

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/testlab"
)

// A handshake initiation that wireguard-go sent (captured once with
// testlab.Initiation), with the keys it was made for.
var vector = struct {
	responderPriv, initiatorPub string
	sender                      uint32
	timestamp                   string // TAI64N, hex
	msg                         string // hex
}{
	responderPriv: "kGIEKU9RPnRJ4arMtsEd+xcrehX7Ek/XKpQ/L5tHu1g=",
	initiatorPub:  "VteDAlp/JNoPMKS/H6LAVS23YnbUKMlWVEl4KTxA3Es=",
	sender:        3962570534,
	timestamp:     "400000006b11306423000000",
	msg:           "01000000260730ecc89c4144a1ece202e658bb3dfcb07d7a637bee19a0db5b411f81fd420f572c5b26ab31863ebfd766aff8433f33371110f7059cc0a9ec598cad942eaef91546056518780561e581e473449706297efcdfb51aad6fbb8a086791c745f6bbb83840e9aa62cca11f56e894c196ef15f5386f91b0797e4b9fb555fd20de7100000000000000000000000000000000",
}

func mustKey(t *testing.T, s string) [32]byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad key %q", s)
	}
	return [32]byte(b)
}

// TestConsumeVector reads the fixed initiation: the initiator's key,
// session index and timestamp come out as wireguard-go put them in.
func TestConsumeVector(t *testing.T) {
	r, err := NewResponder(mustKey(t, vector.responderPriv))
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := hex.DecodeString(vector.msg)
	got, err := r.Consume(msg)
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	ts, _ := hex.DecodeString(vector.timestamp)
	want := Initiation{Sender: vector.sender, Static: mustKey(t, vector.initiatorPub), Timestamp: Timestamp(ts)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Consume (-want +got):\n%s", diff)
	}
	// Sent at 2026-12-03 09:03:22.587 UTC (wireguard-go's TAI64N is UTC+10 s).
	if ts, want := got.Timestamp.Time(), time.Date(2026, 12, 3, 9, 3, 22, 587202560, time.UTC); !ts.Equal(want) {
		t.Errorf("timestamp %v, want %v", ts, want)
	}
}

// TestConsumeForged: every altered or misdirected initiation is refused,
// each for its own reason, and mac1 is what refuses everything made
// without the responder's public key.
func TestConsumeForged(t *testing.T) {
	priv := mustKey(t, vector.responderPriv)
	r, _ := NewResponder(priv)
	other, _ := wgtypes.GeneratePrivateKey()
	wrong, _ := NewResponder(other)
	msg, _ := hex.DecodeString(vector.msg)
	// alter flips one byte at i and, when remac is set, makes mac1 right
	// again (as an attacker who knows the responder's public key can).
	alter := func(i int, remac bool) []byte {
		m := append([]byte(nil), msg...)
		m[i] ^= 0x40
		if remac {
			setMAC1(r, m)
		}
		return m
	}
	for _, tc := range []struct {
		name string
		r    *Responder
		msg  []byte
		want error
	}{
		{"short", r, msg[:147], ErrNotInitiation},
		{"long", r, append(append([]byte(nil), msg...), 0), ErrNotInitiation},
		{"response type", r, func() []byte { m := alter(0, true); m[0] = 2; setMAC1(r, m); return m }(), ErrNotInitiation},
		{"reserved bytes", r, alter(2, true), ErrNotInitiation},
		{"bad mac1", r, alter(offMAC1+3, false), ErrMAC1},
		{"altered without mac1", r, alter(offStatic, false), ErrMAC1},
		{"another responder", wrong, msg, ErrMAC1},
		{"altered ephemeral", r, alter(offEphemeral+5, true), ErrStatic},
		{"altered static", r, alter(offStatic+7, true), ErrStatic},
		{"altered timestamp", r, alter(offTimestamp+1, true), ErrTimestamp},
		{"zero ephemeral", r, func() []byte {
			m := append([]byte(nil), msg...)
			clear(m[offEphemeral:offStatic])
			setMAC1(r, m)
			return m
		}(), ErrEphemeral},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.r.Consume(tc.msg)
			if !errors.Is(err, tc.want) {
				t.Errorf("Consume = %v, want %v", err, tc.want)
			}
		})
	}
	// The altered sender index is only mixed into mac1: with mac1 made
	// again, the initiation reads, with the new index.
	m := alter(offSender, true)
	in, err := r.Consume(m)
	if err != nil || in.Sender == vector.sender {
		t.Errorf("altered sender index: %+v, %v", in, err)
	}
}

// TestConsumeIf: an initiator the caller does not want is refused after
// its static key (which comes back), before the timestamp's decryption.
func TestConsumeIf(t *testing.T) {
	r, _ := NewResponder(mustKey(t, vector.responderPriv))
	msg, _ := hex.DecodeString(vector.msg)
	var asked [32]byte
	in, err := r.ConsumeIf(msg, func(k [32]byte) bool { asked = k; return false })
	if !errors.Is(err, ErrNotWanted) || in.Static != mustKey(t, vector.initiatorPub) || asked != in.Static || in.Timestamp != (Timestamp{}) {
		t.Errorf("ConsumeIf(not wanted) = %+v, %v; want ErrNotWanted with the static key and no timestamp", in, err)
	}
	if in, err := r.ConsumeIf(msg, func([32]byte) bool { return true }); err != nil || in.Timestamp == (Timestamp{}) {
		t.Errorf("ConsumeIf(wanted) = %+v, %v; want the whole initiation", in, err)
	}
}

// setMAC1 writes the mac1 that r expects into m.
func setMAC1(r *Responder, m []byte) {
	mac, _ := blake2s.New128(r.mac1Key[:])
	mac.Write(m[:offMAC1])
	mac.Sum(m[offMAC1:offMAC1])
}

// TestConsumeWireGuardGo reads initiations that wireguard-go makes for
// fresh key pairs: the round trip through the real implementation.
func TestConsumeWireGuardGo(t *testing.T) {
	for i := range 3 {
		resp, _ := wgtypes.GeneratePrivateKey()
		init, _ := wgtypes.GeneratePrivateKey()
		before := time.Now()
		msg := testlab.Initiation(t, init, resp.PublicKey())
		r, err := NewResponder(resp)
		if err != nil {
			t.Fatal(err)
		}
		if r.PublicKey() != resp.PublicKey() {
			t.Fatalf("responder public key %x, want %x", r.PublicKey(), resp.PublicKey())
		}
		got, err := r.Consume(msg)
		if err != nil {
			t.Fatalf("%d: Consume: %v", i, err)
		}
		if got.Static != init.PublicKey() {
			t.Errorf("%d: static key %x, want %x", i, got.Static, init.PublicKey())
		}
		// wireguard-go rounds its timestamps down to 2^24 ns (about 17 ms).
		if ts := got.Timestamp.Time(); ts.Before(before.Add(-50*time.Millisecond)) || ts.After(time.Now()) {
			t.Errorf("%d: timestamp %v, want within [%v, now]", i, ts, before)
		}
		if testing.Verbose() && i == 0 {
			t.Logf("vector: responderPriv %s initiatorPub %s sender %d timestamp %x\nmsg %x",
				base64.StdEncoding.EncodeToString(resp[:]), init.PublicKey(), got.Sender, got.Timestamp, msg)
		}
	}
}
