package handshake

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Packet is an initiation-sized datagram seen arriving at the watched
// port: who sent it and its payload.
type Packet struct {
	Source  netip.AddrPort
	Payload []byte
}

// udpLen is the UDP length of an initiation: header and message.
const udpLen = 8 + InitiationSize

// filter is the classic BPF program Sniff attaches: accept only IPv4 or
// IPv6 (without extension headers) UDP datagrams to port whose payload is
// InitiationSize bytes starting with InitiationType. The socket is of
// type SOCK_DGRAM, so the program sees the IP header at offset 0.
func filter(port uint16) ([]bpf.RawInstruction, error) {
	const reject, accept = 0, 0xffff
	prog := []bpf.Instruction{
		// 0: IP version.
		bpf.LoadAbsolute{Off: 0, Size: 1},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 6, SkipTrue: 12}, // -> IPv6 at 15
		// 3: anything else is rejected (at 23).
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 4, SkipFalse: 19}, // -> reject
		// 4: IPv4: UDP, not a fragment after the first.
		bpf.LoadAbsolute{Off: 9, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_UDP, SkipFalse: 17},
		bpf.LoadAbsolute{Off: 6, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 15},
		// 8: X = header length; then the UDP header.
		bpf.LoadMemShift{Off: 0},
		bpf.LoadIndirect{Off: 2, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipFalse: 12},
		bpf.LoadIndirect{Off: 4, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: udpLen, SkipFalse: 10},
		bpf.LoadIndirect{Off: 8, Size: 1},
		bpf.Jump{Skip: 7}, // -> type check at 22
		// 15: IPv6: next header UDP; the UDP header at 40.
		bpf.LoadAbsolute{Off: 6, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_UDP, SkipFalse: 6},
		bpf.LoadAbsolute{Off: 42, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipFalse: 4},
		bpf.LoadAbsolute{Off: 44, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: udpLen, SkipFalse: 2},
		bpf.LoadAbsolute{Off: 48, Size: 1},
		// 22: the message type.
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: InitiationType, SkipTrue: 1},
		bpf.RetConstant{Val: reject},
		bpf.RetConstant{Val: accept},
	}
	return bpf.Assemble(prog)
}

// Sniff watches UDP port for initiations arriving on any interface of the
// current network namespace and hands each to seen, until ctx is done. It
// only reads copies: the datagram still reaches the socket that owns the
// port (a kernel WireGuard device or a userspace one), which drops it
// when it does not know the key. Packets this host sends are not seen.
// It needs CAP_NET_RAW. ready, if not nil, is called once the filter is
// in place.
func Sniff(ctx context.Context, port uint16, ready func(), seen func(Packet)) error {
	prog, err := filter(port)
	if err != nil {
		return fmt.Errorf("assemble the initiation filter: %w", err)
	}
	// Protocol 0 at first: nothing is queued until the filter is on.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open a packet socket: %w", err)
	}
	defer unix.Close(fd)
	insns := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		insns[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(insns)), Filter: &insns[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attach the initiation filter: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL)}); err != nil {
		return fmt.Errorf("bind the packet socket: %w", err)
	}
	// Reads wake now and then to see whether ctx is done.
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("set the packet socket's timeout: %w", err)
	}
	if ready != nil {
		ready()
	}
	buf := make([]byte, 2048)
	for ctx.Err() == nil {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		switch {
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("read the packet socket: %w", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if p, ok := parse(buf[:n]); ok {
			seen(p)
		}
	}
	return nil
}

// parse takes the source and payload out of an IP packet the filter
// passed; it checks the lengths again rather than trust the filter.
func parse(b []byte) (Packet, bool) {
	if len(b) < 1 {
		return Packet{}, false
	}
	var src netip.Addr
	var udp []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl+udpLen {
			return Packet{}, false
		}
		src = netip.AddrFrom4([4]byte(b[12:16]))
		udp = b[ihl:]
	case 6:
		if len(b) < 40+udpLen {
			return Packet{}, false
		}
		src = netip.AddrFrom16([16]byte(b[8:24]))
		udp = b[40:]
	default:
		return Packet{}, false
	}
	if int(binary.BigEndian.Uint16(udp[4:6])) != udpLen {
		return Packet{}, false
	}
	port := binary.BigEndian.Uint16(udp[0:2])
	payload := make([]byte, InitiationSize)
	copy(payload, udp[8:udpLen])
	return Packet{Source: netip.AddrPortFrom(src, port), Payload: payload}, true
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
