package bench

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
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
	peers, _, err := readUAPI(iface)
	return peers, err
}

// readUAPI is ReadUAPI, and also says when the device answered: when the
// first byte of its answer came. The device takes its configuration lock
// before it writes the answer, so every write made before the read was
// done by then; the rest of the read is the answer's own length (10,000
// peers are 2 MB of text), which the device's writes do not wait for.
func readUAPI(iface string) (map[wgtypes.Key]wgtypes.Peer, time.Time, error) {
	c, err := net.DialTimeout("unix", netlinkx.UAPISocket(iface), time.Second)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer c.Close()
	if _, err := c.Write([]byte("get=1\n\n")); err != nil {
		return nil, time.Time{}, err
	}
	fr := &firstRead{r: c}
	peers, err := parseUAPI(bufio.NewReaderSize(fr, 1<<20))
	return peers, fr.at, err
}

// firstRead notes when its first read returned data.
type firstRead struct {
	r  io.Reader
	at time.Time
}

func (f *firstRead) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if n > 0 && f.at.IsZero() {
		f.at = time.Now()
	}
	return n, err
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
