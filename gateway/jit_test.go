package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/handshake"
	"meshd.dev/meshd/internal/testlab"
)

// TestJIT walks the just-in-time state through a user's life with real
// initiations from wireguard-go: unknown until its record is there, then
// installed on its first initiation (kicked back at its source), a replay
// refused, kept while heard from, evicted when idle, back on demand, and
// gone with its record; the rest of the refusals by reason.
func TestJIT(t *testing.T) {
	gwPriv, _ := wgtypes.GeneratePrivateKey()
	user, _ := wgtypes.GeneratePrivateKey()
	j, err := newJIT(gwPriv, time.Minute, "gw", pool, supernet)
	if err != nil {
		t.Fatal(err)
	}
	first := testlab.Initiation(t, user, gwPriv.PublicKey())
	// wireguard-go rounds an initiation's TAI64N time down to 2^24 ns
	// (about 17 ms): two taken within that are the same time, and the
	// second would be a replay.
	time.Sleep(20 * time.Millisecond)
	second := testlab.Initiation(t, user, gwPriv.PublicKey())
	src := netip.MustParseAddrPort("198.18.5.5:40000")
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	pkt := func(b []byte) handshake.Packet { return handshake.Packet{Source: src, Payload: b} }
	rec := Stored{Record: Record{Org: "acme", Name: "laptop", PublicKey: user.PublicKey().String(),
		Address: netip.MustParseAddr("fdaa:0:1:8000::5"), Allow: []netip.Prefix{netip.MustParsePrefix("fdaa::/16")}, Created: t0}}

	j.sync(nil, 0)
	if j.initiation(pkt(first), at(0)) {
		t.Fatal("an initiation without a record activated a peer")
	}
	j.sync([]Stored{rec}, 0)
	j.idleCheck(nil, at(0))
	if !j.initiation(pkt(first), at(time.Second)) {
		t.Fatal("the first initiation with a record did not activate its peer")
	}
	if j.initiation(pkt(first), at(2*time.Second)) {
		t.Error("a replayed initiation activated again")
	}
	// At once: in with the initiation's source, not kicked yet (the
	// device may still answer the queued initiation itself).
	s, wake := j.state(at(time.Second))
	if len(s.Peers) != 1 || s.Peers[0].Endpoint != src || s.Peers[0].Keepalive != 0 || !wake.Equal(at(time.Second+kickDelay)) {
		t.Errorf("fresh peer: %+v, wake %v; want it at %s, unkicked, until %v", s.Peers, wake, src, at(time.Second+kickDelay))
	}
	if j.kickDue(at(time.Second)) || !j.kickDue(at(2*time.Second)) {
		t.Error("kickDue: want a kick due after kickDelay, not before")
	}
	s, wake = j.state(at(2 * time.Second))
	if len(s.Peers) != 1 || s.Peers[0].Endpoint != src || s.Peers[0].Keepalive != UserKeepalive || !wake.Equal(at(time.Second+kickDelay+kickWindow)) {
		t.Errorf("unanswered peer: %+v, wake %v; want it kicked at %s until %v", s.Peers, wake, src, at(time.Second+kickDelay+kickWindow))
	}
	// Once it handshook, no kick.
	j.noteHandshakes(map[wgtypes.Key]heard{user.PublicKey(): {handshake: at(1500 * time.Millisecond)}})
	if s, _ = j.state(at(2 * time.Second)); s.Peers[0].Keepalive != 0 || j.kickDue(at(2*time.Second)) {
		t.Errorf("a peer that handshook is kicked: %+v", s.Peers)
	}
	s, _ = j.state(at(5 * time.Second))
	if len(s.Peers) != 1 || s.Peers[0].Endpoint.IsValid() || s.Peers[0].Keepalive != 0 {
		t.Errorf("after the kick: %+v; want no endpoint and no keepalive", s.Peers)
	}
	// Heard from (bytes received) at 50 s: not idle at 90 s; idle at 111 s.
	j.idleCheck(map[wgtypes.Key]heard{user.PublicKey(): {handshake: at(time.Second), rx: 100}}, at(50*time.Second))
	j.idleCheck(map[wgtypes.Key]heard{user.PublicKey(): {handshake: at(time.Second), rx: 100}}, at(90*time.Second))
	if _, ok := j.active[user.PublicKey()]; !ok {
		t.Fatal("a peer heard from 40 s ago was evicted")
	}
	j.idleCheck(map[wgtypes.Key]heard{user.PublicKey(): {handshake: at(time.Second), rx: 100}}, at(111*time.Second))
	s, _ = j.state(at(111 * time.Second))
	if len(s.Peers) != 0 {
		t.Fatalf("an idle peer stayed: %+v", s.Peers)
	}
	// Back on demand, with a newer initiation.
	if !j.initiation(pkt(second), at(200*time.Second)) {
		t.Fatal("a newer initiation did not bring the evicted peer back")
	}
	// Its record goes: so does the peer, and its initiations install
	// nothing.
	j.sync(nil, 0)
	j.state(at(201 * time.Second))
	if len(j.active) != 0 {
		t.Errorf("a peer without a record stayed active")
	}
	if j.initiation(pkt(second), at(202*time.Second)) {
		t.Error("an initiation of a removed record activated")
	}
	// Junk and a flood from one source.
	junk := append([]byte(nil), first...)
	junk[120] ^= 1
	j.initiation(handshake.Packet{Source: netip.MustParseAddrPort("198.18.6.6:1"), Payload: junk}, at(300*time.Second))
	for range 20 {
		j.initiation(handshake.Packet{Source: netip.MustParseAddrPort("198.18.7.7:1"), Payload: junk}, at(400*time.Second))
	}
	want := JITStatus{IdleTimeout: "1m0s", Records: 0, Active: 0, Installs: 2, Evictions: 1,
		Refused: map[string]uint64{RefusedUnknownKey: 2, RefusedReplay: 1, RefusedMAC1: 1 + perSourceBurst, RefusedRateLimited: 20 - perSourceBurst}}
	if diff := cmp.Diff(want, j.status); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
}

// TestJITAdopts: a restarted gateway keeps the peers its kernel holds that
// handshook within the idle timeout and have records, and no others.
func TestJITAdopts(t *testing.T) {
	gwPriv, _ := wgtypes.GeneratePrivateKey()
	j, _ := newJIT(gwPriv, time.Minute, "gw", pool, supernet)
	k := func() wgtypes.Key { p, _ := wgtypes.GeneratePrivateKey(); return p.PublicKey() }
	fresh, stale, noRecord := k(), k(), k()
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	j.sync([]Stored{{Record: Record{PublicKey: fresh.String()}}, {Record: Record{PublicKey: stale.String()}}}, 0)
	j.idleCheck(map[wgtypes.Key]heard{fresh: {handshake: now.Add(-30 * time.Second)}, stale: {handshake: now.Add(-2 * time.Minute)}, noRecord: {handshake: now}}, now)
	var got []wgtypes.Key
	for k := range j.active {
		got = append(got, k)
	}
	if diff := cmp.Diff([]wgtypes.Key{fresh}, got); diff != "" {
		t.Errorf("adopted (-want +got):\n%s", diff)
	}
}

// TestJITProvisional: a record a hint brings is known at once (before any
// reconcile), its removal takes its active peer out, and an active peer
// leaves when its record expires.
func TestJITProvisional(t *testing.T) {
	gwPriv, _ := wgtypes.GeneratePrivateKey()
	user, _ := wgtypes.GeneratePrivateKey()
	j, _ := newJIT(gwPriv, time.Minute, "gw", pool, supernet)
	now := time.Now()
	exp := now.Add(time.Hour)
	rec := Record{Org: "acme", Name: "laptop", PublicKey: user.PublicKey().String(), Address: netip.MustParseAddr("fdaa:0:1:8000::5"),
		Allow: []netip.Prefix{supernet}, Created: now.UTC().Truncate(time.Second), Expires: &exp}
	key := RecordKey("gw", "acme", "laptop")
	j.provisional(rec.ID(), Pair{Key: key, Value: rec.Encode(), ModifyIndex: 7}, true, 1)
	src := netip.MustParseAddrPort("198.18.5.5:40000")
	if !j.initiation(handshake.Packet{Source: src, Payload: testlab.Initiation(t, user, gwPriv.PublicKey())}, now) {
		t.Fatal("a record a hint brought did not let its user in")
	}
	if st, wake := j.state(now.Add(5 * time.Second)); len(st.Peers) != 1 || !wake.Equal(exp) {
		t.Errorf("state %+v, wake %v; want the peer, and a wake at its expiry %v", st.Peers, wake, exp)
	}
	if st, _ := j.state(exp); len(st.Peers) != 0 || len(j.active) != 0 {
		t.Errorf("an expired record's peer stayed: %+v", st.Peers)
	}
	// Back (a fresh record), then removed by a hint.
	j.provisional(rec.ID(), Pair{Key: key, Value: func() []byte { r := rec; r.Expires = nil; return r.Encode() }(), ModifyIndex: 8}, true, 2)
	j.active[user.PublicKey()] = &activePeer{since: now, seen: now}
	if st, _ := j.state(now); len(st.Peers) != 1 {
		t.Fatalf("state %+v, want the peer", st.Peers)
	}
	j.provisional(rec.ID(), Pair{}, false, 3)
	if st, _ := j.state(now); len(st.Peers) != 0 {
		t.Errorf("a removed record's peer stayed: %+v", st.Peers)
	}
	// An invalid record (outside the pool) is not known.
	bad := rec
	bad.Address = netip.MustParseAddr("fdaa:0:2::5")
	j.provisional(rec.ID(), Pair{Key: key, Value: bad.Encode(), ModifyIndex: 9}, true, 4)
	if len(j.records) != 0 {
		t.Errorf("an invalid record is known: %v", j.records)
	}
}

// TestJITSyncKeepsNewerHints: a Desire computed from the records before a
// hint brought one does not make the active set forget it.
func TestJITSyncKeepsNewerHints(t *testing.T) {
	gwPriv, _ := wgtypes.GeneratePrivateKey()
	user, _ := wgtypes.GeneratePrivateKey()
	j, _ := newJIT(gwPriv, time.Minute, "gw", pool, supernet)
	now := time.Now()
	rec := Record{Org: "acme", Name: "new", PublicKey: user.PublicKey().String(), Address: netip.MustParseAddr("fdaa:0:1:8000::6"),
		Allow: []netip.Prefix{supernet}, Created: now.UTC().Truncate(time.Second)}
	j.provisional(rec.ID(), Pair{Key: RecordKey("gw", "acme", "new"), Value: rec.Encode(), ModifyIndex: 5}, true, 8)
	j.sync(nil, 7) // computed before the hint's read
	if _, ok := j.records[user.PublicKey()]; !ok {
		t.Fatal("a Desire older than a hint's read dropped the record it brought")
	}
	j.sync(nil, 8) // computed after it, and the record is not there: gone
	if _, ok := j.records[user.PublicKey()]; ok || len(j.pending) != 0 {
		t.Errorf("a Desire as new as the hint's read did not decide: records %v, pending %d", j.records, len(j.pending))
	}
}
