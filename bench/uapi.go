package bench

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"meshd.dev/meshd/netlinkx"
)

// ReadUAPI reads the peers of a userspace WireGuard device through its
// UAPI socket, keeping only their keys, endpoints and allowed IPs. wgctrl
// reads the same text but builds every field of every peer; with 10,000
// peers that parse is most of a read, and the device's configuration lock
// is held until the text is read, so a slow reader also delays the writes
// of the system measured.
func ReadUAPI(iface string) (map[wgtypes.Key]wgtypes.Peer, error) {
	c, err := net.DialTimeout("unix", netlinkx.UAPISocket(iface), time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Write([]byte("get=1\n\n")); err != nil {
		return nil, err
	}
	return parseUAPI(bufio.NewReaderSize(c, 1<<20))
}

func parseUAPI(r *bufio.Reader) (map[wgtypes.Key]wgtypes.Peer, error) {
	out := map[wgtypes.Key]wgtypes.Peer{}
	var cur *wgtypes.Peer
	flush := func() {
		if cur != nil {
			out[cur.PublicKey] = *cur
		}
	}
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return nil, fmt.Errorf("read device: %w", err)
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		key, val, _ := bytes.Cut(line, []byte("="))
		switch string(key) {
		case "errno":
			if string(val) != "0" {
				return nil, fmt.Errorf("read device: errno=%s", val)
			}
			flush()
			return out, nil
		case "public_key":
			flush()
			cur = &wgtypes.Peer{}
			if n, err := hex.Decode(cur.PublicKey[:], val); err != nil || n != wgtypes.KeyLen {
				return nil, fmt.Errorf("read device: bad public_key %q", val)
			}
		case "endpoint":
			ap, err := netip.ParseAddrPort(string(val))
			if cur == nil || err != nil {
				return nil, fmt.Errorf("read device: bad endpoint %q", val)
			}
			cur.Endpoint = net.UDPAddrFromAddrPort(ap)
		case "allowed_ip":
			p, err := netip.ParsePrefix(string(val))
			if cur == nil || err != nil {
				return nil, fmt.Errorf("read device: bad allowed_ip %q", val)
			}
			cur.AllowedIPs = append(cur.AllowedIPs, net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
		}
	}
}
