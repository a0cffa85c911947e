package handshake

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/bpf"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/internal/testlab"
)

func TestMain(m *testing.M) { testlab.Main(m) }

// ipv4 and ipv6 build an IP packet carrying a UDP datagram to dport with
// payload (IPv4 with opt bytes of options).
func ipv4(dport uint16, payload []byte, opt int, fragOff uint16) []byte {
	ihl := 20 + opt
	b := make([]byte, ihl+8+len(payload))
	b[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[6:], fragOff)
	b[9] = 17
	copy(b[12:], []byte{192, 0, 2, 7})
	copy(b[16:], []byte{192, 0, 2, 1})
	udp(b[ihl:], dport, payload)
	return b
}

func ipv6(dport uint16, payload []byte, next byte) []byte {
	b := make([]byte, 40+8+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6] = next
	copy(b[8:], netip.MustParseAddr("2001:db8::7").AsSlice())
	copy(b[24:], netip.MustParseAddr("2001:db8::1").AsSlice())
	udp(b[40:], dport, payload)
	return b
}

func udp(b []byte, dport uint16, payload []byte) {
	binary.BigEndian.PutUint16(b[0:], 40000)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	copy(b[8:], payload)
}

// TestFilter runs the BPF program in x/net's interpreter: it passes
// initiations to the port over IPv4 (with or without options) and IPv6,
// and nothing else; parse then takes out what the filter passed.
func TestFilter(t *testing.T) {
	prog, err := filter(51821)
	if err != nil {
		t.Fatal(err)
	}
	insns := make([]bpf.Instruction, len(prog))
	for i, r := range prog {
		insns[i] = r.Disassemble()
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := hex.DecodeString(vector.msg)
	resp := append([]byte{2, 0, 0, 0}, make([]byte, 88)...)
	other := append([]byte{4, 0, 0, 0}, make([]byte, 144)...)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"ipv4", ipv4(51821, msg, 0, 0), true},
		{"ipv4 with options", ipv4(51821, msg, 8, 0), true},
		{"ipv6", ipv6(51821, msg, 17), true},
		{"ipv4 other port", ipv4(51820, msg, 0, 0), false},
		{"ipv6 other port", ipv6(51822, msg, 17), false},
		{"ipv4 response", ipv4(51821, resp, 0, 0), false},
		{"ipv4 data of initiation size", ipv4(51821, other, 0, 0), false},
		{"ipv6 short", ipv6(51821, msg[:100], 17), false},
		{"ipv4 long", ipv4(51821, append(msg, 0), 0, 0), false},
		{"ipv4 later fragment", ipv4(51821, msg, 0, 0x0010), false},
		{"ipv4 tcp", func() []byte { b := ipv4(51821, msg, 0, 0); b[9] = 6; return b }(), false},
		{"ipv6 extension header", ipv6(51821, msg, 0), false},
		{"arp-sized junk", make([]byte, 28), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := vm.Run(tc.pkt)
			if err != nil {
				t.Fatal(err)
			}
			if got := n > 0; got != tc.want {
				t.Fatalf("filter passed %v, want %v", got, tc.want)
			}
			if !tc.want {
				return
			}
			p, ok := parse(tc.pkt)
			if !ok {
				t.Fatal("parse refused what the filter passed")
			}
			want := Packet{Source: netip.MustParseAddrPort("192.0.2.7:40000"), Payload: msg}
			if tc.pkt[0]>>4 == 6 {
				want.Source = netip.MustParseAddrPort("[2001:db8::7]:40000")
			}
			if diff := cmp.Diff(want, p, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("parse (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSniff: initiations that wireguard-go sends to a port on loopback (in
// the test's own network namespace) are seen by Sniff, once each, with
// their source, while the socket that owns the port still gets them; other
// traffic to the port is not seen.
func TestSniff(t *testing.T) {
	testlab.RequireRoot(t)
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		seen  []Packet
		ready = make(chan struct{})
		err2  error
	)
	wg.Go(func() {
		err2 = Sniff(ctx, port.Port(), func() { close(ready) }, func(p Packet) {
			mu.Lock()
			seen = append(seen, p)
			mu.Unlock()
		})
	})
	defer func() {
		cancel()
		wg.Wait()
		if err2 != nil {
			t.Errorf("Sniff: %v", err2)
		}
	}()
	<-ready
	// Not an initiation: a datagram of the right size but another type.
	junk, _ := net.DialUDP("udp4", nil, pc.LocalAddr().(*net.UDPAddr))
	junk.Write(append([]byte{4, 0, 0, 0}, make([]byte, 144)...))
	junk.Close()

	resp, _ := wgtypes.GeneratePrivateKey()
	init, _ := wgtypes.GeneratePrivateKey()
	stop := testlab.Initiate(t, init, resp.PublicKey(), port)
	var got []byte
	for got == nil {
		// The owner of the port gets the datagrams too (skip the junk).
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2048)
		n, _, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		if buf[0] == InitiationType {
			got = buf[:n]
		}
	}
	stop()
	testlab.Eventually(t, 5*time.Second, "Sniff sees the initiation", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > 0
	})
	mu.Lock()
	defer mu.Unlock()
	r, _ := NewResponder(resp)
	for i, p := range seen {
		in, err := r.Consume(p.Payload)
		if err != nil || in.Static != init.PublicKey() {
			t.Errorf("seen %d: %+v %v, want an initiation from %s", i, in, err, init.PublicKey())
		}
		if !p.Source.Addr().Is4() || p.Source.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("seen %d from %s, want 127.0.0.1", i, p.Source)
		}
	}
	// Once each (the loopback's outgoing copy is skipped): wireguard-go
	// sends one a second, so within the wait at most a few.
	if len(seen) > 3 {
		t.Errorf("%d initiations seen, want each once", len(seen))
	}
}
